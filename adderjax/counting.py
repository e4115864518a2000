"""Multiplications, additions, shifts and energy of a Flax model's layers: the AdderNet argument.

`count_ops(model, input_shape)` traces one forward pass abstractly (`jax.eval_shape`, nothing
is computed) and records every convolution, dense, adder, shift and BatchNorm layer it meets.

Conventions:
  * "paper" (Chen et al. 2020, Tables 2 and 3): a multiply-accumulate is one multiplication
    and one addition; an adder term |x - w| accumulated is two additions (the subtraction and
    the accumulation; the absolute value is a sign flip, not counted); a bit-shift term is one
    shift and one addition; BatchNorm, the first layer and the last layer are left out.
  * "full": every layer; a convolution of reduction length K does K multiplications and
    K - 1 additions per output (plus one for a bias); an adder K subtractions and K - 1
    accumulations; a shift layer K shifts and K - 1 additions; BatchNorm at inference is one
    multiplication and one addition per element (its scale and shift folded). Pooling and
    ReLU (comparisons) are not counted.

Energy uses the 45 nm figures of the AdderNet line of work (Horowitz, ISSCC 2014): float32
addition 0.9 pJ and multiplication 3.7 pJ; int32 0.1 pJ and 3.1 pJ. A model with shift layers
needs figures with a shift: ShiftAddNAS's unit energies (GATECH-EIC/ShiftAddNAS,
`CV/retraining_hybrid/hw_utils.py`, `get_unit_energy`), 32-bit multiplication 3.7 pJ,
addition 0.9, shift 0.13, and 8-bit 0.2, 0.03 and 0.024; or your own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from adderjax import nn as adder_nn

__all__ = ["ENERGY_PJ", "LayerCount", "OpCount", "count_ops"]

# picojoules per operation, 45 nm (Horowitz 2014), as the AdderNet papers use.
ENERGY_PJ = {
    "float32": {"add": 0.9, "mul": 3.7},
    "int32": {"add": 0.1, "mul": 3.1},
    # ShiftAddNAS's 45 nm units (hw_utils.get_unit_energy, num_bits 32 and 8).
    "shiftaddnas_32bit": {"add": 0.9, "mul": 3.7, "shift": 0.13},
    "shiftaddnas_8bit": {"add": 0.03, "mul": 0.2, "shift": 0.024},
}
CONVENTIONS = ("paper", "full")


@dataclasses.dataclass(frozen=True)
class LayerCount:
    """One layer: its module path, kind, reduction length, outputs and operations."""

    name: str
    kind: str  # "conv", "adder", "shift", "dense", "adder_dense", "shift_dense" or "batchnorm"
    reduction: int
    outputs: int
    multiplications: int
    additions: int
    shifts: int = 0


@dataclasses.dataclass(frozen=True)
class OpCount:
    """The counted layers and their totals; `energy_pj` for the chosen figures."""

    layers: tuple[LayerCount, ...]
    convention: str
    energy: Mapping[str, float]

    @property
    def multiplications(self) -> int:
        return sum(layer.multiplications for layer in self.layers)

    @property
    def additions(self) -> int:
        return sum(layer.additions for layer in self.layers)

    @property
    def shifts(self) -> int:
        return sum(layer.shifts for layer in self.layers)

    @property
    def energy_pj(self) -> float:
        shifts = self.shifts * self.energy["shift"] if self.shifts else 0.0
        return (
            self.multiplications * self.energy["mul"] + self.additions * self.energy["add"] + shifts
        )

    def table(self) -> str:
        """A markdown table of the layers and the total."""
        rows = [
            "| layer | kind | K | outputs | mul | add | shift |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for c in self.layers:
            rows.append(
                f"| {c.name} | {c.kind} | {c.reduction} | {c.outputs:,} | "
                f"{c.multiplications:,} | {c.additions:,} | {c.shifts:,} |"
            )
        rows.append(
            f"| total | | | | {self.multiplications:,} | {self.additions:,} | {self.shifts:,} |"
        )
        return "\n".join(rows)


_KINDS = (
    (adder_nn.AdderConv, "adder"),
    (adder_nn.AdderDense, "adder_dense"),
    (adder_nn.ShiftConv, "shift"),
    (adder_nn.ShiftDense, "shift_dense"),
    (nn.Conv, "conv"),
    (nn.Dense, "dense"),
    (nn.BatchNorm, "batchnorm"),
)


def _kind(module) -> str | None:
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    return None


def _count(kind: str, reduction: int, outputs: int, bias: bool, convention: str):
    """(multiplications, additions, shifts) of a layer."""
    if kind == "batchnorm":
        return outputs, outputs, 0
    accumulations = outputs * (reduction if convention == "paper" else reduction - 1)
    if convention == "full" and bias:
        accumulations += outputs
    if kind in ("adder", "adder_dense"):
        return 0, outputs * reduction + accumulations, 0
    if kind in ("shift", "shift_dense"):
        return 0, accumulations, outputs * reduction
    return outputs * reduction, accumulations, 0


def count_ops(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    convention: str = "paper",
    energy: str | Mapping[str, float] = "float32",
    **call_kwargs: Any,
) -> OpCount:
    """Counts the multiplications and additions of one forward pass of `model`.

    Args:
      model: a Flax linen module (e.g. `adderjax.models.ResNet20(num_classes=10)`).
      input_shape: the input's shape, batch included (the paper counts batch 1).
      convention: "paper" or "full" (module docstring).
      energy: a name of `ENERGY_PJ` ("float32", "int32", "shiftaddnas_32bit",
        "shiftaddnas_8bit") or {"add": pJ, "mul": pJ} (and "shift": pJ, which a model with
        shift layers needs).
      **call_kwargs: passed to the model call (e.g. ``train=False``).

    Returns:
      An `OpCount` with the layers in call order, the totals and the energy.

    Example:
      >>> from adderjax import count_ops, models
      >>> adder = count_ops(models.ResNet20(num_classes=10), (1, 32, 32, 3), train=False)
      >>> adder.multiplications, f"{adder.additions / 1e6:.2f}M"
      (0, '80.74M')
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got convention={convention!r}")
    if isinstance(energy, str):
        if energy not in ENERGY_PJ:
            raise ValueError(f"energy must be one of {tuple(ENERGY_PJ)} or a dict, got {energy!r}")
        figures = ENERGY_PJ[energy]
    else:
        figures = dict(energy)
        if set(figures) - {"shift"} != {"add", "mul"} or not all(
            isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in figures.values()
        ):
            raise ValueError(
                f"energy must map 'add', 'mul' (and 'shift') to pJ >= 0, got {energy!r}"
            )
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be positive ints, got input_shape={input_shape!r}")

    found: list[tuple[str, str, int, int, bool]] = []

    active: set[int] = set()  # a subclass's __call__ calling super().__call__ counts once

    def interceptor(next_fun, args, kwargs, context):
        kind = _kind(context.module)
        if kind is None or context.method_name != "__call__" or id(context.module) in active:
            return next_fun(*args, **kwargs)
        active.add(id(context.module))
        try:
            out = next_fun(*args, **kwargs)
        finally:
            active.discard(id(context.module))
        x = args[0]
        if kind == "batchnorm":
            reduction = 1
        elif kind in ("conv", "adder", "shift"):
            ks = context.module.kernel_size
            ks = (ks, ks) if isinstance(ks, int) else tuple(ks)
            reduction = math.prod(ks) * x.shape[-1]
        else:
            reduction = x.shape[-1]
        bias = bool(getattr(context.module, "use_bias", False)) and kind != "batchnorm"
        name = "/".join(context.module.path)
        found.append((name, kind, reduction, math.prod(out.shape), bias))
        return out

    def forward(x):
        variables = model.init(jax.random.key(0), x, **call_kwargs)
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, **call_kwargs)

    jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32))
    kept = found
    if convention == "paper":
        layers = [f for f in found if f[1] != "batchnorm"]
        first, last = (layers[0], layers[-1]) if layers else (None, None)
        kept = [f for f in layers if f is not first and f is not last]
    counts = []
    for name, kind, reduction, outputs, bias in kept:
        mul, add, shifts = _count(kind, reduction, outputs, bias, convention)
        counts.append(LayerCount(name, kind, reduction, outputs, mul, add, shifts))
    if any(c.shifts for c in counts) and "shift" not in figures:
        raise ValueError(
            f"the model has shift layers but energy={energy!r} has no shift figure: use "
            f"'shiftaddnas_32bit', 'shiftaddnas_8bit' or a dict with 'shift'"
        )
    return OpCount(tuple(counts), convention, figures)
