// The adder op's forward and input gradient on CPU, written once over the register types of
// simd.h and compiled per instruction set (isa_avx512.cc, isa_avx2.cc).
//
// Forward: y[q, o] = -sum_{t, c} |x[q + off t, c] - w[t, c, o]| ** p for every output pixel q.
// A tile is MR output pixels x NR vectors of output channels held in registers; every
// (tap, channel) step is a rank-1 update: NR filter vectors (w packed per block of output
// channels, contiguous in the order the loop reads them) against MR broadcast input values.
// At p = 1 the default term is min(x, w), two instructions with the add: |x - w| = x + w -
// 2 min(x, w), with sum x over the patch and sum w per filter added once per output.
// Work items are bands of whole output rows of one image (x a group of blocks of output
// channels); a padded layer's item pads its band's input rows into a buffer of its thread.
//
// Input gradient: dx[r, c] = sum_{t, o} g[r - off t, o] * f(w[t, c, o] - x[r, c]) for the taps t
// that reach input pixel r; a tile is MR input pixels of one stride phase x NR vectors of input
// channels, x kept in registers, the cotangent broadcast, w packed (tap, out, in).
//
// Every output element is computed by one sequence of operations that depends on the shapes
// only: results are bitwise the same run to run and for any number of threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "conv_shape.h"
#include "simd.h"

namespace adderjax_cpu {

// Internal linkage: each instruction-set build keeps its own copy of every helper, so the
// linker never swaps an AVX-512 body into the AVX2 build.
namespace {

// Forward outputs of at least this many bytes (half of a Zen 4 CCD's 32 MiB L3) are written
// with non-temporal stores: ResNet-50's 56x56x256 layer (100 MB) went from 40-48 ms to 30-32.
constexpr int64_t kStreamBytes = int64_t(16) << 20;
// The most bytes of padded input rows a forward work item copies into its thread's buffer
// (half a Zen 4 core's L2).
constexpr int64_t kBandBytes = int64_t(512) << 10;
// The most bytes of packed filters a forward work item runs over (a Golden Cove core's L2):
// the group's filters stay in the thread's L2 from item to item.
constexpr int64_t kGroupFilterBytes = int64_t(2) << 20;
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// fn(i) for i in [0, n), in at most about 128 work items of consecutive i (one item per i
// would spend more on scheduling than on a short row).
template <class F>
void parallel_rows(const ParallelFor& parallel, int64_t n, F&& fn) {
  const int64_t per = std::max<int64_t>(1, ceil_div(n, 128));
  parallel(ceil_div(n, per), [&](int64_t item) {
    for (int64_t i = item * per, end = std::min(n, i + per); i < end; ++i) fn(i);
  });
}
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Register tiles: (pixels, vectors) per tile for NR = 1..4 vectors.
template <class V>
constexpr int forward_mr(int nr) {
  if (V::kRegisters >= 32) return nr == 1 ? 12 : nr == 2 ? 8 : nr == 3 ? 6 : 5;
  return nr == 1 ? 6 : nr == 2 ? 4 : nr == 3 ? 3 : 2;
}
template <class V>
constexpr int input_grad_mr(int nr) {
  if (V::kRegisters >= 32) return nr == 1 ? 12 : nr == 2 ? 6 : nr == 3 ? 4 : 3;
  return nr == 1 ? 5 : nr == 2 ? 3 : nr == 3 ? 2 : 1;
}

// How many vectors a block of channels holds: the one of 4..1 that wastes the fewest lanes
// over `channels`, the larger on ties.
template <class V>
inline int vectors_per_block(int64_t channels) {
  const int64_t nv = ceil_div(channels, V::kLanes);
  int best = 1;
  int64_t best_total = nv;
  for (int nr = 4; nr >= 1; --nr) {
    const int64_t total = ceil_div(nv, nr) * nr;
    if (total < best_total || (total == best_total && nr > best)) {
      best = nr;
      best_total = total;
    }
  }
  return best;
}

template <class V, int RULE>
inline typename V::reg forward_term(typename V::reg x, typename V::reg w, typename V::reg p) {
  if constexpr (RULE == kMinIdentity) {
    return V::min(x, w);
  } else if constexpr (RULE == kAbs) {
    return V::abs(V::sub(x, w));
  } else if constexpr (RULE == kSquare) {
    const auto d = V::sub(x, w);
    return V::mul(d, d);
  } else {
    const auto a = V::abs(V::sub(x, w));
    if constexpr (sizeof(typename V::T) == 4) {
      return pow_f32<V>(a, p);
    } else {
      alignas(64) typename V::T pl[V::kLanes];
      V::store(pl, p);
      return pow_lanes<V>(a, pl[0]);
    }
  }
}

// acc + t. For the cheap terms as fma(t, 1, acc), bitwise the same sum: on Zen 4 min and add
// share two pipes while an FMA has its own, so the pair issues in one cycle, not two.
template <class V, int RULE>
inline typename V::reg accumulate(typename V::reg acc, typename V::reg t, typename V::reg one) {
  if constexpr (RULE == kMinIdentity || RULE == kAbs) return V::fmadd(t, one, acc);
  else return V::add(acc, t);
}

// acc[r][k] = sum over runs and elements of term(x_r[run + e], w[e][k]), then finish(r, k,
// acc[r][k]) for every r and k, from the registers.
template <class V, int MR, int NR, int RULE, class Finish>
inline void forward_tile_with(const typename V::T* const* xs, const typename V::T* wpk,
                         const int64_t* run_offsets, int64_t num_runs, int64_t run_len,
                         typename V::T p, Finish&& finish) {
  using reg = typename V::reg;
  reg acc[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NR; ++k) acc[r][k] = V::zero();
  const reg pv = V::set1(p), one = V::set1(1);
  for (int64_t run = 0; run < num_runs; ++run) {
    const typename V::T* x[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) x[r] = xs[r] + run_offsets[run];
    for (int64_t e = 0; e < run_len; ++e) {
      reg wv[NR];
#pragma GCC unroll 4
      for (int k = 0; k < NR; ++k) wv[k] = V::load(wpk + k * V::kLanes);
      wpk += NR * V::kLanes;
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const reg xb = V::bcast(x[r] + e);
#pragma GCC unroll 4
        for (int k = 0; k < NR; ++k)
          acc[r][k] = accumulate<V, RULE>(acc[r][k], forward_term<V, RULE>(xb, wv[k], pv), one);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NR; ++k) finish(r, k, acc[r][k]);
}

// The tile's sums into out[(r * NR + k) * lanes ...].
template <class V, int MR, int NR, int RULE>
inline void forward_tile(const typename V::T* const* xs, const typename V::T* wpk,
                         const int64_t* run_offsets, int64_t num_runs, int64_t run_len,
                         typename V::T p, typename V::T* out) {
  forward_tile_with<V, MR, NR, RULE>(xs, wpk, run_offsets, num_runs, run_len, p,
                                     [out](int r, int k, typename V::reg a) {
                                       V::store(out + (r * NR + k) * V::kLanes, a);
                                     });
}

template <class V>
struct ForwardPlan {
  using T = typename V::T;
  int nr, mr;
  int64_t ob;        // output channels per block (nr * lanes)
  int64_t nob;       // blocks
  int64_t hp, wp;    // padded input
  bool padded;
  int64_t rows_per_band, bands;  // output rows of a work item's band; bands per image
  // Work items per band, blocks of output channels each. Items are numbered group-major: the
  // pool hands them out in order, so a thread's next item mostly reuses its group's filters.
  int64_t groups, blocks_per_group;
  int64_t wpk_size, sw_size;

  explicit ForwardPlan(const ConvShape& s) {
    nr = vectors_per_block<V>(s.o);
    mr = forward_mr<V>(nr);
    ob = int64_t(nr) * V::kLanes;
    nob = ceil_div(s.o, ob);
    hp = s.h + s.pt + s.pb;
    wp = s.w + s.pl + s.pr;
    padded = s.pt || s.pb || s.pl || s.pr;
    // Work items are bands of whole output rows of one image (x a block of output channels),
    // about 64 over the layer; with padding, a band's padded input rows must fit kBandBytes.
    const int64_t pixels = s.n * s.ho * s.wo;
    rows_per_band = std::clamp<int64_t>(ceil_div(ceil_div(pixels, 64), s.wo), 1, s.ho);
    int64_t fit = s.ho;
    if (padded) {
      const int64_t row_bytes = int64_t(sizeof(T)) * wp * s.c;
      fit = std::max<int64_t>(1, (kBandBytes / row_bytes - s.kh) / s.sh + 1);
      rows_per_band = std::min(rows_per_band, fit);
    }
    // The last tile of a band is partly wasted: up to twice the rows, take the height that
    // wastes the fewest tile slots (small images: 7x7 in bands of 4 and 3 rows had 55 slots
    // for 49 pixels, in one band 50).
    const auto slots = [&](int64_t rows) {
      const int64_t full = s.ho / rows, rest = s.ho % rows;
      return full * ceil_div(rows * s.wo, mr) + (rest ? ceil_div(rest * s.wo, mr) : 0);
    };
    const int64_t most = std::min({s.ho, fit, 2 * rows_per_band});
    for (int64_t rows = rows_per_band + 1, best = slots(rows_per_band); rows <= most; ++rows) {
      if (slots(rows) < best) {
        best = slots(rows);
        rows_per_band = rows;
      }
    }
    bands = ceil_div(s.ho, rows_per_band);
    // An item runs all blocks of output channels of its band (one padded copy, one set of
    // sums), unless that leaves fewer than about 64 items or their filters would not stay in
    // L2: then groups of blocks.
    const int64_t band_items = s.n * bands;
    groups = std::clamp<int64_t>(ceil_div(64, band_items), 1, nob);
    blocks_per_group = ceil_div(nob, groups);
    const int64_t block_bytes = int64_t(sizeof(T)) * s.kh * s.kw * s.c * ob;
    const int64_t fit_blocks = std::max<int64_t>(1, kGroupFilterBytes / block_bytes);
    if (blocks_per_group > fit_blocks) groups = ceil_div(nob, fit_blocks);
    blocks_per_group = ceil_div(nob, groups);
    groups = ceil_div(nob, blocks_per_group);
    wpk_size = nob * s.kh * s.kw * s.c * ob;
    sw_size = s.o;
  }
  // Elements of scratch the caller provides (XLA allocates it, so it shows in memory analyses).
  int64_t workspace() const { return wpk_size + sw_size + 16; }
};

// A work item's band of padded input rows (at most about kBandBytes), its pixels' channel
// sums and its output pixels' patch sums, in buffers of the thread that runs it (reused from
// item to item): none of them goes through memory.
enum BandBuffer { kBandRows, kBandPixelSums, kBandPatchSums };
template <class T, int WHICH>
T* band_buffer(int64_t size) {
  static thread_local std::vector<T> buffer;
  if (int64_t(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Sum of n values in an order no register width changes: eight running sums over v[8k + l],
// added in turn, then the tail. (The 256- and 512-bit tiles of one build give the same bits.)
template <class T>
inline T sum_values(const T* v, int64_t n) {
  typedef T Lanes8 __attribute__((vector_size(8 * sizeof(T))));
  Lanes8 part = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes8 next;
    std::memcpy(&next, v + i, sizeof next);
    part += next;
  }
  T total = 0;
  for (int l = 0; l < 8; ++l) total += part[l];
  for (; i < n; ++i) total += v[i];
  return total;
}

// sum_values(v + p * stride, n) for the 8 pixels p = 0..7, bit for bit, with the pixels in
// the lanes: the eight running sums of each pixel are transposed and added in turn.
inline void sum_values8(const float* v, int64_t stride, int64_t n, float* out) {
  __m256 part[8];
  for (int q = 0; q < 8; ++q) part[q] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q)
      part[q] = _mm256_add_ps(part[q], _mm256_loadu_ps(v + q * stride + i));
  // 8x8 transpose: rows[l] holds lane l of every pixel's running sums.
  const __m256 t0 = _mm256_unpacklo_ps(part[0], part[1]), t1 = _mm256_unpackhi_ps(part[0], part[1]);
  const __m256 t2 = _mm256_unpacklo_ps(part[2], part[3]), t3 = _mm256_unpackhi_ps(part[2], part[3]);
  const __m256 t4 = _mm256_unpacklo_ps(part[4], part[5]), t5 = _mm256_unpackhi_ps(part[4], part[5]);
  const __m256 t6 = _mm256_unpacklo_ps(part[6], part[7]), t7 = _mm256_unpackhi_ps(part[6], part[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  const __m256 rows[8] = {
      _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
      _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
      _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
      _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  __m256 total = _mm256_setzero_ps();
  for (int l = 0; l < 8; ++l) total = _mm256_add_ps(total, rows[l]);
  for (; i < n; ++i) {
    alignas(32) float tail[8];
    for (int q = 0; q < 8; ++q) tail[q] = v[q * stride + i];
    total = _mm256_add_ps(total, _mm256_load_ps(tail));
  }
  _mm256_storeu_ps(out, total);
}

// out[q] = sum_values(v + q * stride, n) for q < count.
template <class T>
inline void sum_pixels(const T* v, int64_t stride, int64_t n, int64_t count, T* out) {
  int64_t q = 0;
  if constexpr (std::is_same_v<T, float>)
    for (; q + 8 <= count; q += 8) sum_values8(v + q * stride, stride, n, out + q);
  for (; q < count; ++q) out[q] = sum_values(v + q * stride, n);
}

// Some output o < out and tap t < k read input row (or column) i = o * st + t.
inline bool tap_reads(int64_t i, int64_t k, int64_t st, int64_t out) {
  if (k >= st) return i < (out - 1) * st + k;
  return i % st < k && i / st < out;
}

template <class V, int MR, int NR, int RULE>
void forward_blocks(const ConvShape& s, const ForwardPlan<V>& plan, const typename V::T* x,
                    const typename V::T* wpk, const typename V::T* sw, typename V::T p,
                    typename V::T* y, const ParallelFor& parallel) {
  using T = typename V::T;
  const int64_t taps = s.kh * s.kw;
  // Runs of contiguous input: at any stride, a tap row's kw pixels are neighbours in x, so
  // its kw * c values follow each other (the packed filters are (i, j, c) in the same order).
  const int64_t num_runs = s.kh;
  const int64_t run_len = s.kw * s.c;
  int64_t run_offsets[1024];
  std::vector<int64_t> run_offsets_big;
  int64_t* offs = run_offsets;
  if (num_runs > 1024) {
    run_offsets_big.resize(num_runs);
    offs = run_offsets_big.data();
  }
  const int64_t row_values = plan.wp * s.c;  // a (padded) input row
  for (int64_t i = 0; i < num_runs; ++i) offs[i] = i * row_values;
  const int64_t pixels = s.n * s.ho * s.wo;
  const int64_t ob = plan.ob;
  // Outputs much larger than the last-level cache go to memory with non-temporal stores (no
  // read for ownership of lines that are wholly overwritten), where every store is aligned.
  const bool stream = int64_t(sizeof(T)) * pixels * s.o >= kStreamBytes &&
                      s.o % V::kLanes == 0 &&
                      reinterpret_cast<uintptr_t>(y) % (sizeof(T) * V::kLanes) == 0;
  parallel(s.n * plan.bands * plan.groups, [&](int64_t item) {
    const int64_t band_items = s.n * plan.bands;
    const int64_t group = item / band_items, band = item % band_items;
    const int64_t nn = band / plan.bands, h0 = (band % plan.bands) * plan.rows_per_band;
    const int64_t h1 = std::min(s.ho, h0 + plan.rows_per_band);
    const int64_t q0 = (nn * s.ho + h0) * s.wo, q1 = (nn * s.ho + h1) * s.wo;
    // The band's input rows h0 * sh .. (h1 - 1) * sh + kh - 1 (padded coordinates).
    const int64_t in_rows = (h1 - h0 - 1) * s.sh + s.kh;
    const T* xband;
    if (plan.padded) {
      T* buffer = band_buffer<T, kBandRows>(in_rows * row_values);
      for (int64_t r = 0; r < in_rows; ++r) {
        const int64_t h_in = h0 * s.sh + r - s.pt;
        T* d = buffer + r * row_values;
        if (h_in >= 0 && h_in < s.h) {
          std::memset(d, 0, sizeof(T) * s.pl * s.c);
          std::memcpy(d + s.pl * s.c, x + (nn * s.h + h_in) * s.w * s.c, sizeof(T) * s.w * s.c);
          std::memset(d + (s.pl + s.w) * s.c, 0, sizeof(T) * s.pr * s.c);
        } else {
          std::memset(d, 0, sizeof(T) * row_values);
        }
      }
      xband = buffer;
    } else {
      xband = x + (nn * s.h + h0 * s.sh) * row_values;
    }
    // With the min identity: the channel sum of each band pixel a tap reads (zero in the
    // padding), then each output pixel's patch sum over taps in (i, j) order, vectorized
    // along the row.
    const T* psum = nullptr;
    if constexpr (RULE == kMinIdentity) {
      const int64_t rows = h1 - h0;
      T* csum = band_buffer<T, kBandPixelSums>(in_rows * plan.wp);
      for (int64_t r = 0; r < in_rows; ++r) {
        if (!tap_reads(r, s.kh, s.sh, rows)) continue;
        // Every pixel of the row, the ones no tap reads too (eight at a time).
        sum_pixels(xband + r * row_values, s.c, s.c, plan.wp, csum + r * plan.wp);
      }
      T* patch = band_buffer<T, kBandPatchSums>(rows * s.wo);
      for (int64_t hh = 0; hh < rows; ++hh) {
        T* out = patch + hh * s.wo;
        for (int64_t q = 0; q < s.wo; ++q) out[q] = 0;
        for (int64_t i = 0; i < s.kh; ++i) {
          const T* crow = csum + (hh * s.sh + i) * plan.wp;
          for (int64_t j = 0; j < s.kw; ++j) {
            if (s.sw == 1) {
              for (int64_t q = 0; q < s.wo; ++q) out[q] += crow[q + j];
            } else {
              for (int64_t q = 0; q < s.wo; ++q) out[q] += crow[q * s.sw + j];
            }
          }
        }
      }
      psum = patch - q0;  // indexed by output pixel
    }
    const int64_t blk1 = std::min(plan.nob, (group + 1) * plan.blocks_per_group);
    for (int64_t blk = group * plan.blocks_per_group; blk < blk1; ++blk) {
      const T* wblk = wpk + blk * taps * s.c * ob;
      const int64_t o0 = blk * ob, on = std::min(ob, s.o - o0);
      alignas(64) T acc[MR * NR * V::kLanes];
      for (int64_t q = q0; q < q1; q += MR) {
        const T* xs[MR];
        int64_t qs[MR];
        // Pixel q's row in the band and column, then stepped along the tile.
        int64_t hh = (q - q0) / s.wo, ww = (q - q0) % s.wo;
        for (int r = 0; r < MR; ++r) {
          // The last tile of a band repeats its last pixel (computed, not stored).
          if (r > 0 && q + r < q1 && ++ww == s.wo) {
            ww = 0;
            ++hh;
          }
          qs[r] = std::min(q + r, q1 - 1);
          xs[r] = xband + hh * s.sh * row_values + ww * s.sw * s.c;
        }
        const int rows = int(std::min<int64_t>(MR, q1 - q));
        if constexpr (RULE == kMinIdentity) {
          if (on == ob && rows == MR) {
            // A whole tile of whole blocks: y = 2 acc - sum x - sum w, from the registers.
            T* yq[MR];
            T sx[MR];
            for (int r = 0; r < MR; ++r) {
              yq[r] = y + qs[r] * s.o + o0;
              sx[r] = psum[qs[r]];
            }
            const T* swb = sw + o0;
            forward_tile_with<V, MR, NR, RULE>(
                xs, wblk, offs, num_runs, run_len, p, [&](int r, int k, typename V::reg a) {
                  const auto v = V::sub(V::sub(V::add(a, a), V::set1(sx[r])),
                                        V::load(swb + k * V::kLanes));
                  if (stream) V::stream(yq[r] + k * V::kLanes, v);
                  else V::store(yq[r] + k * V::kLanes, v);
                });
            continue;
          }
        }
        forward_tile<V, MR, NR, RULE>(xs, wblk, offs, num_runs, run_len, p, acc);
        for (int r = 0; r < rows; ++r) {
          T* yq = y + qs[r] * s.o + o0;
          const T* a = acc + r * NR * V::kLanes;
          if constexpr (RULE == kMinIdentity) {
            const T sx = psum[qs[r]];
            if (on == ob) {
              const auto sxv = V::set1(sx);
#pragma GCC unroll 4
              for (int k = 0; k < NR; ++k) {
                const auto ak = V::load(a + k * V::kLanes);
                const auto v =
                    V::sub(V::sub(V::add(ak, ak), sxv), V::load(sw + o0 + k * V::kLanes));
                if (stream) V::stream(yq + k * V::kLanes, v);
                else V::store(yq + k * V::kLanes, v);
              }
            } else {
              for (int64_t o = 0; o < on; ++o) yq[o] = (2 * a[o] - sx) - sw[o0 + o];
            }
          } else {
            for (int64_t o = 0; o < on; ++o) yq[o] = -a[o];
          }
        }
      }
    }
    if (stream) _mm_sfence();
  });
}

template <class V>
void forward(const ConvShape& s, const typename V::T* x, const typename V::T* w,
             typename V::T p, int rule, typename V::T* y, typename V::T* work,
             const ParallelFor& parallel) {
  using T = typename V::T;
  const ForwardPlan<V> plan(s);
  // Packed filters aligned to 64 bytes.
  T* wpk = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  T* sw = wpk + plan.wpk_size;
  const bool need_sums = rule == kMinIdentity;
  // Filters packed per block of output channels, (tap, in, out) inside, zero past Cout.
  const int64_t taps = s.kh * s.kw, ob = plan.ob;
  parallel(plan.nob * taps, [&](int64_t item) {
    const int64_t blk = item / taps, t = item % taps;
    T* dst = wpk + (blk * taps + t) * s.c * ob;
    for (int64_t c = 0; c < s.c; ++c) {
      const T* src = w + (t * s.c + c) * s.o + blk * ob;
      const int64_t valid = std::min(ob, s.o - blk * ob);
      std::memcpy(dst + c * ob, src, sizeof(T) * valid);
      std::memset(dst + c * ob + valid, 0, sizeof(T) * (ob - valid));
    }
  });
  if (need_sums) {
    for (int64_t o = 0; o < s.o; ++o) sw[o] = 0;
    for (int64_t tc = 0; tc < taps * s.c; ++tc)
      for (int64_t o = 0; o < s.o; ++o) sw[o] += w[tc * s.o + o];
  }
#define ADDERJAX_FWD(NR, RULE)                                                              \
  forward_blocks<V, forward_mr<V>(NR), NR, RULE>(s, plan, x, wpk, sw, p, y, parallel)
#define ADDERJAX_FWD_RULES(NR)                   \
  switch (rule) {                                \
    case kMinIdentity: ADDERJAX_FWD(NR, kMinIdentity); break; \
    case kAbs: ADDERJAX_FWD(NR, kAbs); break;    \
    case kSquare: ADDERJAX_FWD(NR, kSquare); break; \
    default: ADDERJAX_FWD(NR, kPow); break;      \
  }
  switch (plan.nr) {
    case 1: ADDERJAX_FWD_RULES(1); break;
    case 2: ADDERJAX_FWD_RULES(2); break;
    case 3: ADDERJAX_FWD_RULES(3); break;
    default: ADDERJAX_FWD_RULES(4); break;
  }
#undef ADDERJAX_FWD_RULES
#undef ADDERJAX_FWD
}

// ---------------------------------------------------------------------------------------------
// Input gradient.

// f(w - x). For HardTanh, w - x is a subtraction or, with ON_FMA, fma(x, -1, w) (the same
// rounding): the tile alternates the two so that the term's three instructions (w - x, the
// clip, the accumulating FMA) spread over the add and the FMA pipes.
template <class V, int RULE, bool ON_FMA>
inline typename V::reg input_grad_term(typename V::reg w, typename V::reg x, typename V::reg q,
                                       typename V::reg one, typename V::reg minus_one) {
  const auto d = ON_FMA && RULE == kHardTanh ? V::fmadd(x, minus_one, w) : V::sub(w, x);
  if constexpr (RULE == kHardTanh) {
    return V::clip1(d, one, minus_one);
  } else if constexpr (RULE == kSign) {
    return V::sign(d);
  } else if constexpr (RULE == kLinear) {
    return d;
  } else {
    const auto a = V::abs(d);
    typename V::reg mag;
    if constexpr (sizeof(typename V::T) == 4) {
      mag = pow_f32<V>(a, q);
    } else {
      alignas(64) typename V::T ql[V::kLanes];
      V::store(ql, q);
      mag = pow_lanes<V>(a, ql[0]);
    }
    return V::mul(V::sign(d), mag);
  }
}

template <class V, int MR, int NR, int RULE>
inline void input_grad_tile(const typename V::T* const* gs, const typename V::T* xt,
                            const typename V::T* wpk, const int64_t* tap_offsets,
                            int64_t num_taps, int64_t outs, typename V::T q,
                            typename V::T* out) {
  using reg = typename V::reg;
  reg xv[MR][NR], acc[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NR; ++k) {
      xv[r][k] = V::load(xt + (r * NR + k) * V::kLanes);
      acc[r][k] = V::zero();
    }
  const reg qv = V::set1(q), one = V::set1(1), minus_one = V::set1(-1);
  for (int64_t t = 0; t < num_taps; ++t) {
    const typename V::T* g[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) g[r] = gs[r] + tap_offsets[t];
    for (int64_t o = 0; o < outs; ++o) {
      reg wv[NR];
#pragma GCC unroll 4
      for (int k = 0; k < NR; ++k) wv[k] = V::load(wpk + k * V::kLanes);
      wpk += NR * V::kLanes;
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const reg gb = V::bcast(g[r] + o);
#pragma GCC unroll 4
        for (int k = 0; k < NR; ++k) {
          const reg f = (r * NR + k) % 2
                            ? input_grad_term<V, RULE, true>(wv[k], xv[r][k], qv, one, minus_one)
                            : input_grad_term<V, RULE, false>(wv[k], xv[r][k], qv, one, minus_one);
          acc[r][k] = V::fmadd(gb, f, acc[r][k]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NR; ++k) V::store(out + (r * NR + k) * V::kLanes, acc[r][k]);
}

template <class V>
struct InputGradPlan {
  int nr, mr;
  int64_t cb, ncb;        // input channels per block, blocks
  int64_t rlo, clo;       // first cotangent row / column any tap reads (may be < 0)
  int64_t hg, wg;         // the zero-bordered cotangent's rows and columns
  int64_t gpad_size, wpk_size;

  explicit InputGradPlan(const ConvShape& s) {
    nr = vectors_per_block<V>(s.c);
    mr = input_grad_mr<V>(nr);
    cb = int64_t(nr) * V::kLanes;
    ncb = ceil_div(s.c, cb);
    // Input row a, tap i reads cotangent row (a + pt - i) / sh.
    rlo = floor_div(s.pt - s.kh + 1, s.sh);
    clo = floor_div(s.pl - s.kw + 1, s.sw);
    hg = floor_div(s.h - 1 + s.pt, s.sh) - rlo + 1;
    wg = floor_div(s.w - 1 + s.pl, s.sw) - clo + 1;
    gpad_size = s.n * hg * wg * s.o;
    wpk_size = ncb * s.kh * s.kw * s.o * cb;
  }
  int64_t workspace() const { return gpad_size + wpk_size + 16; }
};

inline int64_t pos_mod(int64_t a, int64_t m) { return ((a % m) + m) % m; }

// One stride phase of the input: pixels (a, b) with a = ra (mod sh), b = rb (mod sw), and the
// taps that reach them, i = (ra + pt) (mod sh), j = (rb + pl) (mod sw).
struct InputPhase {
  int64_t ra, rb, ha, wb, pixels, per_chunk, chunks, first_item;
  int64_t i0, j0, first_tap;
  std::vector<int64_t> tap_offsets;  // cotangent offsets relative to tap (i0, j0)
};

// The phases, each with its taps; `tap_order` lists every tap, phase by phase, which is the
// order the filters are packed in, so the taps of a phase are consecutive.
template <class V>
std::vector<InputPhase> input_phases(const ConvShape& s, const InputGradPlan<V>& plan, int mr,
                                     std::vector<int64_t>* tap_order, int64_t* items) {
  std::vector<InputPhase> phases;
  *items = 0;
  for (int64_t ra = 0; ra < s.sh; ++ra)
    for (int64_t rb = 0; rb < s.sw; ++rb) {
      InputPhase ph;
      ph.ra = ra;
      ph.rb = rb;
      ph.ha = ra < s.h ? ceil_div(s.h - ra, s.sh) : 0;
      ph.wb = rb < s.w ? ceil_div(s.w - rb, s.sw) : 0;
      ph.pixels = s.n * ph.ha * ph.wb;
      ph.per_chunk = std::max<int64_t>(mr, ceil_div(ceil_div(ph.pixels, 32), mr) * mr);
      ph.chunks = ceil_div(ph.pixels, ph.per_chunk);
      ph.first_item = *items;
      *items += ph.chunks * plan.ncb;
      ph.i0 = pos_mod(ra + s.pt, s.sh);
      ph.j0 = pos_mod(rb + s.pl, s.sw);
      ph.first_tap = int64_t(tap_order->size());
      for (int64_t i = ph.i0; i < s.kh; i += s.sh)
        for (int64_t j = ph.j0; j < s.kw; j += s.sw) {
          // The cotangent row moves up one for every sh rows of taps, the column likewise.
          ph.tap_offsets.push_back((-(i - ph.i0) / s.sh * plan.wg - (j - ph.j0) / s.sw) * s.o);
          tap_order->push_back(i * s.kw + j);
        }
      phases.push_back(std::move(ph));
    }
  return phases;
}

template <class V, int MR, int NR, int RULE>
void input_grad_blocks(const ConvShape& s, const InputGradPlan<V>& plan, const typename V::T* x,
                       const typename V::T* gpad, const typename V::T* wpk,
                       typename V::T exponent, typename V::T* dx, const ParallelFor& parallel) {
  using T = typename V::T;
  const int64_t cb = plan.cb, taps = s.kh * s.kw;
  std::vector<int64_t> tap_order;
  int64_t items = 0;
  const std::vector<InputPhase> phases = input_phases<V>(s, plan, MR, &tap_order, &items);
  parallel(items, [&](int64_t item) {
    int64_t pi = 0;
    while (pi + 1 < int64_t(phases.size()) && phases[pi + 1].first_item <= item) ++pi;
    const InputPhase& ph = phases[pi];
    const int64_t num_taps = int64_t(ph.tap_offsets.size());
    const int64_t local = item - ph.first_item;
    const int64_t blk = local % plan.ncb, chunk = local / plan.ncb;
    const int64_t q0 = chunk * ph.per_chunk, q1 = std::min(ph.pixels, q0 + ph.per_chunk);
    const int64_t c0 = blk * cb, cn = std::min(cb, s.c - c0);
    const T* wph = wpk + (blk * taps + ph.first_tap) * s.o * cb;
    alignas(64) T xt[MR * NR * V::kLanes];
    alignas(64) T acc[MR * NR * V::kLanes];
    for (int64_t q = q0; q < q1; q += MR) {
      const T* gs[MR];
      int64_t pix[MR];
      for (int r = 0; r < MR; ++r) {
        // The last tile of a chunk repeats its last pixel (computed, not stored).
        const int64_t qq = std::min(q + r, q1 - 1);
        const int64_t nn = qq / (ph.ha * ph.wb), rest = qq % (ph.ha * ph.wb);
        const int64_t a = ph.ra + (rest / ph.wb) * s.sh, b = ph.rb + (rest % ph.wb) * s.sw;
        pix[r] = (nn * s.h + a) * s.w + b;
        const int64_t grow = (a + s.pt - ph.i0) / s.sh - plan.rlo;
        const int64_t gcol = (b + s.pl - ph.j0) / s.sw - plan.clo;
        gs[r] = gpad + ((nn * plan.hg + grow) * plan.wg + gcol) * s.o;
        T* xr = xt + r * NR * V::kLanes;
        if (cn == cb) {
          std::memcpy(xr, x + pix[r] * s.c + c0, sizeof(T) * NR * V::kLanes);
        } else {
          std::memcpy(xr, x + pix[r] * s.c + c0, sizeof(T) * cn);
          std::memset(xr + cn, 0, sizeof(T) * (cb - cn));
        }
      }
      const int rows = int(std::min<int64_t>(MR, q1 - q));
      if (num_taps == 0) {  // no tap reaches this phase (kernel smaller than the stride)
        for (int r = 0; r < rows; ++r) std::memset(dx + pix[r] * s.c + c0, 0, sizeof(T) * cn);
        continue;
      }
      input_grad_tile<V, MR, NR, RULE>(gs, xt, wph, ph.tap_offsets.data(), num_taps, s.o,
                                       exponent, acc);
      for (int r = 0; r < rows; ++r) {
        if (cn == cb)
          std::memcpy(dx + pix[r] * s.c + c0, acc + r * NR * V::kLanes, sizeof(T) * NR * V::kLanes);
        else
          std::memcpy(dx + pix[r] * s.c + c0, acc + r * NR * V::kLanes, sizeof(T) * cn);
      }
    }
  });
}

template <class V>
void input_grad(const ConvShape& s, const typename V::T* x, const typename V::T* w,
                const typename V::T* g, typename V::T q, int rule, typename V::T* dx,
                typename V::T* work, const ParallelFor& parallel) {
  using T = typename V::T;
  const InputGradPlan<V> plan(s);
  T* gpad = work;
  T* wpk = gpad + plan.gpad_size;
  wpk = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(wpk) + 63) & ~uintptr_t(63));
  // The cotangent with a zero border wide enough for every tap of every input pixel.
  parallel_rows(parallel, s.n * plan.hg, [&](int64_t item) {
    const int64_t nn = item / plan.hg, gr = item % plan.hg;
    const int64_t row = gr + plan.rlo;
    T* dst = gpad + (nn * plan.hg + gr) * plan.wg * s.o;
    if (row < 0 || row >= s.ho) {
      std::memset(dst, 0, sizeof(T) * plan.wg * s.o);
      return;
    }
    for (int64_t gc = 0; gc < plan.wg; ++gc) {
      const int64_t col = gc + plan.clo;
      if (col < 0 || col >= s.wo) std::memset(dst + gc * s.o, 0, sizeof(T) * s.o);
      else std::memcpy(dst + gc * s.o, g + ((nn * s.ho + row) * s.wo + col) * s.o, sizeof(T) * s.o);
    }
  });
  // Filters packed per block of input channels, taps phase by phase, (out, in) inside, zero
  // past Cin.
  std::vector<int64_t> tap_order;
  int64_t items = 0;
  input_phases<V>(s, plan, 1, &tap_order, &items);
  const int64_t taps = s.kh * s.kw, cb = plan.cb;
  parallel(plan.ncb * taps, [&](int64_t item) {
    const int64_t blk = item / taps, slot = item % taps, t = tap_order[slot];
    T* dst = wpk + (blk * taps + slot) * s.o * cb;
    const int64_t c0 = blk * cb, cn = std::min(cb, s.c - c0);
    for (int64_t o = 0; o < s.o; ++o) {
      for (int64_t c = 0; c < cn; ++c) dst[o * cb + c] = w[(t * s.c + c0 + c) * s.o + o];
      for (int64_t c = cn; c < cb; ++c) dst[o * cb + c] = 0;
    }
  });
#define ADDERJAX_IG(NR, RULE) \
  input_grad_blocks<V, input_grad_mr<V>(NR), NR, RULE>(s, plan, x, gpad, wpk, q, dx, parallel)
#define ADDERJAX_IG_RULES(NR)                        \
  switch (rule) {                                    \
    case kHardTanh: ADDERJAX_IG(NR, kHardTanh); break; \
    case kSign: ADDERJAX_IG(NR, kSign); break;       \
    case kLinear: ADDERJAX_IG(NR, kLinear); break;   \
    default: ADDERJAX_IG(NR, kLpPow); break;         \
  }
  switch (plan.nr) {
    case 1: ADDERJAX_IG_RULES(1); break;
    case 2: ADDERJAX_IG_RULES(2); break;
    case 3: ADDERJAX_IG_RULES(3); break;
    default: ADDERJAX_IG_RULES(4); break;
  }
#undef ADDERJAX_IG_RULES
#undef ADDERJAX_IG
}

// ---------------------------------------------------------------------------------------------
// The inner loops' own rate: the register tile a layer's channel count selects, run on data
// that stays in L1, on `threads` threads at once. Terms (one |x - w| or one f(w - x) * g) per
// second over all threads: the instruction bound the benchmarks compare the kernels against.

template <class V, int MR, int NR>
double loop_rate_tile(bool input_grad, int threads, double seconds) {
  using T = typename V::T;
  constexpr int64_t kLen = 256;  // elements of a run (forward) or outputs (input gradient)
  auto body = [&](double* rate) {
    std::vector<T> xbuf(MR * NR * V::kLanes + kLen * MR, T(0.25));
    std::vector<T> wbuf(kLen * NR * V::kLanes, T(0.5));
    alignas(64) T out[MR * NR * V::kLanes];
    const T* rows[MR];
    for (int r = 0; r < MR; ++r) rows[r] = xbuf.data() + r * kLen;
    const int64_t zero = 0;
    const double terms = double(MR) * NR * V::kLanes * kLen;
    int64_t calls = 0;
    T sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
      for (int i = 0; i < 64; ++i) {
        if (input_grad)
          input_grad_tile<V, MR, NR, kHardTanh>(rows, xbuf.data(), wbuf.data(), &zero, 1, kLen,
                                                T(1), out);
        else
          forward_tile<V, MR, NR, kMinIdentity>(rows, wbuf.data(), &zero, 1, kLen, T(1), out);
        sink += out[0];
        // The tiles read memory that nothing changes: without this barrier the compiler
        // hoists them out of the loop.
        asm volatile("" : : "r"(xbuf.data()), "r"(wbuf.data()), "r"(out) : "memory");
      }
      calls += 64;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    *rate = terms * calls / elapsed + 0 * double(sink);
  };
  std::vector<double> rates(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(body, &rates[t]);
  for (auto& t : pool) t.join();
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

template <class V>
double loop_rate(bool input_grad, int64_t channels, int threads, double seconds) {
  const int nr = vectors_per_block<V>(channels);
  if (input_grad) {
    switch (nr) {
      case 1: return loop_rate_tile<V, input_grad_mr<V>(1), 1>(true, threads, seconds);
      case 2: return loop_rate_tile<V, input_grad_mr<V>(2), 2>(true, threads, seconds);
      case 3: return loop_rate_tile<V, input_grad_mr<V>(3), 3>(true, threads, seconds);
      default: return loop_rate_tile<V, input_grad_mr<V>(4), 4>(true, threads, seconds);
    }
  }
  switch (nr) {
    case 1: return loop_rate_tile<V, forward_mr<V>(1), 1>(false, threads, seconds);
    case 2: return loop_rate_tile<V, forward_mr<V>(2), 2>(false, threads, seconds);
    case 3: return loop_rate_tile<V, forward_mr<V>(3), 3>(false, threads, seconds);
    default: return loop_rate_tile<V, forward_mr<V>(4), 4>(false, threads, seconds);
  }
}

}  // namespace
}  // namespace adderjax_cpu
