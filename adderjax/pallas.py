"""The Pallas path of the adder op: the GPU kernels of `kernels` behind `adderjax.xla`'s interface.

Argument plumbing (geometry to strides and pads, a traced p to the kernels' run-time p) and
the batch parallelism: a `pallas_call` cannot be partitioned by XLA, so under a mesh set with
`jax.set_mesh` each kernel runs in a `shard_map` over the batch (split over every mesh axis
that is not already manual; a batch that does not divide runs whole), the filter gradient
summed over those axes with `psum`. Inside
a user's `shard_map` over all axes, the kernels run on each device's shard as they are.
The kernels, their tiles and their layout are in `kernels/`.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

import kernels
from adderjax import geometry

__all__ = ["filter_grad", "forward", "input_grad"]


def _batch_axes() -> tuple[str, ...]:
    """The mesh axes the batch is split over: those of the context mesh not yet manual."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    return tuple(a for a in mesh.axis_names if a not in set(mesh.manual_axes))


def _batch_parallel(fn, batched, replicated, *, sum_output: bool = False):
    """fn(*batched, *replicated) on each batch shard of the context mesh.

    The output is batch-sharded, or, with sum_output, summed over the shards (replicated).
    """
    axes = _batch_axes()
    if not axes:
        return fn(*batched, *replicated)
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    if batched[0].shape[0] % shards:
        # A batch that does not split (model.init's batch of 1, say) runs whole, as XLA
        # would run an unpartitionable op: correct, and not parallel.
        return fn(*batched, *replicated)

    def local(*args):
        out = fn(*args)
        return jax.lax.psum(out, axes) if sum_output else out

    spec = P(axes)
    return jax.shard_map(
        local,
        in_specs=(spec,) * len(batched) + (P(),) * len(replicated),
        out_specs=P() if sum_output else spec,
        axis_names=set(axes),
        # pallas_call's outputs carry no varying-axes type; the specs above say it all.
        check_vma=False,
    )(*batched, *replicated)


def forward(x, w, p, geom: geometry.ConvGeometry, p_static, *, interpret: bool):
    return _batch_parallel(
        lambda x, w, p: _forward(x, w, p, geom, p_static, interpret=interpret), (x,), (w, p)
    )


def input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode: str, *, interpret: bool):
    return _batch_parallel(
        lambda x, g, w, p: _input_grad(x, w, g, p, geom, p_static, mode, interpret=interpret),
        (x, g),
        (w, p),
    )


def filter_grad(x, w, g, geom: geometry.ConvGeometry, *, interpret: bool):
    return _batch_parallel(
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
