// Thin wrappers over AVX-512 and AVX2 registers, so the kernels are written once.
//
// Each struct is one (instruction set, element type) pair: `reg` is the register, `kLanes` its
// width, and every function one instruction or a short fixed sequence of them. The kernels in
// adder_kernels.h are templates over these structs; isa_avx512.cc and isa_avx2.cc compile them
// with the matching -m flags, and adder_cpu.cc picks one at run time.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace adderjax_cpu {
namespace {

#if defined(ADDERJAX_AVX512)

struct Avx512F {
  using T = float;
  using reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(T v) { return _mm512_set1_ps(v); }
  static reg load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, reg v) { _mm512_storeu_ps(p, v); }
  static void stream(T* p, reg v) { _mm512_stream_ps(p, v); }
  static reg bcast(const T* p) { return _mm512_set1_ps(*p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  // clip(d, -1, 1) in one instruction: the smaller magnitude of (d, 1) with d's sign.
  static reg clip1(reg d, reg one, reg) { return _mm512_range_ps(d, one, 2); }
  // sign(a) in {-1, 0, +1}.
  static reg sign(reg a) {
    const __mmask16 nz = _mm512_cmp_ps_mask(a, zero(), _CMP_NEQ_OQ);
    const __m512i bits = _mm512_or_si512(
        _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(int32_t(0x80000000u))),
        _mm512_castps_si512(set1(1.0f)));
    return _mm512_maskz_mov_ps(nz, _mm512_castsi512_ps(bits));
  }
  // a = m * 2^e with m in [1, 2) (a > 0, normal).
  static reg getexp(reg a) { return _mm512_getexp_ps(a); }
  static reg getmant(reg a) { return _mm512_getmant_ps(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero); }
  // where(a > b, x, y).
  static reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), x);
  }
  static reg select_eq(reg a, reg b, reg x, reg y) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), x);
  }
  static reg round(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT); }
  // a * 2^k for an integral k (underflow goes to 0).
  static reg scale(reg a, reg k) { return _mm512_scalef_ps(a, k); }
};

struct Avx512D {
  using T = double;
  using reg = __m512d;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 32;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg set1(T v) { return _mm512_set1_pd(v); }
  static reg load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, reg v) { _mm512_storeu_pd(p, v); }
  static void stream(T* p, reg v) { _mm512_stream_pd(p, v); }
  static reg bcast(const T* p) { return _mm512_set1_pd(*p); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static reg abs(reg a) { return _mm512_abs_pd(a); }
  static reg clip1(reg d, reg one, reg) { return _mm512_range_pd(d, one, 2); }
  static reg sign(reg a) {
    const __mmask8 nz = _mm512_cmp_pd_mask(a, zero(), _CMP_NEQ_OQ);
    const __m512i bits = _mm512_or_si512(
        _mm512_and_si512(_mm512_castpd_si512(a), _mm512_set1_epi64(int64_t(0x8000000000000000ull))),
        _mm512_castpd_si512(set1(1.0)));
    return _mm512_maskz_mov_pd(nz, _mm512_castsi512_pd(bits));
  }
  static reg getexp(reg a) { return _mm512_getexp_pd(a); }
  static reg getmant(reg a) { return _mm512_getmant_pd(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero); }
  static reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ), x);
  }
  static reg select_eq(reg a, reg b, reg x, reg y) {
    return _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ), x);
  }
  static reg round(reg a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT); }
  static reg scale(reg a, reg k) { return _mm512_scalef_pd(a, k); }
};

#endif  // ADDERJAX_AVX512

// Also in the AVX-512 build: Avx512Y below is its 256-bit form.
#if defined(ADDERJAX_AVX2) || defined(ADDERJAX_AVX512)

struct Avx2F {
  using T = float;
  using reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(T v) { return _mm256_set1_ps(v); }
  static reg load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, reg v) { _mm256_storeu_ps(p, v); }
  static void stream(T* p, reg v) { _mm256_stream_ps(p, v); }
  static reg bcast(const T* p) { return _mm256_broadcast_ss(p); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg abs(reg a) { return _mm256_andnot_ps(set1(-0.0f), a); }
  static reg clip1(reg d, reg one, reg minus_one) { return min(max(d, minus_one), one); }
  static reg sign(reg a) {
    const reg s = _mm256_or_ps(_mm256_and_ps(a, set1(-0.0f)), set1(1.0f));
    return _mm256_and_ps(s, _mm256_cmp_ps(a, zero(), _CMP_NEQ_OQ));
  }
  static reg getexp(reg a) {
    const __m256i e = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_castps_si256(a), 23), _mm256_set1_epi32(127));
    return _mm256_cvtepi32_ps(e);
  }
  static reg getmant(reg a) {
    const __m256i m = _mm256_or_si256(
        _mm256_and_si256(_mm256_castps_si256(a), _mm256_set1_epi32(0x007fffff)),
        _mm256_set1_epi32(0x3f800000));
    return _mm256_castsi256_ps(m);
  }
  static reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
  }
  static reg select_eq(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
  }
  static reg round(reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale(reg a, reg k) {
    // 2^k from its exponent bits; k below the normal range flushes to 0.
    const reg kc = _mm256_max_ps(k, set1(-127.0f));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(kc), _mm256_set1_epi32(127)), 23);
    const reg two_k = _mm256_and_ps(_mm256_castsi256_ps(e), _mm256_cmp_ps(kc, set1(-127.0f), _CMP_GT_OQ));
    return _mm256_mul_ps(a, two_k);
  }
};

struct Avx2D {
  using T = double;
  using reg = __m256d;
  static constexpr int kLanes = 4;
  static constexpr int kRegisters = 16;
  static reg zero() { return _mm256_setzero_pd(); }
  static reg set1(T v) { return _mm256_set1_pd(v); }
  static reg load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, reg v) { _mm256_storeu_pd(p, v); }
  static void stream(T* p, reg v) { _mm256_stream_pd(p, v); }
  static reg bcast(const T* p) { return _mm256_broadcast_sd(p); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  static reg abs(reg a) { return _mm256_andnot_pd(set1(-0.0), a); }
  static reg clip1(reg d, reg one, reg minus_one) { return min(max(d, minus_one), one); }
  static reg sign(reg a) {
    const reg s = _mm256_or_pd(_mm256_and_pd(a, set1(-0.0)), set1(1.0));
    return _mm256_and_pd(s, _mm256_cmp_pd(a, zero(), _CMP_NEQ_OQ));
  }
  // float64 exponent/mantissa handling is only needed by the general-p rule, which runs
  // lane by lane in double (pow_lanes below), so these are not provided.
  static reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_pd(y, x, _mm256_cmp_pd(a, b, _CMP_GT_OQ));
  }
  static reg select_eq(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_pd(y, x, _mm256_cmp_pd(a, b, _CMP_EQ_OQ));
  }
};

#endif  // ADDERJAX_AVX2 || ADDERJAX_AVX512

#if defined(ADDERJAX_AVX512)
// 256-bit registers with AVX-512's 32 of them and its one-instruction clip: the AVX-512 build's
// choice where a layer's channels fill fewer than three 512-bit vectors (a 512-bit broadcast
// takes a floating-point pipe slot on Zen 4, so few filter vectors per broadcast starve the
// min/accumulate pair; see docs/cpu_kernel.md).
struct Avx512Y : Avx2F {
  static constexpr int kRegisters = 32;
  static reg clip1(reg d, reg one, reg) { return _mm256_range_ps(d, one, 2); }
};
#endif  // ADDERJAX_AVX512

// |a| ** q for a >= 0, lane by lane with std::pow: the float64 general-p rule, where accuracy
// matters more than speed.
template <class V>
inline typename V::reg pow_lanes(typename V::reg a, typename V::T q) {
  alignas(64) typename V::T lanes[V::kLanes];
  V::store(lanes, a);
  for (int l = 0; l < V::kLanes; ++l) lanes[l] = std::pow(lanes[l], q);
  return V::load(lanes);
}

// a ** q for a >= 0 (0 ** q = 0, q > 0), float32, in registers: 2^(q log2 a), log2 from the
// atanh series on a mantissa in [sqrt(1/2), sqrt(2)), exp2 from its Taylor series on
// [-1/2, 1/2]; relative error ~1e-7 (a few float32 ulp). Inputs below the smallest normal
// float are treated as that float (their power is below 1e-38 * q anyway).
template <class V>
inline typename V::reg pow_f32(typename V::reg a, typename V::reg q) {
  using reg = typename V::reg;
  const reg tiny = V::set1(1.17549435e-38f);
  const reg x = V::max(a, tiny);
  reg e = V::getexp(x);
  reg m = V::getmant(x);
  const reg big = V::select_gt(m, V::set1(1.41421356f), V::set1(1.0f), V::zero());
  e = V::add(e, big);
  m = V::select_gt(m, V::set1(1.41421356f), V::mul(m, V::set1(0.5f)), m);
  // ln m = 2 (t + t^3/3 + t^5/5 + t^7/7 + t^9/9), t = (m - 1) / (m + 1), |t| <= 0.1716.
  const reg one = V::set1(1.0f);
  const reg t = V::div(V::sub(m, one), V::add(m, one));
  const reg t2 = V::mul(t, t);
  reg s = V::set1(1.0f / 9.0f);
  s = V::fmadd(s, t2, V::set1(1.0f / 7.0f));
  s = V::fmadd(s, t2, V::set1(1.0f / 5.0f));
  s = V::fmadd(s, t2, V::set1(1.0f / 3.0f));
  s = V::fmadd(s, t2, one);
  const reg log2m = V::mul(V::mul(t, s), V::set1(2.88539008f));  // 2 / ln 2
  const reg y = V::mul(q, V::add(e, log2m));
  const reg k = V::round(V::max(y, V::set1(-160.0f)));
  const reg f = V::mul(V::sub(V::max(y, V::set1(-160.0f)), k), V::set1(0.693147181f));
  // e^f, |f| <= 0.347: Taylor to f^7.
  reg p = V::set1(1.0f / 5040.0f);
  p = V::fmadd(p, f, V::set1(1.0f / 720.0f));
  p = V::fmadd(p, f, V::set1(1.0f / 120.0f));
  p = V::fmadd(p, f, V::set1(1.0f / 24.0f));
  p = V::fmadd(p, f, V::set1(1.0f / 6.0f));
  p = V::fmadd(p, f, V::set1(0.5f));
  p = V::fmadd(p, f, one);
  p = V::fmadd(p, f, one);
  const reg r = V::scale(p, k);
  return V::select_eq(a, V::zero(), V::zero(), r);
}

}  // namespace
}  // namespace adderjax_cpu
