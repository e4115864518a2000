"""Pallas TPU (Mosaic) kernels of the adder op: the forward and the input gradient.

The TPU's vector unit works on (8, 128) float32 vregs and has no instruction for
``|x - w|`` against a matrix unit that does multiply-adds only, so the terms run on the VPU,
with the pixels on sublanes and lanes and each filter value a scalar:

* layout: the patches in XLA, transposed, ``cols[k, m] = xpad[n, h*s + i, w*s + j, c]`` with
  ``k = (i * kw + j) * Cin + c`` and ``m = (n * Ho + h) * Wo + w``, stored (K, M / 128, 128).
  A block of ``rows`` x 128 pixels of one patch entry is then ``rows / 8`` whole vregs,
  loaded without a shift. (The phase-flat layout of `kernels.layout` reads tap ``t`` at a
  row offset, which on TPU is a lane rotate per vreg and per tap; the patches cost
  ``kh * kw`` times the input in HBM instead, a transient XLA buffer; the kernels stay far
  from memory bound, as each patch value loaded serves a block of filters, 3 VALU ops each:
  `benchmarks/kernels.py --tpu` prints the HBM time beside the bundles' time.)
* forward: ``acc[o, m] += |cols[k, m] - w[k, o]| ** p``: grid (pixel blocks, filter blocks,
  K blocks), K the reduction (last, "arbitrary"); in a block, ``group`` filters at a time
  share each loaded pixel vreg, ``unroll`` patch entries an iteration, the accumulators in
  the output block (VMEM) loaded and stored once an iteration. ``w[k, o]`` comes from
  SMEM; at p = 1 a vreg of terms is vsub, vand (|.| as the sign-bit mask), vadd.
* input gradient: ``dcols[k, m] = sum_o g[o, m] * f(w[k, o] - cols[k, m])`` with f the
  HardTanh clip or the l_p term, then ``dx`` is the transpose of the patch gather (XLA's
  pads and adds: `jax.vjp` of `columns`). Grid (pixel blocks, K blocks, filter blocks), the
  filters the reduction; HardTanh is vsub, vclamps, vmul, vadd a vreg of terms (the VPU
  clamps in one op and has no FMA).

The filter gradient is XLA's (`adderjax.xla.filter_grad`: ``x^T g``, a convolution's
filter gradient, on the MXU at HIGHEST precision, minus ``w * sum(g)``).
Everything computes in float32; float64 inputs are refused (TPUs have no float64 VPU).
Entry points take NHWC inputs and HWIO filters; ``interpret=True`` runs the kernels in
Pallas' TPU interpret mode on any backend (how CI checks them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import layout as layout_lib
from kernels.tpu_blocks import LANES, TpuBlocks

__all__ = ["MIN_PIXELS", "columns", "forward", "input_grad"]

# Output pixels below which `adderjax.pallas` runs XLA's path on TPU instead: one block of
# 8 x 128 pixels. A dense layer at batch 32 fills 1/32 of each vreg here, where XLA puts the
# filters on lanes (`benchmarks/kernels.py --tpu`, the fc rows: XLA 0.6-0.8x the kernel's
# bundles per padded term, 20-30x fewer per useful one).
MIN_PIXELS = 1024


def columns(x, kernel_hw, strides, pads):
    """The transposed patches of an NHWC input: (kh * kw * Cin, N * Ho * Wo)."""
    layout = layout_lib.make_layout(x.shape, kernel_hw, strides, pads)
    (kh, kw), (sh, sw), (ho, wo) = layout.kernel_hw, layout.strides, layout.out_hw
    (top, bottom), (left, right) = layout.pads
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    taps = [
        lax.slice(
            xp,
            (0, i, j, 0),
            (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3]),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    cols = jnp.stack(taps)  # (taps, N, Ho, Wo, C)
    return cols.transpose(0, 4, 1, 2, 3).reshape(kh * kw * x.shape[3], -1)


def _check_args(x, w, strides, pads, p, p_value):
    layout = layout_lib.checked_layout(x, w, strides, pads, p, p_value)
    for name, a in (("x", x), ("w", w)):
        if a.dtype == jnp.float64:
            raise ValueError(
                f"{name} is float64: the TPU kernels compute in float32 (use implementation='xla')"
            )
    return layout


def _check_blocks(blocks: TpuBlocks, kernel: str):
    reduce, shared = ("block_k", "block_o") if kernel == "forward" else ("block_o", "block_k")
    if getattr(blocks, reduce) % blocks.unroll or getattr(blocks, shared) % blocks.group:
        raise ValueError(
            f"{kernel}: TpuBlocks.{reduce} must be a multiple of unroll and {shared} of group, "
            f"got {blocks}"
        )


def _interpret(interpret):
    return pltpu.InterpretParams() if interpret is True else interpret


def _pixels(a, rows_padded):
    """(C, M) -> (C, rows_padded, 128), zero past M."""
    c, m = a.shape
    a = jnp.pad(a, ((0, 0), (0, rows_padded * LANES - m)))
    return a.reshape(c, rows_padded, LANES)


def _abs(d):
    bits = lax.bitcast_convert_type(d, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _pow_positive(a, q):
    """a ** q for a >= 0 and q >= 0 traced: exp(q log a), 0 at a = 0 (EUP, no VALU divide)."""
    return jnp.where(a > 0, jnp.exp(q * jnp.log(jnp.where(a > 0, a, 1.0))), 0.0)


def _forward_term(d, p, p_ref):
    if p == 1.0:
        return _abs(d)
    if p == 2.0:
        return d * d
    return _pow_positive(_abs(d), p_ref[0, 0] if p is None else p)


def _input_term(d, p, p_ref, kind):
    if kind == "hardtanh":
        return jnp.minimum(jnp.maximum(d, -1.0), 1.0)
    if p == 1.0:
        return jnp.sign(d)
    if p == 2.0:
        return d
    q = (p_ref[0, 0] if p is None else p) - 1.0
    return jnp.sign(d) * _pow_positive(_abs(d), q)


def _w_blocks(w2, blocks: TpuBlocks, kp: int, op: int):
    """(K, O) filters -> (K blocks, O blocks, block_k, block_o) for SMEM blocks."""
    w2 = jnp.pad(w2.astype(jnp.float32), ((0, kp - w2.shape[0]), (0, op - w2.shape[1])))
    bk, bo = blocks.block_k, blocks.block_o
    return w2.reshape(kp // bk, bk, op // bo, bo).transpose(0, 2, 1, 3)


def _p_operand(p_value):
    return jnp.asarray(p_value, jnp.float32).reshape(1, 1)


# --------------------------------------------------------------------------- forward


def _forward_kernel(w_ref, x_ref, *refs, p, blocks: TpuBlocks):
    p_ref, y_ref = refs if p is None else (None, *refs)
    group, unroll = blocks.group, blocks.unroll

    @pl.when(pl.program_id(2) == 0)
    def _():
        y_ref[...] = jnp.zeros_like(y_ref)

    def group_body(g, carry):
        o0 = g * group

        def step(s, carry):
            acc = [y_ref[o0 + o] for o in range(group)]
            for u in range(unroll):
                k = s * unroll + u
                xk = x_ref[k]
                acc = [
                    acc[o] + _forward_term(xk - w_ref[k, o0 + o], p, p_ref) for o in range(group)
                ]
            for o in range(group):
                y_ref[o0 + o] = acc[o]
            return carry

        return lax.fori_loop(0, blocks.block_k // unroll, step, carry)

    # Static filter offsets: each scalar's SMEM address is one add from the step's.
    for g in range(blocks.block_o // group):
        group_body(g, 0)


def forward(x, w, *, strides, pads, p=1.0, p_value=None, blocks=None, interpret=False):
    """``y[n, h, w, o] = -sum_{i, j, c} |xpad[n, h*s + i, w*s + j, c] - w[i, j, c, o]| ** p``.

    Args:
      x: (N, H, W, Cin). w: (kh, kw, Cin, Cout). float32 or narrower (computed in float32).
      strides: (sh, sw). pads: ((top, bottom), (left, right)), as `lax.conv_general_dilated`.
      p: the norm as a Python float, or None to read it at run time from ``p_value``.
      blocks: `TpuBlocks`; None for `TpuBlocks.get_default("forward", ...)` (v5e's).
      interpret: True (or a `pltpu.InterpretParams`) runs the kernel in TPU interpret mode.

    Returns:
      (N, Ho, Wo, Cout) float32.
    """
    layout = _check_args(x, w, strides, pads, p, p_value)
    (kh, kw, cin, cout), (ho, wo) = w.shape, layout.out_hw
    k, m = kh * kw * cin, x.shape[0] * ho * wo
    blocks = blocks or TpuBlocks.get_default("forward", k=k, o=cout, m=m)
    _check_blocks(blocks, "forward")
    kp, op, rp = blocks.padded("forward", k=k, o=cout, m=m)
    cols = columns(x.astype(jnp.float32), (kh, kw), strides, pads)
    cols = _pixels(jnp.pad(cols, ((0, kp - k), (0, 0))), rp)
    wb = _w_blocks(w.reshape(k, cout), blocks, kp, op)
    bk, bo, rows = blocks.block_k, blocks.block_o, blocks.rows
    operands = [wb, cols]
    in_specs = [
        pl.BlockSpec((None, None, bk, bo), lambda i, o, kb: (kb, o, 0, 0), memory_space=pltpu.SMEM),
        pl.BlockSpec((bk, rows, LANES), lambda i, o, kb: (kb, i, 0)),
    ]
    if p is None:
        operands.append(_p_operand(p_value))
        in_specs.append(pl.BlockSpec((1, 1), lambda i, o, kb: (0, 0), memory_space=pltpu.SMEM))
    y = pl.pallas_call(
        functools.partial(_forward_kernel, p=p, blocks=blocks),
        out_shape=jax.ShapeDtypeStruct((op, rp, LANES), jnp.float32),
        grid=(rp // rows, op // bo, kp // bk),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bo, rows, LANES), lambda i, o, kb: (o, i, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=_interpret(interpret),
        name="adder_forward_tpu",
    )(*operands)
    y = -y.reshape(op, rp * LANES)[:cout, :m]
    return y.reshape(cout, x.shape[0], ho, wo).transpose(1, 2, 3, 0)


# ------------------------------------------------------------------- input gradient


def _input_grad_kernel(w_ref, x_ref, g_ref, *refs, p, kind, blocks: TpuBlocks):
    p_ref, d_ref = refs if p is None else (None, *refs)
    group, unroll = blocks.group, blocks.unroll

    @pl.when(pl.program_id(2) == 0)
    def _():
        d_ref[...] = jnp.zeros_like(d_ref)

    def group_body(gi, carry):
        k0 = gi * group

        def step(s, carry):
            acc = [d_ref[k0 + j] for j in range(group)]
            xs = [x_ref[k0 + j] for j in range(group)]
            for u in range(unroll):
                o = s * unroll + u
                go = g_ref[o]
                acc = [
                    acc[j] + go * _input_term(w_ref[k0 + j, o] - xs[j], p, p_ref, kind)
                    for j in range(group)
                ]
            for j in range(group):
                d_ref[k0 + j] = acc[j]
            return carry

        return lax.fori_loop(0, blocks.block_o // unroll, step, carry)

    for g in range(blocks.block_k // group):  # static, as in the forward
        group_body(g, 0)


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
    blocks=None,
    interpret=False,
):
    """``dx = sum_o g * f(w - x_patch)`` scattered back to the input (the AdderNet rule).

    f is ``clip(., -1, 1)`` for input_grad="hardtanh" and ``sign(.) |.| ** (p - 1)`` for
    "lp". Arguments as `forward`, plus g: (N, Ho, Wo, Cout). Returns (N, H, W, Cin) float32.
    """
    layout = _check_args(x, w, strides, pads, p, p_value)
    if input_grad not in ("hardtanh", "lp"):
        raise ValueError(f"input_grad must be 'hardtanh' or 'lp', got {input_grad!r}")
    (kh, kw, cin, cout), (ho, wo) = w.shape, layout.out_hw
    if g.shape != (x.shape[0], ho, wo, cout):
        raise ValueError(f"g must be {(x.shape[0], ho, wo, cout)}, got {g.shape=}")
    k, m = kh * kw * cin, x.shape[0] * ho * wo
    blocks = blocks or TpuBlocks.get_default("input_grad", k=k, o=cout, m=m)
    _check_blocks(blocks, "input_grad")
    kp, op, rp = blocks.padded("input_grad", k=k, o=cout, m=m)
    to_cols = functools.partial(columns, kernel_hw=(kh, kw), strides=strides, pads=pads)
    cols, scatter = jax.vjp(to_cols, x.astype(jnp.float32))
    cols = _pixels(jnp.pad(cols, ((0, kp - k), (0, 0))), rp)
    gt = g.astype(jnp.float32).transpose(3, 0, 1, 2).reshape(cout, m)
    gt = _pixels(jnp.pad(gt, ((0, op - cout), (0, 0))), rp)
    wb = _w_blocks(w.reshape(k, cout), blocks, kp, op)
    bk, bo, rows = blocks.block_k, blocks.block_o, blocks.rows
    operands = [wb, cols, gt]
    in_specs = [
        pl.BlockSpec((None, None, bk, bo), lambda i, kb, o: (kb, o, 0, 0), memory_space=pltpu.SMEM),
        pl.BlockSpec((bk, rows, LANES), lambda i, kb, o: (kb, i, 0)),
        pl.BlockSpec((bo, rows, LANES), lambda i, kb, o: (o, i, 0)),
    ]
    if p is None:
        operands.append(_p_operand(p_value))
        in_specs.append(pl.BlockSpec((1, 1), lambda i, kb, o: (0, 0), memory_space=pltpu.SMEM))
    d = pl.pallas_call(
        functools.partial(_input_grad_kernel, p=p, kind=input_grad, blocks=blocks),
        out_shape=jax.ShapeDtypeStruct((kp, rp, LANES), jnp.float32),
        grid=(rp // rows, kp // bk, op // bo),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bk, rows, LANES), lambda i, kb, o: (kb, i, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=_interpret(interpret),
        name="adder_input_grad_tpu",
    )(*operands)
    (dx,) = scatter(d.reshape(kp, rp * LANES)[:k, :m])
    return dx
