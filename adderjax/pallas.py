"""The Pallas path of the adder op: the GPU kernels of `kernels` behind `adderjax.xla`'s interface.

Argument plumbing (geometry to strides and pads, a traced p to the kernels' run-time p) and
the batch parallelism of `adderjax.batch_parallel` (a `pallas_call` cannot be partitioned by
XLA: under a mesh each kernel runs in a `shard_map` over the batch). The kernels, their tiles
and their layout are in `kernels/`.
"""

from __future__ import annotations

import kernels
from adderjax import batch_parallel, geometry

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
    return batch_parallel.batch_parallel(
        lambda x, g, w: kernels.filter_grad(
            x, w, g, strides=geom.strides, pads=geom.pads, interpret=interpret
        ),
        (x, g),
        (w,),
        sum_output=True,
    )


def _forward(x, w, p, geom: geometry.ConvGeometry, p_static, *, interpret: bool):
    def run(p_static):
        return kernels.forward(
            x,
            w,
            strides=geom.strides,
            pads=geom.pads,
            p=p_static,
            p_value=p,
            interpret=interpret,
        )

    return geometry.with_static_p(run, p, p_static)


def _input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode, *, interpret: bool):
    def run(p_static):
        return kernels.input_grad(
            x,
            w,
            g,
            strides=geom.strides,
            pads=geom.pads,
            input_grad=mode,
            p=p_static,
            p_value=p,
            interpret=interpret,
        )

    if mode == "hardtanh":
        return run(1.0)  # the hardtanh rule does not depend on p
    return geometry.with_static_p(run, p, p_static)
