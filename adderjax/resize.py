"""MATLAB's bicubic ``imresize`` (antialiased, symmetric boundary) for NumPy and JAX arrays.

Super-resolution benchmarks make their low-resolution images with MATLAB's
``imresize(hr, 1/s, 'bicubic')`` and VDSR starts from ``imresize(lr, s, 'bicubic')``; the
numbers of every SR table (EDSR, VDSR, AdderSR) assume it. This is its algorithm
(``imresize.m``: ``contributions``, ``cubic``, the dimension order), written once for
NumPy (`train.sr_metrics.imresize`, the data pipeline) and for JAX (inside VDSR).

* The kernel is Keys' cubic with a = -0.5. When shrinking by s < 1 it is stretched to
  ``s * cubic(s * x)`` over a width 4 / s (the antialiasing).
* Output pixel i (1-based) is centred at ``i / s + (1 - 1 / s) / 2`` in input coordinates.
* Weights are normalised per output pixel.
* Indices beyond the edge mirror it, repeating the edge pixel ("symmetric").
* Dimensions are resized in increasing order of their scale, rows first on a tie.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["contributions", "cubic", "output_size", "resize_axes"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    near = (1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
    far = (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))
    return near + far


def output_size(length: int, scale: float) -> int:
    """MATLAB's ``ceil(scale * length)``, immune to the rounding of scale = 1/3."""
    return int(math.ceil(length * scale - 1e-9))


@functools.lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, 0-based indices), each ``(out_length, taps)``: output pixel i is
    ``sum_j weights[i, j] * input[indices[i, j]]`` along one dimension."""
    if in_length < 1 or out_length < 1:
        raise ValueError(f"cannot resize a length of {in_length} to {out_length}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    width = 4.0
    kernel = cubic
    if scale < 1:  # antialiasing: the kernel stretched to the output's sampling rate
        width /= scale

        def kernel(x):
            return scale * cubic(scale * x)

    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    # Symmetric boundary: ..., 2, 1, 1, 2, ..., n, n, n-1, ... (1-based).
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    used = np.any(weights != 0, axis=0)  # MATLAB drops all-zero columns
    weights, indices = weights[:, used], indices[:, used]
    weights.flags.writeable = indices.flags.writeable = False  # shared by the cache
    return weights, indices


def resize_axes(
    x: Any, sizes: Sequence[int], scales: Sequence[float], axes: Sequence[int] = (-3, -2)
) -> Any:
    """``x`` resized along `axes` (default: H and W of ``(..., H, W, C)``) to `sizes` with
    the kernels of `scales`, in MATLAB's order; a NumPy array stays NumPy (float64), a JAX
    array (or tracer) stays JAX in its float dtype."""
    xp = np if isinstance(x, np.ndarray) else jnp
    if xp is np:
        x = x.astype(np.float64)
    order = sorted(range(len(axes)), key=lambda i: scales[i])  # stable: rows first on a tie
    for i in order:
        axis = axes[i] % x.ndim
        weights, indices = contributions(x.shape[axis], int(sizes[i]), float(scales[i]))
        moved = xp.moveaxis(x, axis, 0)
        gathered = moved[indices]  # (out, taps, ...)
        w = weights.reshape(weights.shape + (1,) * (moved.ndim - 1))
        if xp is jnp:
            w = jnp.asarray(w, x.dtype)
        x = xp.moveaxis(xp.sum(gathered * w, axis=1), 0, axis)
    return x
