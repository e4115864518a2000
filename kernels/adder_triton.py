"""Pallas Triton kernels of the adder op: forward, input gradient and filter gradient.

All three work on the phase-flat layout of `kernels.layout`, where tap ``t`` of output row
``m`` is input row ``m + offset[t]`` of phase ``phase[t]``: a tile of ``block_m`` pixels
under one tap is one contiguous (block_m, channels) block, loaded without a gather.

* forward: ``y[m, o] = -sum_{t, c} |x[phase t][m + off t, c] - w[t, c, o]| ** p``. Grid over
  (pixel tiles, output-channel tiles); a loop over taps, and inside it over input-channel
  blocks, makes ``block_c`` rank-1 updates ``acc[o, m] += |x[c, m] - w[c, o]| ** p`` from a
  row of the input (stored channel-major, so the row of pixels is contiguous) and a row of
  the filters, into a (block_o, block_m) float32 accumulator (float64 for float64 inputs),
  written out channel-major. No reduction crosses threads: at p = 1 a term is two FADDs (the
  second with the |.| operand modifier).
* input gradient: for one input phase, ``dx[r, c] = sum_{t in phase, o} g[r - off t, o] *
  f(w[t, c, o] - x[r, c])`` with f the HardTanh clip or the l_p term. Grid over (input-pixel
  tiles, input-channel tiles); the input tile stays in registers, and a loop over (tap,
  output-channel block) makes ``block_o`` rank-1 updates from a column of the cotangent
  (stored channel-major, with ``max_offset`` zero rows in front since it is read at negative
  offsets) and a row of the filters (stored (tap, out, in)). HardTanh is FADD, two FMNMX and
  an FFMA a term. Each phase is its own call (its own taps).
* filter gradient: ``dw[t, c, o] = sum_m g[m, o] * (x_t[m, c] - w[t, c, o]) = (x_t^T g)[c, o]
  - w[t, c, o] * sum_m g[m, o]``: the kernel is the matrix product on ``tl.dot`` (IEEE
  float32, no TF32), and ``sum_m g`` (the same for every tap) is one XLA reduction outside it.
  The long pixel reduction is cut into ``splits`` slices, one grid axis; each slice writes
  its partial product to its own output and XLA sums them in a fixed order. No atomics, so
  the result is bitwise reproducible.

Entry points take NHWC inputs and HWIO filters, do the layout in XLA around the kernel,
take ``block_sizes`` (`BlockSizes`, default `BlockSizes.get_default`: the tile that the
static SASS model ranks fastest for the layer) and ``interpret`` (run the kernel in Pallas
interpret mode, on any backend), all keyword-only.

Roofline on paper for an H100 SXM (not measured: no GPU has been available)
------------------------------------------------------------------------------
Tensor cores cannot compute ``|x - w|``: the adder terms run on the FP32 CUDA cores,
132 SMs x 128 lanes x 1.98 GHz = 33.5 T instructions/s (HBM3: 3.35 TB/s). Instructions
per term: forward ``acc + |x - w|`` 2 (FADD, then FADD with an |.| operand modifier), so
16.7 T terms/s against the 247 T multiply-adds/s (495 TFLOP/s) of the TF32 tensor cores
that a convolution gets: a ~15x handicap for the same layer; input gradient
``acc + g * clip(w - x)`` 4 (FADD, two FMNMX, FFMA); filter gradient ``x^T g`` 1 FFMA
(IEEE fp32 ``tl.dot``, no tensor cores).
Bytes: each kernel reads its operands once and writes its output, plus one read and write
of every layout copy (`kernels.layout`). Terms include the grid points that the phase-flat
layout computes and discards. `benchmarks/kernels.py --roofline` prints this table; on a
GPU, `benchmarks/kernels.py` prints the measured times beside it.

=============================  =======  ==========  ==========  ==========  ========
shape (batch)                  G terms  fwd us      dx us       dw us       f+b us
=============================  =======  ==========  ==========  ==========  ========
r20 32x32 16->16 3x3 (128)      0.34     20 comp.    41 comp.    16 mem.       77
r20 32x32 16->32 3x3 s2 (128)   0.17     12 mem.     20 comp.    12 mem.       45
r20 32x32 16->32 1x1 s2 (128)   0.02     11 mem.     16 mem.     11 mem.       39
r20 16x16 32->32 3x3 (128)      0.38     23 comp.    46 comp.    11 comp.      80
r20 16x16 32->64 3x3 s2 (128)   0.19     11 comp.    23 comp.     7 mem.       41
r20 16x16 32->64 1x1 s2 (128)   0.02      6 mem.      8 mem.      6 mem.       19
r20 8x8 64->64 3x3 (128)        0.47     28 comp.    56 comp.    14 comp.      99
r50 56x56 64->64 1x1 (32)       0.41     46 mem.     61 mem.     46 mem.      153
r50 56x56 64->64 3x3 (32)       3.97    237 comp.   474 comp.   119 comp.     830
r50 56x56 64->256 1x1 (32)      1.64    115 mem.    197 comp.   115 mem.      427
r50 28x28 128->128 3x3 (32)     4.25    254 comp.   508 comp.   127 comp.     889
r50 14x14 256->256 3x3 (32)     4.83    289 comp.   578 comp.   144 comp.    1011
r50 7x7 512->512 3x3 (32)       6.12    366 comp.   731 comp.   183 comp.    1280
r50 14x14 1024->256 1x1 (32)    1.64     98 comp.   197 comp.    49 comp.     344
=============================  =======  ==========  ==========  ==========  ========

So the 3x3 layers are compute bound (a ResNet-50 3x3 layer at batch 32 needs >= 0.24 ms
forward where a TF32 convolution needs 0.016 ms at its peak), and the 1x1 and stride-2 layers
sit near the memory roof, where the layout copies are a large part of the bytes.
Triton kernels on CUDA-core workloads typically reach 30-60% of such a peak; a measured
forward at 2-3x the table is in line, and 10x would point at register spills or a poor
tile choice (`BlockSizes`).

Machine code (sm_90, compiled offline; `python benchmarks/kernels.py --sass`)
----------------------------------------------------------------------------
Hot-loop SASS instructions per term with the default tiles at batch 32, against the ideal
above (docs/kernels.md has every layer, the whole-kernel counts and the estimates):

=========================  =====  ====================  ====================
kernel                     ideal  ResNet-50 3x3 layers  ResNet-20 3x3 layers
=========================  =====  ====================  ====================
forward, p = 1             2      2.26-2.39             2.53-2.96
input gradient, HardTanh   4      4.26-4.45             4.69-4.92
filter gradient            1      1.15-1.17             1.17-1.56
=========================  =====  ====================  ====================

No kernel spills. What keeps the small ResNet-20 layers above 2.5: per rank-1 step a thread
loads its pixels of the input row one by one (they are ``threads`` apart in Triton's default
layout, so each needs its own 64-bit address) and the tiles that fill 132 SMs on such layers
give it only 16 terms a step to spread that over.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels import layout as layout_lib
from kernels.block_sizes import BlockSizes, launch

__all__ = ["filter_grad", "forward", "input_grad"]

# The input-gradient rules: HardTanh-clipped (CVPR eq. 7) or the l_p one (journal eq. 27).
# Defined here, the lowest layer; `adderjax.geometry` re-exports them for the library.
InputGrad = Literal["hardtanh", "lp"]
INPUT_GRADS: tuple[str, ...] = get_args(InputGrad)


def _acc_dtype(*dtypes):
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _compiler_params(block_sizes: BlockSizes):
    # In jax 0.10 a pallas_call on GPU without these goes to Mosaic GPU, not Triton.
    return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def _check_index_range(**operands):
    # Pallas Triton addresses a ref with int32 element offsets.
    for name, a in operands.items():
        if a.size >= 2**31:
            raise ValueError(
                f"{name} of the kernel layout has {a.size} elements, past int32 indexing "
                f"({a.shape=}); split the batch"
            )


def _tap_phase_offset(t, layout: layout_lib.PhaseLayout):
    """`PhaseLayout.tap_phase` and `tap_offset` on a traced tap index."""
    (sh, sw), kw, wq = layout.strides, layout.kernel_hw[1], layout.phase_hw[1]
    i, j = _divmod(t, kw)
    (i_q, i_r), (j_q, j_r) = _divmod(i, sh), _divmod(j, sw)
    return i_r * sw + j_r, i_q * wq + j_q


def _divmod(a, n: int):
    """divmod of a non-negative traced int by a static one, as truncating lax.div / lax.rem.

    jnp's floor `%` fails to lower to Triton in jax 0.10 (an i32 meets an i1 in its
    sign fix-up), and a non-negative index needs no fix-up.
    """
    if isinstance(a, int):
        return divmod(a, n)
    if n == 1:
        return a, 0
    n = jnp.asarray(n, a.dtype)
    return lax.div(a, n), lax.rem(a, n)


def _p_operand(p_value, dtype):
    return jnp.asarray(p_value, dtype).reshape(1)


def _abs_pow(d, p, p_ref):
    """|d| ** p, specialised for p = 1 and 2; p None reads it from p_ref."""
    if p == 1.0:
        return _abs(d)
    if p == 2.0:
        return d * d
    return jnp.abs(d) ** (p_ref[0] if p is None else p)


def _abs(d):
    """|d| by clearing the sign bit (float32).

    ``jnp.abs`` lowers to libdevice's fabs, which Triton resolves to ``abs.ftz.f32`` (its
    libdevice is linked with flush-to-zero on); ptxas cannot fold a flushing abs into the
    non-flushing FADD that accumulates it, so every term paid a third FADD. A cleared sign
    bit is LLVM's plain fabs, which ptxas folds into the FADD as its |.| operand modifier:
    ``acc + |x - w|`` is two instructions, as on paper.
    """
    if d.dtype != jnp.float32:
        return jnp.abs(d)
    bits = lax.bitcast_convert_type(d, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _input_term(d, p, p_ref, kind):
    """f(w - x): the HardTanh clip or the l_p term sign(d) |d| ** (p - 1)."""
    if kind == "hardtanh":
        return jnp.clip(d, -1.0, 1.0)
    if p == 1.0:
        return jnp.sign(d)
    if p == 2.0:
        return d
    q = (p_ref[0] if p is None else p) - 1.0
    return jnp.sign(d) * jnp.abs(d) ** q


# --------------------------------------------------------------------------- forward


def _forward_kernel(x_ref, w_ref, *refs, layout, p, num_c_blocks, acc_dtype):
    p_ref, y_ref = refs if p is None else (None, *refs)
    block_o, block_m = y_ref.shape
    block_c = w_ref.shape[1] // num_c_blocks
    m0 = pl.program_id(0) * block_m

    def tap_body(t, acc):
        phase, offset = _tap_phase_offset(t, layout)

        def body(c, acc):
            c0 = c * block_c
            for j in range(block_c):
                # The accumulator is (output channels, pixels): Triton spreads its threads
                # over the last axis, so each thread owns a few pixels and *every* output
                # channel of the tile: it loads its pixels of the input row (contiguous,
                # channel-major) and the whole filter row (vector loads of the same
                # addresses in every thread), and each value loaded serves block_o (or
                # pixels-per-thread) terms.
                xs = x_ref[phase, pl.ds(c0 + j, 1), pl.ds(m0 + offset, block_m)]
                ws = w_ref[t, pl.ds(c0 + j, 1), :].astype(acc_dtype).T
                acc = acc + _abs_pow(ws - xs.astype(acc_dtype), p, p_ref)
            return acc

        # The channel loop inside the tap loop: its addresses step by a constant.
        return lax.fori_loop(0, num_c_blocks, body, acc)

    acc = jnp.zeros((block_o, block_m), acc_dtype)
    acc = lax.fori_loop(0, layout.num_taps, tap_body, acc)
    y_ref[...] = (-acc).astype(y_ref.dtype)


def forward(x, w, *, strides, pads, p=1.0, p_value=None, block_sizes=None, interpret=False):
    """``y[n, h, w, o] = -sum_{i, j, c} |xpad[n, h*s + i, w*s + j, c] - w[i, j, c, o]| ** p``.

    Args:
      x: (N, H, W, Cin). w: (kh, kw, Cin, Cout).
      strides: (sh, sw). pads: ((top, bottom), (left, right)), as `lax.conv_general_dilated`.
      p: the norm as a Python float, or None to read it at run time from ``p_value``
        (a traced p: one compiled kernel for the whole l_p schedule).
      block_sizes: `BlockSizes`; None for `BlockSizes.get_default("forward", ...)`.
      interpret: run in Pallas interpret mode.

    Returns:
      (N, Ho, Wo, Cout) in float32 (float64 for float64 inputs).
    """
    layout = layout_lib.checked_layout(x, w, strides, pads, p, p_value)
    cin, cout = w.shape[2:]
    bs = block_sizes or BlockSizes.get_default(
        "forward", in_channels=cin, out_channels=cout, rows=layout.rows, taps=layout.num_taps
    )
    plan = launch(
        "forward", bs, in_channels=cin, out_channels=cout, rows=layout.rows, taps=layout.num_taps
    )
    acc_dtype = _acc_dtype(x.dtype, w.dtype)
    cp, op, rows = plan.channels_in, plan.channels_out, plan.rows
    # Zero channels add |0 - 0| ** p = 0; extra rows keep every shifted block in bounds.
    xph = layout_lib.split_input(x, layout, rows + layout.max_offset, cp).transpose(0, 2, 1)
    wt = jnp.pad(w.reshape(layout.num_taps, cin, cout), ((0, 0), (0, cp - cin), (0, op - cout)))
    _check_index_range(input=xph, filters=wt)
    operands = [xph, wt]
    in_specs = [
        pl.BlockSpec(xph.shape, lambda m, o: (0, 0, 0)),
        pl.BlockSpec((layout.num_taps, cp, bs.block_o), lambda m, o: (0, 0, o)),
    ]
    if p is None:
        operands.append(_p_operand(p_value, acc_dtype))
        in_specs.append(pl.BlockSpec((1,), lambda m, o: (0,)))
    kernel = functools.partial(
        _forward_kernel,
        layout=layout,
        p=p,
        num_c_blocks=cp // bs.block_c,
        acc_dtype=acc_dtype,
    )
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((op, rows), acc_dtype),
        grid=(rows // bs.block_m, op // bs.block_o),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bs.block_o, bs.block_m), lambda m, o: (o, m)),
        compiler_params=_compiler_params(bs),
        interpret=interpret,
        name="adder_forward",
    )(*operands)
    return layout_lib.gather_output(y.T, layout, cout)


# ------------------------------------------------------------------- input gradient


def _input_grad_kernel(
    x_ref, w_ref, g_ref, *refs, layout, phase, front, p, kind, num_o_blocks, acc_dtype
):
    p_ref, dx_ref = refs if p is None else (None, *refs)
    block_m, block_c = dx_ref.shape
    block_o = w_ref.shape[1] // num_o_blocks
    (sh, sw), (kh, kw), wq = layout.strides, layout.kernel_hw, layout.phase_hw[1]
    a, b = divmod(phase, sw)
    taps_j = -(-(kw - b) // sw)
    r0 = pl.program_id(0) * block_m
    # The input tile is the same for every tap and output channel: registers, loaded once.
    xs = x_ref[...].astype(acc_dtype)

    def body(k, acc):
        # Taps of this phase: i = a + sh * ti, j = b + sw * tj, at row offset ti * Wq + tj.
        q, o = _divmod(k, num_o_blocks)
        o0 = o * block_o
        ti, tj = _divmod(q, taps_j)
        t = (a + sh * ti) * kw + b + sw * tj
        rows = pl.ds(r0 + front - ti * wq - tj, block_m)
        # Rank-1 updates over this block's output channels: a column of the cotangent and
        # a row of the filters per channel, no reduction across threads.
        for j in range(block_o):
            gs = g_ref[o0 + j, rows].astype(acc_dtype)
            ws = w_ref[t, o0 + j, :].astype(acc_dtype)
            acc = acc + gs[:, None] * _input_term(ws[None, :] - xs, p, p_ref, kind)
        return acc

    taps = -(-(kh - a) // sh) * taps_j
    acc = jnp.zeros((block_m, block_c), acc_dtype)
    acc = lax.fori_loop(0, taps * num_o_blocks, body, acc)
    dx_ref[...] = acc.astype(dx_ref.dtype)


def input_grad(
    x,
    w,
    g,
    *,
    strides,
    pads,
    input_grad="hardtanh",
    p=1.0,
    p_value=None,
    block_sizes=None,
    interpret=False,
):
    """``dx[n, h, w, c] = sum g[n, ho, wo, o] * f(w[i, j, c, o] - x[n, h, w, c])`` over the taps
    ``(ho*s + i, wo*s + j) == (h, w)`` of the padded input, with f ``clip(., -1, 1)``
    (input_grad="hardtanh") or ``sign(.) |.| ** (p - 1)`` ("lp").

    Args:
      x, w, strides, pads, p, p_value, block_sizes, interpret: as in `forward`.
      g: the cotangent of the forward output, (N, Ho, Wo, Cout).
      input_grad: "hardtanh" or "lp".

    Returns:
      (N, H, W, Cin) in float32 (float64 for float64 inputs).
    """
    layout = layout_lib.checked_layout(x, w, strides, pads, p, p_value)
    if input_grad not in INPUT_GRADS:
        raise ValueError(f"input_grad must be one of {INPUT_GRADS}, got {input_grad!r}")
    if g.shape != (layout.batch, *layout.out_hw, w.shape[3]):
        raise ValueError(
            f"g must be the output's shape {(layout.batch, *layout.out_hw, w.shape[3])}, "
            f"got {g.shape=}"
        )
    cin, cout = w.shape[2:]
    bs = block_sizes or BlockSizes.get_default(
        "input_grad", in_channels=cin, out_channels=cout, rows=layout.rows, taps=layout.num_taps
    )
    plan = launch(
        "input_grad", bs, in_channels=cin, out_channels=cout, rows=layout.rows, taps=layout.num_taps
    )
    acc_dtype = _acc_dtype(x.dtype, w.dtype, g.dtype)
    cp, op, rows = plan.channels_in, plan.channels_out, plan.rows
    front = layout.max_offset
    xph = layout_lib.split_input(x, layout, rows, cp)
    # Zero output channels (g = 0) and zero grid points outside the real output add nothing.
    gf = layout_lib.spread_output(g, layout, rows, op, front=front).T
    wt = jnp.pad(w.reshape(layout.num_taps, cin, cout), ((0, 0), (0, cp - cin), (0, op - cout)))
    wt = wt.transpose(0, 2, 1)
    _check_index_range(input=xph, filters=wt, cotangent=gf)
    phases = []
    for phase in range(layout.num_phases):
        if not layout.phase_taps(phase):
            # No tap reads this phase (a 1x1 or small kernel with a larger stride).
            phases.append(jnp.zeros((rows, cp), acc_dtype))
            continue
        operands = [xph, wt, gf]
        in_specs = [
            pl.BlockSpec((None, bs.block_m, bs.block_c), lambda m, c, ph=phase: (ph, m, c)),
            pl.BlockSpec((layout.num_taps, op, bs.block_c), lambda m, c: (0, 0, c)),
            pl.BlockSpec(gf.shape, lambda m, c: (0, 0)),
        ]
        if p is None:
            operands.append(_p_operand(p_value, acc_dtype))
            in_specs.append(pl.BlockSpec((1,), lambda m, c: (0,)))
        kernel = functools.partial(
            _input_grad_kernel,
            layout=layout,
            phase=phase,
            front=front,
            p=p,
            kind=input_grad,
            num_o_blocks=op // bs.block_o,
            acc_dtype=acc_dtype,
        )
        phases.append(
            pl.pallas_call(
                kernel,
                out_shape=jax.ShapeDtypeStruct((rows, cp), acc_dtype),
                grid=(rows // bs.block_m, cp // bs.block_c),
                in_specs=in_specs,
                out_specs=pl.BlockSpec((bs.block_m, bs.block_c), lambda m, c: (m, c)),
                compiler_params=_compiler_params(bs),
                interpret=interpret,
                name=f"adder_input_grad_phase{phase}",
            )(*operands)
        )
    return layout_lib.merge_input(jnp.stack(phases), layout, cin)


# ------------------------------------------------------------------ filter gradient


def _filter_grad_kernel(x_ref, g_ref, dw_ref, *, layout, block_m, blocks_per_split, precision):
    block_c, block_o = dw_ref.shape
    acc_dtype = dw_ref.dtype
    c0 = pl.program_id(1) * block_c
    o0 = pl.program_id(2) * block_o
    phase, offset = _tap_phase_offset(pl.program_id(0), layout)
    base = pl.program_id(3) * blocks_per_split * block_m

    def body(k, acc):
        m0 = base + k * block_m
        xs = x_ref[phase, pl.ds(m0 + offset, block_m), pl.ds(c0, block_c)]
        gs = g_ref[pl.ds(m0, block_m), pl.ds(o0, block_o)]
        return acc + plgpu.dot(xs, gs, trans_a=True, precision=precision).astype(acc_dtype)

    acc = jnp.zeros((block_c, block_o), acc_dtype)
    dw_ref[...] = lax.fori_loop(0, blocks_per_split, body, acc)


def filter_grad(x, w, g, *, strides, pads, block_sizes=None, interpret=False):
    """``dw[i, j, c, o] = sum_{n, ho, wo} g[n, ho, wo, o] * (xpad[n, ho*s + i, wo*s + j, c] -
    w[i, j, c, o])``, the full-precision AdderNet filter gradient.

    Args:
      x, w, strides, pads, block_sizes, interpret: as in `forward` (every block size of the
        filter gradient must be >= 16, the smallest ``tl.dot``).
      g: the cotangent of the forward output, (N, Ho, Wo, Cout).

    Returns:
      (kh, kw, Cin, Cout) in float32 (float64 for float64 inputs).
    """
    layout = layout_lib.checked_layout(x, w, strides, pads, 1.0, None)
    if g.shape != (layout.batch, *layout.out_hw, w.shape[3]):
        raise ValueError(
            f"g must be the output's shape {(layout.batch, *layout.out_hw, w.shape[3])}, "
            f"got {g.shape=}"
        )
    cin, cout = w.shape[2:]
    bs = block_sizes or BlockSizes.get_default(
        "filter_grad", in_channels=cin, out_channels=cout, rows=layout.rows, taps=layout.num_taps
    )
    if min(bs.block_m, bs.block_c, bs.block_o) < 16:
        raise ValueError(f"filter_grad needs every block size >= 16 (tl.dot), got {bs}")
    acc_dtype = _acc_dtype(x.dtype, w.dtype, g.dtype)
    # bfloat16/float16 products are exact in float32: keep them on tensor cores. Anything
    # else is multiplied in float32 (or float64) at full IEEE precision, never TF32.
    low = x.dtype == g.dtype and x.dtype in (jnp.bfloat16, jnp.float16)
    dot_dtype, precision = (x.dtype, None) if low else (acc_dtype, lax.Precision.HIGHEST)
    plan = launch(
        "filter_grad", bs, in_channels=cin, out_channels=cout, rows=layout.rows,
        taps=layout.num_taps,
    )  # fmt: skip
    cp, op, rows = plan.channels_in, plan.channels_out, plan.rows
    splits, blocks_per_split = plan.splits, plan.trips
    xph = layout_lib.split_input(x.astype(dot_dtype), layout, rows + layout.max_offset, cp)
    gf = layout_lib.spread_output(g.astype(dot_dtype), layout, rows, op)
    _check_index_range(input=xph, cotangent=gf)
    kernel = functools.partial(
        _filter_grad_kernel,
        layout=layout,
        block_m=bs.block_m,
        blocks_per_split=blocks_per_split,
        precision=precision,
    )
    partial_dw = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((splits, layout.num_taps, cp, op), acc_dtype),
        grid=(layout.num_taps, cp // bs.block_c, op // bs.block_o, splits),
        in_specs=[
            pl.BlockSpec(xph.shape, lambda t, c, o, s: (0, 0, 0)),
            pl.BlockSpec(gf.shape, lambda t, c, o, s: (0, 0)),
        ],
        out_specs=pl.BlockSpec(
            (None, None, bs.block_c, bs.block_o), lambda t, c, o, s: (s, t, c, o)
        ),
        compiler_params=_compiler_params(bs),
        interpret=interpret,
        name="adder_filter_grad",
    )(xph, gf)
    # sum_m g[m, o] is the same for every tap: one XLA reduction, not one per tile.
    gsum = jnp.sum(g.astype(acc_dtype), axis=(0, 1, 2))
    xtg = jnp.sum(partial_dw, axis=0)[:, :cin, :cout].reshape(w.shape)
    return xtg - w.astype(acc_dtype) * gsum[None, None, None, :]
