"""Native CPU kernels of the adder op: C++ (`kernels/cpu/`) behind XLA's FFI.

`forward`, `input_grad` and `filter_corr` (the filter gradient's ``x^T g``) take NHWC inputs
and HWIO filters (or their shape) in float32 or float64 and call the handlers of the
`kernels.cpu._adder_cpu` extension, which `pip install` builds with CMake
(scikit-build-core). The C++ side only loops: register tiles of rank-1 updates, AVX-512 or
AVX2 picked at run time, XLA's intra-op thread pool, and results that depend on the shapes
only (bitwise the same for any thread count). This side owns the shapes: negative padding is
cropped here, the per-term rule chosen, the workspace sized and allocated by XLA (so it shows
in `memory_analysis()`).

The extension is optional: without a C++ compiler the package installs without it, and
`available()` is False with `unavailable_reason()` saying why.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
    from kernels.cpu import _adder_cpu
except ImportError as _error:  # not built: no compiler, another architecture, or switched off
    _adder_cpu = None
    _IMPORT_ERROR = f"{type(_error).__name__}: {_error}"
else:
    _IMPORT_ERROR = None

__all__ = [
    "FORMULAS",
    "ISAS",
    "Formula",
    "available",
    "filter_corr",
    "forward",
    "input_grad",
    "isa",
    "loop_rate",
    "narrow_tiles",
    "supported_isas",
    "unavailable_reason",
]

# The instruction sets the extension is compiled for, best first.
ISAS: tuple[str, ...] = ("avx512", "avx2")
# The forward's l_1 term: "min", |x - w| = x + w - 2 min(x, w) (two instructions a term, sum x
# and sum w added once per output), or "abs", the exact sub, abs, add (three).
Formula = Literal["min", "abs"]
FORMULAS: tuple[str, ...] = get_args(Formula)
# Rule numbers of kernels/cpu/conv_shape.h.
_FORWARD_RULES = {"min": 0, "abs": 1, "square": 2, "pow": 3}
_INPUT_GRAD_RULES = {"hardtanh": 0, "sign": 1, "linear": 2, "pow": 3}
# ADDERJAX_CPU_ISA=avx2 runs the AVX2 build on an AVX-512 machine (for testing it).
ISA_ENV = "ADDERJAX_CPU_ISA"
# Where a layer's channels fill one or two 512-bit vectors, the AVX-512 build runs 512- or
# 256-bit register tiles, whichever its loop runs faster on this CPU, measured once per
# process (256 on AMD Zen 4, 512 on Intel Golden Cove); ADDERJAX_CPU_TILES=wide|narrow fixes
# the choice. Both give the same bits.
TILES_ENV = "ADDERJAX_CPU_TILES"
TILE_CHOICES: tuple[str, ...] = ("measure", "wide", "narrow")


def supported_isas() -> tuple[str, ...]:
    """The instruction sets that this CPU runs and the extension has, best first."""
    if _adder_cpu is None:
        return ()
    return tuple(i for i in ISAS if i in _adder_cpu.supported_isas())


def unavailable_reason() -> str | None:
    """Why the native kernels cannot run here, or None when they can."""
    if _adder_cpu is None:
        return (
            "the native CPU kernels were not built (kernels.cpu._adder_cpu: "
            f"{_IMPORT_ERROR}); reinstall with a C++ compiler: pip install -e ."
        )
    if not supported_isas():
        return "the native CPU kernels need a CPU with AVX2 and FMA, or AVX-512"
    chosen = os.environ.get(ISA_ENV)
    if chosen and chosen not in supported_isas():
        return f"{ISA_ENV}={chosen!r} is not one of this CPU's {supported_isas()}"
    tiles = os.environ.get(TILES_ENV)
    if tiles and tiles not in TILE_CHOICES:
        return f"{TILES_ENV}={tiles!r} is not one of {TILE_CHOICES}"
    return None


def available() -> bool:
    """Whether `forward` and `input_grad` can run on this machine."""
    return unavailable_reason() is None


def isa() -> str:
    """The instruction set the kernels run: the best this CPU has, or $ADDERJAX_CPU_ISA."""
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(reason)
    return os.environ.get(ISA_ENV) or supported_isas()[0]


def loop_rate(
    isa: str, input_grad: bool, channels: int, threads: int, seconds: float = 0.3
) -> float:
    """float32 terms per second of the kernels' inner loop: the register tile that a layer
    with this many channels (out for the forward, in for the input gradient) runs, on data in
    L1, on `threads` threads at once for about `seconds`. The instruction bound of a shape is
    its terms at this rate (benchmarks/ops.py prints it)."""
    chosen = _check_isa(isa)
    return _adder_cpu.loop_rate(chosen, bool(input_grad), int(channels), int(threads), seconds)


def narrow_tiles(isa: str, input_grad: bool, channels: int) -> bool:
    """Whether float32 runs 256-bit register tiles for this many channels (out for the
    forward, in for the input gradient): only the AVX-512 build has them, for channels that
    fill one or two 512-bit vectors, where they are the faster (see `TILES_ENV`)."""
    chosen = _check_isa(isa)
    if int(channels) < 1:
        raise ValueError(f"channels must be >= 1, got {channels=}")
    return _adder_cpu.narrow_tiles(chosen, bool(input_grad), int(channels))


@functools.cache
def _register() -> None:
    for name, capsule in _adder_cpu.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")


def _check_isa(chosen: str | None) -> str:
    if chosen is None:
        return isa()
    if chosen not in supported_isas():
        raise ValueError(f"isa must be one of this CPU's {supported_isas()}, got {chosen!r}")
    return chosen


def _crop(x, pads):
    """Negative padding crops the input, as in lax; returns (cropped x, pads >= 0)."""
    (top, bottom), (left, right) = pads
    if min(top, bottom, left, right) >= 0:
        return x, pads
    h, w = x.shape[1:3]
    x = x[:, max(0, -top) : h - max(0, -bottom), max(0, -left) : w - max(0, -right)]
    return x, ((max(0, top), max(0, bottom)), (max(0, left), max(0, right)))


def _subsample(x, w_shape, strides, pads):
    """A strided 1x1 layer without padding reads only x[:, ::sh, ::sw]: the input gradient's
    kernel gets that, with stride 1 (its phases that no tap reads are zeros). Returns (x,
    strides). (The forward and the filter gradient read the strided pixels in place: 0.53 ms
    against 0.73 for r20's 32->64 1x1 s2 forward, 0.41 against 0.56 for 16->32's filter
    gradient.)"""
    if w_shape[:2] != (1, 1) or strides == (1, 1) or any(p != 0 for pair in pads for p in pair):
        return x, strides
    return x[:, :: strides[0], :: strides[1]], (1, 1)


def _shape_list(x_shape, w_shape, strides, pads):
    n, h, w, c = x_shape
    kh, kw, _, o = w_shape
    (pt, pb), (pl, pr) = pads
    ho = (h + pt + pb - kh) // strides[0] + 1
    wo = (w + pl + pr - kw) // strides[1] + 1
    return [n, h, w, c, kh, kw, o, strides[0], strides[1], pt, pb, pl, pr, ho, wo], (ho, wo)


def _check(x, w, strides, pads, g=None):
    if x.ndim != 4 or w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(
            f"x must be (N, H, W, C) and w (kh, kw, C, O), got {x.shape=} and {w.shape=}"
        )
    if x.dtype not in (jnp.float32, jnp.float64) or w.dtype != x.dtype:
        raise ValueError(f"x and w must share float32 or float64, got {x.dtype=} and {w.dtype=}")
    if g is not None and g.dtype != x.dtype:
        raise ValueError(f"g must have x's dtype {x.dtype}, got {g.dtype=}")
    if len(strides) != 2 or min(strides) < 1:
        raise ValueError(f"strides must be two positive ints, got {strides=}")


def _attrs(strides, pads, rule):
    (pt, pb), (pl, pr) = pads
    return dict(
        stride_h=np.int64(strides[0]),
        stride_w=np.int64(strides[1]),
        pad_top=np.int64(pt),
        pad_bottom=np.int64(pb),
        pad_left=np.int64(pl),
        pad_right=np.int64(pr),
        rule=np.int64(rule),
    )


def forward(
    x,
    w,
    p_value=None,
    *,
    strides,
    pads,
    p: float | None = 1.0,
    formula: Formula = "min",
    isa: str | None = None,
):
    """y = -sum |x_patch - w| ** p, (N, Ho, Wo, O) in x's dtype.

    Args:
      x: (N, H, W, C), float32 or float64.
      w: (kh, kw, C, O), x's dtype.
      p_value: p as a scalar array, used when ``p`` is None (a p known only at run time).
      strides: (sh, sw); pads: ((top, bottom), (left, right)), negative crops, as in lax.
      p: the norm when known at trace time: 1 and 2 get their own loops, others the general
        ``|d| ** p``; None reads ``p_value``.
      formula: the l_1 term at p = 1, "min" or "abs" (see `FORMULAS`).
      isa: "avx512" or "avx2"; None picks with `isa()`.
    """
    _check(x, w, strides, pads)
    chosen = _check_isa(isa)
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
    if p is None and p_value is None:
        raise ValueError("forward needs p or p_value")
    rule = formula if p == 1.0 else "square" if p == 2.0 else "pow"
    _register()
    x, pads = _crop(x, pads)
    shape, (ho, wo) = _shape_list(x.shape, w.shape, strides, pads)
    out_shape = (x.shape[0], ho, wo, w.shape[3])
    if math.prod(out_shape) == 0 or w.size == 0:  # nothing to compute, or empty sums
        return jnp.zeros(out_shape, x.dtype)
    bits = 64 if x.dtype == jnp.float64 else 32
    work = _adder_cpu.forward_workspace(chosen, bits, shape)
    pv = jnp.asarray(p if p is not None else p_value, x.dtype).reshape(())
    call = jax.ffi.ffi_call(
        f"adderjax_forward_{chosen}",
        (
            jax.ShapeDtypeStruct(out_shape, x.dtype),
            jax.ShapeDtypeStruct((work,), x.dtype),
        ),
        vmap_method="sequential",
    )
    y, _ = call(x, w, pv, **_attrs(strides, pads, _FORWARD_RULES[rule]))
    return y


def input_grad(
    x,
    w,
    g,
    p_value=None,
    *,
    strides,
    pads,
    input_grad: str = "hardtanh",
    p: float | None = 1.0,
    isa: str | None = None,
):
    """dx = sum_o g * f(w - x_patch) scattered onto x: f = clip(., -1, 1) or the l_p rule.

    Args:
      x, w: as in `forward`; g: the cotangent (N, Ho, Wo, O), x's dtype.
      input_grad: "hardtanh" or "lp" (``sign(d) |d| ** (p - 1)``).
      p, p_value: as in `forward` (the l_p rule only).
    """
    _check(x, w, strides, pads, g)
    chosen = _check_isa(isa)
    if input_grad not in ("hardtanh", "lp"):
        raise ValueError(f"input_grad must be 'hardtanh' or 'lp', got {input_grad!r}")
    if input_grad == "lp" and p is None and p_value is None:
        raise ValueError("input_grad='lp' needs p or p_value")
    if input_grad == "hardtanh":
        rule, p = "hardtanh", 1.0
    else:
        rule = "sign" if p == 1.0 else "linear" if p == 2.0 else "pow"
    _register()
    full_hw = x.shape[1:3]
    (top, bottom), (left, right) = pads
    x, pads = _crop(x, pads)
    shape, (ho, wo) = _shape_list(x.shape, w.shape, strides, pads)
    if g.shape != (x.shape[0], ho, wo, w.shape[3]):
        raise ValueError(f"g must be {(x.shape[0], ho, wo, w.shape[3])}, got {g.shape=}")
    pv = jnp.asarray(p if p is not None else p_value, x.dtype).reshape(())
    sub, sub_strides = _subsample(x, w.shape, strides, pads)
    if sub is x:
        dx = _input_grad_call(x, w, g, pv, strides, pads, rule, chosen)
    else:
        # The pixels no tap reads get zero gradient: the subsampled input's, spread back
        # with interior padding.
        dx = _input_grad_call(sub, w, g, pv, sub_strides, pads, rule, chosen)
        (sh, sw), (hs, ws) = strides, sub.shape[1:3]
        spread = (
            (0, 0, 0),
            (0, x.shape[1] - ((hs - 1) * sh + 1), sh - 1),
            (0, x.shape[2] - ((ws - 1) * sw + 1), sw - 1),
            (0, 0, 0),
        )
        dx = lax.pad(dx, jnp.zeros((), dx.dtype), spread)
    return _uncrop(dx, full_hw, top, bottom, left, right)


def _input_grad_call(x, w, g, pv, strides, pads, rule, chosen):
    if x.size == 0 or g.size == 0 or w.size == 0:  # no input, or no term reaches it
        return jnp.zeros(x.shape, x.dtype)
    shape, _ = _shape_list(x.shape, w.shape, strides, pads)
    bits = 64 if x.dtype == jnp.float64 else 32
    work = _adder_cpu.input_grad_workspace(chosen, bits, shape)
    call = jax.ffi.ffi_call(
        f"adderjax_input_grad_{chosen}",
        (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((work,), x.dtype)),
        vmap_method="sequential",
    )
    dx, _ = call(x, w, g, pv, **_attrs(strides, pads, _INPUT_GRAD_RULES[rule]))
    return dx


def _uncrop(dx, full_hw, top, bottom, left, right):
    """Input pixels cropped away by negative padding are read by no tap: zero gradient."""
    if dx.shape[1:3] == full_hw:
        return dx
    pads = (max(0, -top), max(0, -bottom), 0), (max(0, -left), max(0, -right), 0)
    return lax.pad(dx, jnp.zeros((), dx.dtype), ((0, 0, 0), *pads, (0, 0, 0)))


def filter_corr(x, g, *, kernel_hw, strides, pads, isa: str | None = None):
    """corr[i, j, c, o] = sum_{n, q} x[n, q * s + (i, j) - pad, c] * g[n, q, o], (kh, kw, C, O).

    The correlation part of the full-precision filter gradient, ``dw = corr - w * sum g``
    (a convolution's filter gradient): FMA register tiles over input and output channels, no
    patches, bitwise the same for any thread count.

    Args:
      x: (N, H, W, C), float32 or float64.
      g: the cotangent (N, Ho, Wo, O), x's dtype.
      kernel_hw: (kh, kw); strides and pads as in `forward`.
    """
    if x.ndim != 4 or g.ndim != 4 or g.shape[0] != x.shape[0]:
        raise ValueError(
            f"x must be (N, H, W, C) and g (N, Ho, Wo, O), got {x.shape=} and {g.shape=}"
        )
    if len(kernel_hw) != 2 or min(kernel_hw) < 1:
        raise ValueError(f"kernel_hw must be two positive ints, got {kernel_hw=}")
    w_shape = (*kernel_hw, x.shape[3], g.shape[3])
    _check(x, jax.ShapeDtypeStruct(w_shape, x.dtype), strides, pads, g)
    chosen = _check_isa(isa)
    _register()
    x, pads = _crop(x, pads)
    shape, (ho, wo) = _shape_list(x.shape, w_shape, strides, pads)
    if g.shape != (x.shape[0], ho, wo, w_shape[3]):
        raise ValueError(f"g must be {(x.shape[0], ho, wo, w_shape[3])}, got {g.shape=}")
    if x.size == 0 or g.size == 0:  # empty sums
        return jnp.zeros(w_shape, x.dtype)
    bits = 64 if x.dtype == jnp.float64 else 32
    work = _adder_cpu.filter_corr_workspace(chosen, bits, shape)
    call = jax.ffi.ffi_call(
        f"adderjax_filter_corr_{chosen}",
        (jax.ShapeDtypeStruct(w_shape, x.dtype), jax.ShapeDtypeStruct((work,), x.dtype)),
        vmap_method="sequential",
    )
    attrs = _attrs(strides, pads, 0)
    del attrs["rule"]
    corr, _ = call(x, g, **attrs)
    return corr
