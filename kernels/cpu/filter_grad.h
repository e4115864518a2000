// The correlation part of the adder op's full-precision filter gradient on CPU:
//
//   corr[t, c, o] = sum_{n, q} x[n, q * s + off t - pad, c] * g[n, q, o]
//
// (a convolution's filter gradient; dw = corr - w * sum g, the subtraction done by the caller).
// A register tile is RC input channels x NV vectors of output channels: per output pixel NV
// cotangent vectors are loaded and every input value of the RC channels is broadcast into
// RC * NV FMAs. No patches are built: a tap reads x where it lands, padding is skipped by each
// tap's range of valid output rows and columns.
//
// Work items are (chunk of output rows, block of output channels). Inside an item the rows go
// in sub-blocks whose cotangent fits L1; for each sub-block every tap and every channel tile
// adds its pixels to the item's own partial sums in the workspace. The chunks' partials are
// then summed in chunk order. Chunks and tiles depend on the shapes only, so the result is
// bitwise the same for any number of threads.
//
// Included by adder_kernels.h's users after it (isa_kernels.inc); uses its helpers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "conv_shape.h"
#include "simd.h"

namespace adderjax_cpu {
namespace {

// Channel tiles the kernels are compiled for, and the largest for NV vectors of outputs (the
// accumulators, the NV cotangent vectors and a broadcast within the register file).
constexpr int kCorrTiles[] = {1, 2, 3, 4, 5, 6, 8, 12, 16, 24};
template <class V>
constexpr int corr_rc_max(int nv) {
  if (V::kRegisters >= 32) return nv == 1 ? 24 : nv == 2 ? 12 : nv == 3 ? 8 : 6;
  return nv == 1 ? 12 : nv == 2 ? 5 : nv == 3 ? 3 : 2;
}

// Pixels of one sub-block's cotangent per block of output channels: 16 KiB of float32.
constexpr int64_t kCorrSubBlockValues = 4096;
// Output pixels a chunk aims at, and the most bytes all chunks' partial sums may take.
constexpr int64_t kCorrChunkPixels = 1024;
constexpr int64_t kCorrPartialBytes = int64_t(16) << 20;

template <class V>
struct FilterCorrPlan {
  using T = typename V::T;
  int nv, rc;
  int64_t ob, nob;           // output channels per block, blocks
  int64_t ncb;               // channel tiles; the last starts at c - rc (it may overlap)
  int64_t og;                // the cotangent's row length as the kernel reads it
  int64_t rows;              // output rows, n * ho
  int64_t rows_per_chunk, chunks, rows_per_sub;
  int64_t tile_values;       // rc * ob
  int64_t gpad_size, partial_size;

  explicit FilterCorrPlan(const ConvShape& s) {
    nv = vectors_per_block<V>(s.o);
    ob = int64_t(nv) * V::kLanes;
    nob = ceil_div(s.o, ob);
    og = s.o % ob ? nob * ob : s.o;
    // The channel tile with the least cost, ncb * (rc + 1) (the +1: each tile reloads the
    // cotangent), larger on ties; never wider than c, so every broadcast reads x's own row.
    rc = 1;
    int64_t best = -1;
    for (int t : kCorrTiles) {
      if (t > corr_rc_max<V>(nv) || t > s.c) continue;
      const int64_t cost = ceil_div(s.c, t) * (t + 1);
      if (best < 0 || cost <= best) {
        best = cost;
        rc = t;
      }
    }
    ncb = ceil_div(s.c, rc);
    tile_values = int64_t(rc) * ob;
    rows = s.n * s.ho;
    const int64_t per_chunk_partial = s.kh * s.kw * nob * ncb * tile_values;
    const int64_t x_bytes = int64_t(sizeof(T)) * s.n * s.h * s.w * s.c;
    const int64_t budget = std::min<int64_t>(kCorrPartialBytes, x_bytes / 4);
    const int64_t max_chunks =
        std::max<int64_t>(1, budget / (int64_t(sizeof(T)) * per_chunk_partial));
    rows_per_chunk = std::max<int64_t>(1, ceil_div(kCorrChunkPixels, s.wo));
    rows_per_chunk = std::max(rows_per_chunk, ceil_div(rows, max_chunks));
    chunks = ceil_div(rows, rows_per_chunk);
    rows_per_sub = std::max<int64_t>(1, kCorrSubBlockValues / ob / s.wo);
    gpad_size = og != s.o ? rows * s.wo * og : 0;
    partial_size = chunks * per_chunk_partial;
  }
  int64_t workspace() const { return gpad_size + partial_size + 16; }
  // Where channel c's sums sit: its tile and its row in the tile.
  int64_t tile_of(int64_t c) const { return std::min(c / rc, ncb - 1); }
  int64_t tile_start(int64_t tile, int64_t channels) const {
    return std::min(tile * rc, channels - rc);
  }
};

// A run of consecutive output pixels of one output row that one tap reads inside x.
template <class T>
struct CorrRun {
  const T* x;  // the first pixel's input value at channel 0
  const T* g;  // its cotangent at the block's first output channel
  int64_t len;
};

// acc[r][k] (+)= sum over runs and pixels of x[c0 + r] * g[k].
template <class V, int RC, int NV>
inline void corr_tile(const CorrRun<typename V::T>* runs, int64_t num_runs, int64_t xstep,
                      int64_t gstep, int64_t c0, bool fresh, typename V::T* sums) {
  using reg = typename V::reg;
  using T = typename V::T;
  reg acc[RC][NV];
#pragma GCC unroll 24
  for (int r = 0; r < RC; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k)
      acc[r][k] = fresh ? V::zero() : V::load(sums + (r * NV + k) * V::kLanes);
  for (int64_t run = 0; run < num_runs; ++run) {
    const T* xp = runs[run].x + c0;
    const T* gp = runs[run].g;
    for (int64_t e = runs[run].len; e > 0; --e) {
      reg gv[NV];
#pragma GCC unroll 4
      for (int k = 0; k < NV; ++k) gv[k] = V::load(gp + k * V::kLanes);
#pragma GCC unroll 24
      for (int r = 0; r < RC; ++r) {
        const reg xb = V::bcast(xp + r);
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) acc[r][k] = V::fmadd(xb, gv[k], acc[r][k]);
      }
      xp += xstep;
      gp += gstep;
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < RC; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k) V::store(sums + (r * NV + k) * V::kLanes, acc[r][k]);
}

template <class V, int RC, int NV>
void filter_corr_blocks(const ConvShape& s, const FilterCorrPlan<V>& plan, const typename V::T* x,
                        const typename V::T* g, typename V::T* partial,
                        const ParallelFor& parallel) {
  using T = typename V::T;
  const int64_t taps = s.kh * s.kw, ob = plan.ob, tv = plan.tile_values;
  // Output columns [lo, hi) whose tap column j lands inside x.
  std::vector<int64_t> col_lo(s.kw), col_hi(s.kw);
  for (int64_t j = 0; j < s.kw; ++j) {
    col_lo[j] = std::max<int64_t>(0, ceil_div(std::max<int64_t>(0, s.pl - j), s.sw));
    col_hi[j] = std::min<int64_t>(s.wo, floor_div(s.w - 1 + s.pl - j, s.sw) + 1);
  }
  const int64_t xstep = s.sw * s.c;
  parallel(plan.chunks * plan.nob, [&](int64_t item) {
    const int64_t chunk = item / plan.nob, blk = item % plan.nob;
    const int64_t r0 = chunk * plan.rows_per_chunk;
    const int64_t r1 = std::min(plan.rows, r0 + plan.rows_per_chunk);
    // This item's sums: (tap, channel tile, rc, ob) inside (chunk, block).
    T* sums = partial + (chunk * plan.nob + blk) * taps * plan.ncb * tv;
    std::vector<CorrRun<T>> runs(plan.rows_per_sub);
    for (int64_t sub = r0; sub < r1; sub += plan.rows_per_sub) {
      const int64_t sub_end = std::min(r1, sub + plan.rows_per_sub);
      const bool fresh = sub == r0;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t i = t / s.kw, j = t % s.kw;
        int64_t num_runs = 0;
        if (col_hi[j] > col_lo[j]) {
          for (int64_t row = sub; row < sub_end; ++row) {
            const int64_t nn = row / s.ho, qh = row % s.ho;
            const int64_t ih = qh * s.sh + i - s.pt;
            if (ih < 0 || ih >= s.h) continue;
            const int64_t iw = col_lo[j] * s.sw + j - s.pl;
            runs[num_runs++] = {x + ((nn * s.h + ih) * s.w + iw) * s.c,
                                g + (row * s.wo + col_lo[j]) * plan.og + blk * ob,
                                col_hi[j] - col_lo[j]};
          }
        }
        T* tap_sums = sums + t * plan.ncb * tv;
        for (int64_t tile = 0; tile < plan.ncb; ++tile)
          corr_tile<V, RC, NV>(runs.data(), num_runs, xstep, plan.og,
                               plan.tile_start(tile, s.c), fresh, tap_sums + tile * tv);
      }
    }
  });
}

// corr (kh, kw, c, o) from x (n, h, w, c) and g (n, ho, wo, o).
template <class V>
void filter_corr(const ConvShape& s, const typename V::T* x, const typename V::T* g,
                 typename V::T* corr, typename V::T* work, const ParallelFor& parallel) {
  using T = typename V::T;
  const FilterCorrPlan<V> plan(s);
  T* gpad = work;
  T* partial = gpad + plan.gpad_size;
  partial = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(partial) + 63) & ~uintptr_t(63));
  const T* gsrc = g;
  if (plan.gpad_size) {  // rows padded to whole blocks of output channels, zeros past o
    parallel_rows(parallel, plan.rows, [&](int64_t row) {
      for (int64_t q = row * s.wo; q < (row + 1) * s.wo; ++q) {
        std::memcpy(gpad + q * plan.og, g + q * s.o, sizeof(T) * s.o);
        std::memset(gpad + q * plan.og + s.o, 0, sizeof(T) * (plan.og - s.o));
      }
    });
    gsrc = gpad;
  }
#define ADDERJAX_CORR(RC, NV) \
  filter_corr_blocks<V, RC, NV>(s, plan, x, gsrc, partial, parallel)
#define ADDERJAX_CORR_TILE(RC)                                  \
  case RC:                                                      \
    if constexpr (RC <= corr_rc_max<V>(1)) {                    \
      switch (plan.nv) {                                        \
        case 1: ADDERJAX_CORR(RC, 1); break;                    \
        case 2: if constexpr (RC <= corr_rc_max<V>(2)) ADDERJAX_CORR(RC, 2); break; \
        case 3: if constexpr (RC <= corr_rc_max<V>(3)) ADDERJAX_CORR(RC, 3); break; \
        default: if constexpr (RC <= corr_rc_max<V>(4)) ADDERJAX_CORR(RC, 4); break; \
      }                                                         \
    }                                                           \
    break;
  switch (plan.rc) {
    ADDERJAX_CORR_TILE(1)
    ADDERJAX_CORR_TILE(2)
    ADDERJAX_CORR_TILE(3)
    ADDERJAX_CORR_TILE(4)
    ADDERJAX_CORR_TILE(5)
    ADDERJAX_CORR_TILE(6)
    ADDERJAX_CORR_TILE(8)
    ADDERJAX_CORR_TILE(12)
    ADDERJAX_CORR_TILE(16)
    ADDERJAX_CORR_TILE(24)
    default: break;
  }
#undef ADDERJAX_CORR_TILE
#undef ADDERJAX_CORR
  // corr[t, c, o]: the chunks' sums in chunk order, one (tap, channel) row per item.
  const int64_t taps = s.kh * s.kw, tv = plan.tile_values, ob = plan.ob;
  const int64_t chunk_stride = plan.nob * taps * plan.ncb * tv;
  parallel_rows(parallel, taps * s.c, [&](int64_t tc) {
    const int64_t t = tc / s.c, c = tc % s.c;
    const int64_t tile = plan.tile_of(c), r = c - plan.tile_start(tile, s.c);
    T* out = corr + tc * s.o;
    for (int64_t blk = 0; blk < plan.nob; ++blk) {
      const int64_t o0 = blk * ob, on = std::min(ob, s.o - o0);
      const T* src = partial + ((blk * taps + t) * plan.ncb + tile) * tv + r * ob;
      for (int64_t o = 0; o < on; ++o) out[o0 + o] = src[o];
      for (int64_t chunk = 1; chunk < plan.chunks; ++chunk) {
        const T* part = src + chunk * chunk_stride;
        for (int64_t o = 0; o < on; ++o) out[o0 + o] += part[o];
      }
    }
  });
}

}  // namespace
}  // namespace adderjax_cpu
