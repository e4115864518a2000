// The entry points that each instruction-set build of adder_kernels.h provides.
#pragma once

#include <cstdint>

#include "conv_shape.h"

namespace adderjax_cpu {

struct IsaKernels {
  const char* name;
  int64_t (*forward_workspace_f32)(const ConvShape&);
  int64_t (*forward_workspace_f64)(const ConvShape&);
  int64_t (*input_grad_workspace_f32)(const ConvShape&);
  int64_t (*input_grad_workspace_f64)(const ConvShape&);
  void (*forward_f32)(const ConvShape&, const float*, const float*, float, int, float*, float*,
                      const ParallelFor&);
  void (*forward_f64)(const ConvShape&, const double*, const double*, double, int, double*,
                      double*, const ParallelFor&);
  void (*input_grad_f32)(const ConvShape&, const float*, const float*, const float*, float, int,
                         float*, float*, const ParallelFor&);
  void (*input_grad_f64)(const ConvShape&, const double*, const double*, const double*, double,
                         int, double*, double*, const ParallelFor&);
  // float32 terms per second of the forward's (or the input gradient's) register tile for
  // this many channels (out, or in), on `threads` threads, data in L1: the instruction bound.
  double (*loop_rate_f32)(bool input_grad, int64_t channels, int threads, double seconds);
  // Whether float32 runs 256-bit tiles (AVX-512 build only) for this many channels.
  bool (*narrow_tiles_f32)(bool input_grad, int64_t channels);
  // The filter gradient's correlation corr (kh, kw, c, o) from x and the cotangent g.
  int64_t (*filter_corr_workspace_f32)(const ConvShape&);
  int64_t (*filter_corr_workspace_f64)(const ConvShape&);
  void (*filter_corr_f32)(const ConvShape&, const float*, const float*, float*, float*,
                          const ParallelFor&);
  void (*filter_corr_f64)(const ConvShape&, const double*, const double*, double*, double*,
                          const ParallelFor&);
};

// Defined in isa_avx512.cc and isa_avx2.cc, each compiled for its instruction set.
const IsaKernels& avx512_kernels();
const IsaKernels& avx2_kernels();

}  // namespace adderjax_cpu
