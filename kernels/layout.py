"""The phase-flat layout that turns a strided adder convolution into shifted row blocks.

A kernel tile cannot gather an im2col patch, but it can load a contiguous block of rows. So
the padded input is split into its ``sh * sw`` stride phases, ``phase[a, b][n, h, w] =
xpad[n, h * sh + a, w * sw + b]``, each of shape (N, Hq, Wq) with ``Hq = ceil(Hp / sh)``, and
flattened to rows ``(n * Hq + h) * Wq + w``. Output pixels live on the same (N, Hq, Wq) grid
(``ho < Ho``, ``wo < Wo`` of it are real, the rest is computed and discarded), and tap
``(i, j)`` of output row ``m`` is row ``m + (i // sh) * Wq + j // sw`` of phase
``(i % sh, j % sw)``: one constant offset per tap, for every pixel of every image.
The cost is the discarded grid points: ``Hq * Wq / (Ho * Wo)`` of the work, 1.07-1.13x for
32x32 and 56x56 maps and up to 1.65x for 7x7 ones.

Everything here is plain XLA (pads, reshapes, transposes) run around the kernels.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax

__all__ = [
    "PhaseLayout",
    "checked_layout",
    "gather_output",
    "make_layout",
    "merge_input",
    "spread_output",
    "split_input",
]


@dataclasses.dataclass(frozen=True)
class PhaseLayout:
    """Static shapes of one convolution in the phase-flat layout (all Python ints)."""

    batch: int
    in_hw: tuple[int, int]
    kernel_hw: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]
    phase_hw: tuple[int, int]

    @property
    def num_phases(self) -> int:
        return self.strides[0] * self.strides[1]

    @property
    def num_taps(self) -> int:
        return self.kernel_hw[0] * self.kernel_hw[1]

    @property
    def rows(self) -> int:
        """Grid points of the flattened (N, Hq, Wq) grid."""
        return self.batch * self.phase_hw[0] * self.phase_hw[1]

    def tap_phase(self, t: int) -> int:
        """The phase (``a * sw + b``) that tap ``t = i * kw + j`` reads."""
        (sh, sw), kw = self.strides, self.kernel_hw[1]
        return (t // kw % sh) * sw + t % kw % sw

    def tap_offset(self, t: int) -> int:
        """Row offset of tap ``t`` from its output row, inside its phase."""
        (sh, sw), kw = self.strides, self.kernel_hw[1]
        return (t // kw // sh) * self.phase_hw[1] + t % kw // sw

    @property
    def max_offset(self) -> int:
        return max(self.tap_offset(t) for t in range(self.num_taps))

    def phase_taps(self, phase: int) -> tuple[int, ...]:
        """The taps that read `phase`, in increasing order."""
        return tuple(t for t in range(self.num_taps) if self.tap_phase(t) == phase)


def make_layout(x_shape, kernel_hw, strides, pads) -> PhaseLayout:
    """The layout of an NHWC input under an explicit-padding, strided (kh, kw) window."""
    n, h, w, _ = x_shape
    padded = [d + lo + hi for d, (lo, hi) in zip((h, w), pads, strict=True)]
    out_hw = tuple((p - k) // s + 1 for p, k, s in zip(padded, kernel_hw, strides, strict=True))
    phase_hw = tuple(math.ceil(p / s) for p, s in zip(padded, strides, strict=True))
    return PhaseLayout(
        batch=n,
        in_hw=(h, w),
        kernel_hw=tuple(kernel_hw),
        strides=tuple(strides),
        pads=tuple(tuple(p) for p in pads),
        out_hw=out_hw,
        phase_hw=phase_hw,
    )


def checked_layout(x, w, strides, pads, p, p_value) -> PhaseLayout:
    """`make_layout` of a kernel call's NHWC ``x`` and HWIO ``w``, after the checks every
    kernel makes: ranks, matching channels, a traced p (``p=None``) with its ``p_value``, and
    at least one output pixel. Raises ValueError in one line naming what is wrong."""
    if x.ndim != 4:
        raise ValueError(f"x must be rank 4 (N, H, W, C), got {x.shape=}")
    if w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(f"w must be (kh, kw, {x.shape[3]}, cout) for {x.shape=}, got {w.shape=}")
    if p is None and p_value is None:
        raise ValueError("p=None (a traced p) needs p_value, a scalar array")
    layout = make_layout(x.shape, w.shape[:2], strides, pads)
    if min(layout.out_hw) < 1:
        raise ValueError(f"no output pixels: {x.shape=}, {w.shape=}, {strides=}, {pads=}")
    return layout


def _pad_to(a, shape):
    return jnp.pad(a, [(0, s - d) for s, d in zip(shape, a.shape, strict=True)])


def split_input(x, layout: PhaseLayout, rows: int, channels: int):
    """(N, H, W, C) -> (phases, rows, channels), zero beyond the grid and the channels."""
    (sh, sw), (hq, wq) = layout.strides, layout.phase_hw
    (top, bottom), (left, right) = layout.pads
    # The padding up to a whole number of phase rows is added with the convolution's own
    # padding, in one pad (negative pads crop, as in lax).
    hp = layout.in_hw[0] + top + bottom
    wp = layout.in_hw[1] + left + right
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(
        x,
        zero,
        ((0, 0, 0), (top, bottom + hq * sh - hp, 0), (left, right + wq * sw - wp, 0), (0, 0, 0)),
    )
    n, c = layout.batch, x.shape[-1]
    xp = xp.reshape(n, hq, sh, wq, sw, c).transpose(2, 4, 0, 1, 3, 5)
    xp = xp.reshape(layout.num_phases, layout.rows, c)
    return _pad_to(xp, (layout.num_phases, rows, channels))


def merge_input(xph, layout: PhaseLayout, channels: int):
    """The transpose of `split_input`: (phases, >= rows, >= C) -> (N, H, W, C)."""
    (sh, sw), (hq, wq) = layout.strides, layout.phase_hw
    (top, bottom), (left, right) = layout.pads
    hp = layout.in_hw[0] + top + bottom
    wp = layout.in_hw[1] + left + right
    n = layout.batch
    xp = xph[:, : layout.rows, :channels].reshape(sh, sw, n, hq, wq, channels)
    xp = xp.transpose(2, 3, 0, 4, 1, 5).reshape(n, hq * sh, wq * sw, channels)
    zero = jnp.zeros((), xph.dtype)
    return lax.pad(
        xp,
        zero,
        (
            (0, 0, 0),
            (-top, -(bottom + hq * sh - hp), 0),
            (-left, -(right + wq * sw - wp), 0),
            (0, 0, 0),
        ),
    )


def spread_output(g, layout: PhaseLayout, rows: int, channels: int, front: int = 0):
    """(N, Ho, Wo, O) -> (front + rows, channels) on the grid, zero at every other point."""
    (ho, wo), (hq, wq) = layout.out_hw, layout.phase_hw
    g = jnp.pad(g, ((0, 0), (0, hq - ho), (0, wq - wo), (0, 0)))
    g = g.reshape(layout.rows, g.shape[-1])
    return jnp.pad(g, ((front, rows - layout.rows), (0, channels - g.shape[-1])))


def gather_output(y, layout: PhaseLayout, channels: int):
    """The real pixels of a (>= rows, >= O) grid result: (N, Ho, Wo, O)."""
    (ho, wo), (hq, wq) = layout.out_hw, layout.phase_hw
    y = y[: layout.rows, :channels].reshape(layout.batch, hq, wq, channels)
    return y[:, :ho, :wo, :]
