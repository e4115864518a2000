"""The device mesh of the programs and how batches and train states are laid out on it.

The mesh has two axes, ("data", "fsdp"): a global batch is split over both, a train state
is replicated or, with `fsdp_size` > 1, split over "fsdp" as fully sharded data parallelism
does. Both axes are Auto, so XLA partitions the step from these shardings (GSPMD).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "batch_sharding",
    "jit_eval_step",
    "jit_train_step",
    "fsdp_spec",
    "global_batch",
    "make_mesh",
    "replicated",
    "state_shardings",
]


def make_mesh(fsdp_size: int = 1, devices=None) -> Mesh:
    """Every device (of every process) in a ("data", "fsdp") mesh with "fsdp" of `fsdp_size`."""
    devices = jax.devices() if devices is None else devices
    if len(devices) % fsdp_size:
        raise ValueError(f"{fsdp_size=} does not divide the {len(devices)} devices")
    grid = np.asarray(devices).reshape(-1, fsdp_size)
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A global batch's leading axis split over every device of the mesh."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """Splits a state array over "fsdp" along its largest axis that divides by `size`
    (replicated when none does, or when size is 1)."""
    axes = [i for i, n in enumerate(shape) if size > 1 and n % size == 0]
    if not axes:
        return P()
    spec = [None] * len(shape)
    spec[max(axes, key=lambda i: shape[i])] = "fsdp"
    return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """A sharding per state leaf: split over "fsdp" by `fsdp_spec`, else replicated."""
    size = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, size)), abstract_state)


def global_batch(batch: dict[str, np.ndarray], batch_sharding: NamedSharding) -> dict:
    """This host's rows of the global batch, as global arrays with the batch sharding."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def jit_train_step(step: Callable, state_shardings: Any, mesh: Mesh) -> Callable:
    """A task's ``step(state, global batch, p) -> (state, metrics)`` jitted over `mesh`: the
    batch split, the state laid out as `state_shardings` (and donated), metrics replicated."""
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(step: Callable, state_shardings: Any, mesh: Mesh) -> Callable:
    """A task's ``step(state, global batch, p) -> sums`` jitted over `mesh`, sums replicated."""
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=replicated(mesh),
    )
