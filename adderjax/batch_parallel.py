"""Batch parallelism for the op's custom calls (Pallas kernels, native CPU kernels).

XLA cannot partition a `pallas_call` or an FFI custom call, so under a mesh set with
`jax.set_mesh` the call runs in a `shard_map` over the batch (split over every mesh axis that
is not already manual; a batch that does not divide runs whole), an output that is a sum over
the batch (the filter gradient) summed over those axes with `psum`. Inside a user's
`shard_map` over all axes, the call runs on each device's shard as it is.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

__all__ = ["batch_axes", "batch_parallel"]


def batch_axes() -> tuple[str, ...]:
    """The mesh axes the batch is split over: those of the context mesh not yet manual."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    return tuple(a for a in mesh.axis_names if a not in set(mesh.manual_axes))


def batch_parallel(fn, batched, replicated, *, sum_output: bool = False):
    """fn(*batched, *replicated) on each batch shard of the context mesh.

    The output is batch-sharded, or, with sum_output, summed over the shards (replicated).
    """
    axes = batch_axes()
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
        # Custom calls' outputs carry no varying-axes type; the specs above say it all.
        check_vma=False,
    )(*batched, *replicated)
