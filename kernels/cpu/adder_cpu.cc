// XLA FFI handlers of the adder op on CPU and the Python module that registers them.
//
// One handler per (function, instruction set):
// adderjax_{forward,input_grad,filter_corr}_{avx512,avx2}.
// Each checks its buffers, turns the attributes into a ConvShape and runs the kernels of
// adder_kernels.h on XLA's intra-op thread pool. Shapes, padding and the choice of rule are
// worked out on the Python side (kernels/adder_cpu.py); the workspace is an extra output that
// XLA allocates, of the size `forward_workspace` / `input_grad_workspace` report.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "isa.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace adderjax_cpu {
namespace {

// fn(i) for every i in [0, n): the calling thread and up to num_threads - 1 pool tasks take
// items from one counter. The caller waits only for items that were taken, never for a task
// to start, so a busy pool cannot deadlock it; which thread runs an item does not change its
// result.
ParallelFor make_parallel(ffi::ThreadPool* pool) {
  return [pool](int64_t n, const std::function<void(int64_t)>& fn) {
    const int64_t helpers = pool ? std::min<int64_t>(pool->num_threads(), n) - 1 : 0;
    if (helpers <= 0) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    struct State {
      std::atomic<int64_t> next{0};
      int64_t done = 0;
      std::mutex mu;
      std::condition_variable cv;
    };
    auto state = std::make_shared<State>();
    const std::function<void(int64_t)>* body = &fn;
    auto work = [state, n, body]() {
      int64_t finished = 0;
      for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
        (*body)(i);
        ++finished;
      }
      if (finished) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->done += finished;
        if (state->done == n) state->cv.notify_all();
      }
    };
    for (int64_t t = 0; t < helpers; ++t) pool->Schedule(std::function<void()>(work));
    work();
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->done == n; });
  };
}

// Asks the OS to back the 2 MiB-aligned interior of a large output with transparent huge
// pages. XLA hands large outputs over freshly mapped (malloc's mmap threshold), and on a
// virtual machine each first touch of a 4 KiB page is a fault that costs microseconds (a fresh
// 100 MB buffer: 60 ms to fill, 4.5 ms once resident); with huge pages ResNet-50's 56x56x256
// forward went from 70-95 ms to 40-50. Advice only: where THP is off or the pages are
// already there, nothing changes.
void advise_huge_pages(void* data, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < 2 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
}

const IsaKernels* isa_by_name(const std::string& name) {
  if (name == "avx512") return &avx512_kernels();
  if (name == "avx2") return &avx2_kernels();
  return nullptr;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    out.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back("avx2");
  return out;
}

ffi::Error check_rank(const char* what, const ffi::AnyBuffer& b, size_t rank) {
  if (b.dimensions().size() != rank)
    return ffi::Error::InvalidArgument(std::string(what) + " must have rank " +
                                       std::to_string(rank));
  return ffi::Error::Success();
}

// The shape from x (N, H, W, C), w's dimensions (kh, kw, C, O), the output's (N, Ho, Wo, O)
// and the attributes.
ffi::Error conv_shape(const ffi::AnyBuffer& x, ffi::Span<const int64_t> wd,
                      ffi::Span<const int64_t> out_dims, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr, ConvShape* out) {
  if (auto e = check_rank("x", x, 4); e.failure()) return e;
  if (wd.size() != 4) return ffi::Error::InvalidArgument("w must have rank 4");
  if (out_dims.size() != 4) return ffi::Error::InvalidArgument("the output must have rank 4");
  auto xd = x.dimensions();
  ConvShape& s = *out;
  s = ConvShape{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], sh, sw, pt, pb, pl, pr,
              out_dims[1], out_dims[2]};
  if (wd[2] != s.c) return ffi::Error::InvalidArgument("w's input channels must match x's");
  if (sh < 1 || sw < 1) return ffi::Error::InvalidArgument("strides must be positive");
  if (pt < 0 || pb < 0 || pl < 0 || pr < 0)
    return ffi::Error::InvalidArgument("padding must be non-negative (crop x first)");
  const int64_t ho = (s.h + pt + pb - s.kh) / sh + 1, wo = (s.w + pl + pr - s.kw) / sw + 1;
  if (out_dims[0] != s.n || out_dims[3] != s.o || ho != s.ho || wo != s.wo || ho < 1 || wo < 1)
    return ffi::Error::InvalidArgument("the output shape does not match the convolution");
  return ffi::Error::Success();
}

template <class T>
T scalar(const ffi::AnyBuffer& p) {
  return *reinterpret_cast<const T*>(p.untyped_data());
}

ffi::Error forward_impl(const IsaKernels* isa, ffi::ThreadPool pool, ffi::AnyBuffer x,
                        ffi::AnyBuffer w, ffi::AnyBuffer p, ffi::Result<ffi::AnyBuffer> y,
                        ffi::Result<ffi::AnyBuffer> work, int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right, int64_t rule) {
  ConvShape s;
  if (auto e = conv_shape(x, w.dimensions(), y->dimensions(), stride_h, stride_w, pad_top,
                          pad_bottom, pad_left, pad_right, &s);
      e.failure())
    return e;
  const auto dt = x.element_type();
  if (w.element_type() != dt || p.element_type() != dt || y->element_type() != dt ||
      work->element_type() != dt)
    return ffi::Error::InvalidArgument("x, w, p, y and the workspace must share one dtype");
  if (rule < kMinIdentity || rule > kPow) return ffi::Error::InvalidArgument("unknown rule");
  const ParallelFor parallel = make_parallel(&pool);
  advise_huge_pages(y->untyped_data(), y->size_bytes());
  advise_huge_pages(work->untyped_data(), work->size_bytes());
  if (dt == ffi::DataType::F32) {
    if (int64_t(work->element_count()) < isa->forward_workspace_f32(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->forward_f32(s, x.typed_data<float>(), w.typed_data<float>(), scalar<float>(p),
                     int(rule), y->typed_data<float>(), work->typed_data<float>(), parallel);
  } else if (dt == ffi::DataType::F64) {
    if (int64_t(work->element_count()) < isa->forward_workspace_f64(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->forward_f64(s, x.typed_data<double>(), w.typed_data<double>(), scalar<double>(p),
                     int(rule), y->typed_data<double>(), work->typed_data<double>(), parallel);
  } else {
    return ffi::Error::InvalidArgument("dtype must be float32 or float64");
  }
  return ffi::Error::Success();
}

ffi::Error input_grad_impl(const IsaKernels* isa, ffi::ThreadPool pool, ffi::AnyBuffer x,
                           ffi::AnyBuffer w, ffi::AnyBuffer g, ffi::AnyBuffer p,
                           ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> work,
                           int64_t stride_h, int64_t stride_w, int64_t pad_top,
                           int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                           int64_t rule) {
  ConvShape s;
  if (auto e = conv_shape(x, w.dimensions(), g.dimensions(), stride_h, stride_w, pad_top,
                          pad_bottom, pad_left, pad_right, &s);
      e.failure())
    return e;
  const auto dt = x.element_type();
  if (w.element_type() != dt || g.element_type() != dt || p.element_type() != dt ||
      dx->element_type() != dt || work->element_type() != dt)
    return ffi::Error::InvalidArgument("x, w, g, p, dx and the workspace must share one dtype");
  if (dx->dimensions().size() != 4 || dx->element_count() != x.element_count())
    return ffi::Error::InvalidArgument("dx must have x's shape");
  if (rule < kHardTanh || rule > kLpPow) return ffi::Error::InvalidArgument("unknown rule");
  const ParallelFor parallel = make_parallel(&pool);
  advise_huge_pages(dx->untyped_data(), dx->size_bytes());
  advise_huge_pages(work->untyped_data(), work->size_bytes());
  if (dt == ffi::DataType::F32) {
    if (int64_t(work->element_count()) < isa->input_grad_workspace_f32(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->input_grad_f32(s, x.typed_data<float>(), w.typed_data<float>(), g.typed_data<float>(),
                        scalar<float>(p) - 1, int(rule), dx->typed_data<float>(),
                        work->typed_data<float>(), parallel);
  } else if (dt == ffi::DataType::F64) {
    if (int64_t(work->element_count()) < isa->input_grad_workspace_f64(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->input_grad_f64(s, x.typed_data<double>(), w.typed_data<double>(),
                        g.typed_data<double>(), scalar<double>(p) - 1, int(rule),
                        dx->typed_data<double>(), work->typed_data<double>(), parallel);
  } else {
    return ffi::Error::InvalidArgument("dtype must be float32 or float64");
  }
  return ffi::Error::Success();
}

ffi::Error filter_corr_impl(const IsaKernels* isa, ffi::ThreadPool pool, ffi::AnyBuffer x,
                            ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> corr,
                            ffi::Result<ffi::AnyBuffer> work, int64_t stride_h, int64_t stride_w,
                            int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                            int64_t pad_right) {
  ConvShape s;
  if (auto e = conv_shape(x, corr->dimensions(), g.dimensions(), stride_h, stride_w, pad_top,
                          pad_bottom, pad_left, pad_right, &s);
      e.failure())
    return e;
  const auto dt = x.element_type();
  if (g.element_type() != dt || corr->element_type() != dt || work->element_type() != dt)
    return ffi::Error::InvalidArgument("x, g, corr and the workspace must share one dtype");
  const ParallelFor parallel = make_parallel(&pool);
  advise_huge_pages(work->untyped_data(), work->size_bytes());
  if (dt == ffi::DataType::F32) {
    if (int64_t(work->element_count()) < isa->filter_corr_workspace_f32(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->filter_corr_f32(s, x.typed_data<float>(), g.typed_data<float>(),
                         corr->typed_data<float>(), work->typed_data<float>(), parallel);
  } else if (dt == ffi::DataType::F64) {
    if (int64_t(work->element_count()) < isa->filter_corr_workspace_f64(s))
      return ffi::Error::InvalidArgument("workspace too small");
    isa->filter_corr_f64(s, x.typed_data<double>(), g.typed_data<double>(),
                         corr->typed_data<double>(), work->typed_data<double>(), parallel);
  } else {
    return ffi::Error::InvalidArgument("dtype must be float32 or float64");
  }
  return ffi::Error::Success();
}

#define ADDERJAX_CONV_ATTRS                                                              \
  .Attr<int64_t>("stride_h")                                                             \
      .Attr<int64_t>("stride_w")                                                         \
      .Attr<int64_t>("pad_top")                                                          \
      .Attr<int64_t>("pad_bottom")                                                       \
      .Attr<int64_t>("pad_left")                                                         \
      .Attr<int64_t>("pad_right")                                                        \
      .Attr<int64_t>("rule")

#define ADDERJAX_HANDLERS(ISA)                                                            \
  ffi::Error forward_##ISA(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,      \
                           ffi::AnyBuffer p, ffi::Result<ffi::AnyBuffer> y,               \
                           ffi::Result<ffi::AnyBuffer> work, int64_t sh, int64_t sw,      \
                           int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t rule) { \
    return forward_impl(&ISA##_kernels(), pool, x, w, p, y, work, sh, sw, pt, pb, pl, pr,  \
                        rule);                                                            \
  }                                                                                       \
  ffi::Error input_grad_##ISA(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,   \
                              ffi::AnyBuffer g, ffi::AnyBuffer p,                         \
                              ffi::Result<ffi::AnyBuffer> dx,                             \
                              ffi::Result<ffi::AnyBuffer> work, int64_t sh, int64_t sw,   \
                              int64_t pt, int64_t pb, int64_t pl, int64_t pr,             \
                              int64_t rule) {                                             \
    return input_grad_impl(&ISA##_kernels(), pool, x, w, g, p, dx, work, sh, sw, pt, pb,  \
                           pl, pr, rule);                                                 \
  }                                                                                       \
  ffi::Error filter_corr_##ISA(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer g,    \
                               ffi::Result<ffi::AnyBuffer> corr,                          \
                               ffi::Result<ffi::AnyBuffer> work, int64_t sh, int64_t sw,  \
                               int64_t pt, int64_t pb, int64_t pl, int64_t pr) {          \
    return filter_corr_impl(&ISA##_kernels(), pool, x, g, corr, work, sh, sw, pt, pb, pl,  \
                            pr);                                                          \
  }                                                                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FilterCorrHandler_##ISA, filter_corr_##ISA,               \
                                ffi::Ffi::Bind()                                          \
                                    .Ctx<ffi::ThreadPool>()                               \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>()                                \
                                    .Attr<int64_t>("stride_h")                            \
                                    .Attr<int64_t>("stride_w")                            \
                                    .Attr<int64_t>("pad_top")                             \
                                    .Attr<int64_t>("pad_bottom")                          \
                                    .Attr<int64_t>("pad_left")                            \
                                    .Attr<int64_t>("pad_right"));                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(ForwardHandler_##ISA, forward_##ISA,                      \
                                ffi::Ffi::Bind()                                          \
                                    .Ctx<ffi::ThreadPool>()                               \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>() ADDERJAX_CONV_ATTRS);          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(InputGradHandler_##ISA, input_grad_##ISA,                 \
                                ffi::Ffi::Bind()                                          \
                                    .Ctx<ffi::ThreadPool>()                               \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Arg<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>()                                \
                                    .Ret<ffi::AnyBuffer>() ADDERJAX_CONV_ATTRS);

ADDERJAX_HANDLERS(avx512)
ADDERJAX_HANDLERS(avx2)

ConvShape shape_from(const std::vector<int64_t>& d) {
  if (d.size() != 15) throw std::invalid_argument("expected 15 shape values");
  return ConvShape{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
                   d[8], d[9], d[10], d[11], d[12], d[13], d[14]};
}

const IsaKernels& isa_or_throw(const std::string& name) {
  const IsaKernels* isa = isa_by_name(name);
  if (!isa) throw std::invalid_argument("unknown instruction set " + name);
  return *isa;
}

}  // namespace
}  // namespace adderjax_cpu

NB_MODULE(_adder_cpu, m) {
  using namespace adderjax_cpu;
  m.doc() = "The adder op's CPU kernels as XLA FFI handlers (see kernels/adder_cpu.py).";
  m.def("supported_isas", &supported_isas,
        "Instruction sets this CPU runs, best first (a subset of 'avx512', 'avx2').");
  m.def("registrations", []() {
    nb::dict d;
    d["adderjax_forward_avx512"] = nb::capsule(reinterpret_cast<void*>(ForwardHandler_avx512));
    d["adderjax_input_grad_avx512"] =
        nb::capsule(reinterpret_cast<void*>(InputGradHandler_avx512));
    d["adderjax_filter_corr_avx512"] =
        nb::capsule(reinterpret_cast<void*>(FilterCorrHandler_avx512));
    d["adderjax_filter_corr_avx2"] = nb::capsule(reinterpret_cast<void*>(FilterCorrHandler_avx2));
    d["adderjax_forward_avx2"] = nb::capsule(reinterpret_cast<void*>(ForwardHandler_avx2));
    d["adderjax_input_grad_avx2"] = nb::capsule(reinterpret_cast<void*>(InputGradHandler_avx2));
    return d;
  });
  m.def(
      "forward_workspace",
      [](const std::string& isa, int bits, const std::vector<int64_t>& shape) {
        const IsaKernels& k = isa_or_throw(isa);
        const ConvShape s = shape_from(shape);
        return bits == 64 ? k.forward_workspace_f64(s) : k.forward_workspace_f32(s);
      },
      "Elements of workspace the forward needs: (isa, 32 | 64, [n, h, w, c, kh, kw, o, sh, sw, "
      "pt, pb, pl, pr, ho, wo]).");
  m.def(
      "input_grad_workspace",
      [](const std::string& isa, int bits, const std::vector<int64_t>& shape) {
        const IsaKernels& k = isa_or_throw(isa);
        const ConvShape s = shape_from(shape);
        return bits == 64 ? k.input_grad_workspace_f64(s) : k.input_grad_workspace_f32(s);
      },
      "Elements of workspace the input gradient needs (arguments as forward_workspace).");
  m.def(
      "filter_corr_workspace",
      [](const std::string& isa, int bits, const std::vector<int64_t>& shape) {
        const IsaKernels& k = isa_or_throw(isa);
        const ConvShape s = shape_from(shape);
        return bits == 64 ? k.filter_corr_workspace_f64(s) : k.filter_corr_workspace_f32(s);
      },
      "Elements of workspace the filter gradient's correlation needs (arguments as "
      "forward_workspace).");
  m.def(
      "loop_rate",
      [](const std::string& isa, bool input_grad, int64_t channels, int threads,
         double seconds) {
        if (channels < 1 || threads < 1 || !(seconds > 0))
          throw std::invalid_argument("loop_rate needs channels >= 1, threads >= 1, seconds > 0");
        nb::gil_scoped_release release;
        return isa_or_throw(isa).loop_rate_f32(input_grad, channels, threads, seconds);
      },
      "float32 terms per second of the register tile the kernels use for `channels` (out for "
      "the forward, in for the input gradient) on `threads` threads, data in L1: (isa, "
      "input_grad, channels, threads, seconds).");
  m.def(
      "narrow_tiles",
      [](const std::string& isa, bool input_grad, int64_t channels) {
        if (channels < 1) throw std::invalid_argument("narrow_tiles needs channels >= 1");
        nb::gil_scoped_release release;
        return isa_or_throw(isa).narrow_tiles_f32(input_grad, channels);
      },
      "Whether float32 runs 256-bit register tiles for `channels` (the AVX-512 build picks "
      "them where they are the faster on this CPU): (isa, input_grad, channels).");
}
