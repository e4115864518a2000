"""The Pallas path of the adder op: the kernels of `kernels` behind `adderjax.xla`'s interface.

Argument plumbing (geometry to strides and pads, a traced p to the kernels' run-time p) and
the batch parallelism of `adderjax.batch_parallel` (a `pallas_call` cannot be partitioned by
XLA: under a mesh each kernel runs in a `shard_map` over the batch). Each entry point picks
its kernels when it is lowered, with `lax.platform_dependent`: the Mosaic kernels of
`kernels.adder_tpu` for TPU (the filter gradient there is XLA's, `adderjax.xla.filter_grad`,
on the MXU; a call with fewer output pixels than one kernel block, a dense layer at a small
batch, runs XLA's path there too), the Triton kernels of `kernels.adder_triton` for any
other platform (GPUs).
Interpret mode runs the Triton kernels. The kernels, their tiles and their layouts are in
`kernels/`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax

import kernels
from adderjax import batch_parallel, geometry, xla
from kernels import adder_tpu

__all__ = ["filter_grad", "forward", "input_grad"]


def forward(x, w, p, geom: geometry.ConvGeometry, p_static, *, interpret: bool):
    return batch_parallel.batch_parallel(
        lambda x, w, p: _forward(x, w, p, geom, p_static, interpret=interpret), (x,), (w, p)
    )


def input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode: str, *, interpret: bool):
    return batch_parallel.batch_parallel(
        lambda x, g, w, p: _input_grad(x, w, g, p, geom, p_static, mode, interpret=interpret),
        (x, g),
        (w, p),
    )


def filter_grad(x, w, g, geom: geometry.ConvGeometry, *, interpret: bool):
    def triton(x, g, w):
        geo = dict(strides=geom.strides, pads=geom.pads)
        return kernels.filter_grad(x, w, g, **geo, interpret=interpret)

    def tpu(x, g, w):  # XLA's: x^T g on the MXU
        return xla.filter_grad(x, w, g, dataclasses.replace(geom, batch=x.shape[0]))

    def local(x, g, w):
        return _by_platform(triton, tpu, interpret, x, g, w)

    return batch_parallel.batch_parallel(local, (x, g), (w,), sum_output=True)


def _by_platform(triton, tpu, interpret: bool, *args):
    """The Triton kernel in interpret mode or for GPUs, the Mosaic one for TPU (its result in
    the Triton kernel's dtype: the branches of `platform_dependent` must agree)."""
    if interpret:
        return triton(*args)
    like = jax.eval_shape(triton, *args)
    return lax.platform_dependent(*args, tpu=lambda *a: tpu(*a).astype(like.dtype), default=triton)


def _small_for_tpu(geom: geometry.ConvGeometry) -> bool:
    """Fewer output pixels (over the whole batch, so every shard of a mesh decides alike) than
    one block of the TPU kernels, as a dense layer at batch 32: their pixel-major vregs would
    be mostly padding, and XLA's path is cheaper."""
    return geom.batch * geom.out_hw[0] * geom.out_hw[1] < adder_tpu.MIN_PIXELS


def _forward(x, w, p, geom: geometry.ConvGeometry, p_static, *, interpret: bool):
    def run(p_static):
        common = dict(strides=geom.strides, pads=geom.pads, p=p_static)
        triton = functools.partial(kernels.forward, **common, interpret=interpret)
        tpu = functools.partial(adder_tpu.forward, **common)
        local = dataclasses.replace(geom, batch=x.shape[0])
        if _small_for_tpu(geom):
            mosaic = lambda x, w, p: xla.forward(x, w, p, local, p_static)
        else:
            mosaic = lambda x, w, p: tpu(x, w, p_value=p)
        return _by_platform(
            lambda x, w, p: triton(x, w, p_value=p),
            mosaic,
            interpret,
            x,
            w,
            p,
        )

    return geometry.with_static_p(run, p, p_static)


def _input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode, *, interpret: bool):
    def run(p_static):
        common = dict(strides=geom.strides, pads=geom.pads, input_grad=mode, p=p_static)
        triton = functools.partial(kernels.input_grad, **common, interpret=interpret)
        tpu = functools.partial(adder_tpu.input_grad, **common)
        local = dataclasses.replace(geom, batch=x.shape[0])
        if _small_for_tpu(geom):
            mosaic = lambda x, w, g, p: xla.input_grad(x, w, g, p, local, p_static, mode)
        else:
            mosaic = lambda x, w, g, p: tpu(x, w, g, p_value=p)
        return _by_platform(
            lambda x, w, g, p: triton(x, w, g, p_value=p),
            mosaic,
            interpret,
            x,
            w,
            g,
            p,
        )

    if mode == "hardtanh":
        return run(1.0)  # the hardtanh rule does not depend on p
    return geometry.with_static_p(run, p, p_static)
