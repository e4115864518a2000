// What the Python side hands the kernels: the convolution's shape and the per-term rule.
#pragma once

#include <cstdint>
#include <functional>

namespace adderjax_cpu {

// The forward's per-term rules.
enum ForwardRule : int32_t {
  kMinIdentity = 0,  // p = 1: acc += min(x, w); y = 2 acc - sum x - sum w
  kAbs = 1,          // p = 1: acc += |x - w|, exact
  kSquare = 2,       // p = 2: acc += (x - w)^2
  kPow = 3,          // any p: acc += |x - w|^p
};

// The input gradient's per-term rules f(d), d = w - x.
enum InputGradRule : int32_t {
  kHardTanh = 0,  // clip(d, -1, 1)
  kSign = 1,      // l_p at p = 1: sign(d)
  kLinear = 2,    // l_p at p = 2: d
  kLpPow = 3,     // l_p: sign(d) |d|^(p - 1)
};

struct ConvShape {
  int64_t n, h, w, c;     // input NHWC
  int64_t kh, kw, o;      // filter HWIO (c in)
  int64_t sh, sw;         // strides
  int64_t pt, pb, pl, pr; // padding, >= 0 (Python crops negative padding first)
  int64_t ho, wo;         // output
};

// Runs fn(i) for i in [0, n), on as many threads as the caller has.
using ParallelFor = std::function<void(int64_t n, const std::function<void(int64_t)>& fn)>;

}  // namespace adderjax_cpu
