"""The Pallas path of the adder op: the GPU kernels of `kernels` behind `adderjax.xla`'s interface.

Only argument plumbing lives here (geometry to strides and pads, a traced p to the kernels'
run-time p); the kernels, their tiles and their layout are in `kernels/`.
"""

from __future__ import annotations

import kernels
from adderjax import geometry

__all__ = ["filter_grad", "forward", "input_grad"]


def forward(x, w, p, geom: geometry.ConvGeometry, p_static, *, interpret: bool):
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


def input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode: str, *, interpret: bool):
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


def filter_grad(x, w, g, geom: geometry.ConvGeometry, *, interpret: bool):
    return kernels.filter_grad(x, w, g, strides=geom.strides, pads=geom.pads, interpret=interpret)
