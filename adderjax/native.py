"""The native path of the adder op: the C++ CPU kernels of `kernels.adder_cpu` behind
`adderjax.xla`'s interface.

The forward, the input gradient and the full-precision filter gradient's correlation
(``x^T g``, a convolution's weight gradient; ``w * sum(g)`` is one XLA reduction) run the
native kernels. Inputs are computed in `geometry.compute_dtype` (bfloat16 and float16 in float32),
a traced p runs the branches of `geometry.with_static_p`, and under a mesh each call runs in
the `shard_map` of `adderjax.batch_parallel` (XLA cannot partition a custom call), the
filter gradient summed over the batch shards.
"""

from __future__ import annotations

import jax.numpy as jnp

from adderjax import batch_parallel, geometry
from kernels import adder_cpu

__all__ = [
    "available",
    "filter_formula",
    "filter_grad",
    "forward",
    "input_grad",
    "unavailable_reason",
]


def available() -> bool:
    """Whether the native kernels were built and run on this CPU."""
    return adder_cpu.available()


def unavailable_reason() -> str | None:
    """Why they cannot run here (one line), or None."""
    return adder_cpu.unavailable_reason()


def filter_formula(dtype) -> str:
    """The forward's l_1 term for a compute dtype (see `kernels.adder_cpu.FORMULAS`).

    float32: "min", ``|x - w| = x + w - 2 min(x, w)``, two instructions a term; its rounding
    error grows with |x| + |w| rather than |x - w|, which docs/cpu_kernel.md#precision measures
    on trained networks' activations. float64, where speed is not the point: "abs", exact.
    """
    return "abs" if jnp.dtype(dtype) == jnp.float64 else "min"


def _cast(dtype, *arrays):
    return tuple(a.astype(dtype) for a in arrays)


def forward(x, w, p, geom: geometry.ConvGeometry, p_static):
    dtype = geometry.compute_dtype(x.dtype, w.dtype)
    x, w = _cast(dtype, x, w)

    def local(x, w, p):
        def run(p_static):
            return adder_cpu.forward(
                x,
                w,
                p,
                strides=geom.strides,
                pads=geom.pads,
                p=p_static,
                formula=filter_formula(dtype),
            )

        return geometry.with_static_p(run, p, p_static)

    return batch_parallel.batch_parallel(local, (x,), (w, p))


def input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode: str):
    dtype = geometry.compute_dtype(x.dtype, w.dtype, g.dtype)
    x, w, g = _cast(dtype, x, w, g)

    def local(x, g, w, p):
        def run(p_static):
            return adder_cpu.input_grad(
                x, w, g, p, strides=geom.strides, pads=geom.pads, input_grad=mode, p=p_static
            )

        if mode == "hardtanh":
            return run(1.0)  # the hardtanh rule does not depend on p
        return geometry.with_static_p(run, p, p_static)

    return batch_parallel.batch_parallel(local, (x, g), (w, p))


def filter_grad(x, w, g, geom: geometry.ConvGeometry):
    """dw = sum g * (x_patch - w) = corr(x, g) - w * sum_{n,h,w} g: the full-precision gradient,
    corr from the native kernel, summed over the batch shards under a mesh."""
    dtype = geometry.compute_dtype(x.dtype, w.dtype, g.dtype)
    x, w, g = _cast(dtype, x, w, g)

    def local(x, g):
        return adder_cpu.filter_corr(
            x, g, kernel_hw=geom.kernel_hw, strides=geom.strides, pads=geom.pads
        )

    corr = batch_parallel.batch_parallel(local, (x, g), (), sum_output=True)
    return corr - w * jnp.sum(g, axis=(0, 1, 2))[None, None, None, :]
