"""Argument checking, shape arithmetic and the p dispatch shared by every implementation.

Everything here works on static Python values (shapes, strides, padding), so a bad argument
is reported once, at trace time, with one line that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

import jax.numpy as jnp
from jax import lax

# Re-exported: the kernels, the lowest layer, define the input-gradient rules.
from kernels.adder_triton import INPUT_GRADS as INPUT_GRADS
from kernels.adder_triton import InputGrad as InputGrad

# The filter gradient: the paper's "full-precision" x - w (eq. 5), or the true derivative
# sign(x - w) of the l_1 forward (the signSGD-like rule of the paper's ablation, Table 4).
FilterGrad = Literal["full_precision", "sign"]
FILTER_GRADS: tuple[str, ...] = get_args(FilterGrad)
# The op's backends ("pallas": the Triton kernels of `kernels`, GPU; "native": the C++ CPU
# kernels of `kernels.adder_cpu`; "xla": `adderjax.xla`, any backend).
Implementation = Literal["xla", "pallas", "native"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
Padding = str | Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Static description of one adder convolution, NHWC x HWIO -> NHWC."""

    batch: int
    in_hw: tuple[int, int]
    kernel_hw: tuple[int, int]
    in_channels: int
    out_channels: int
    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.in_hw, self.pads, strict=True))

    @property
    def reduction_size(self) -> int:
        """Number of |x - w| terms summed into one output element."""
        return self.kernel_hw[0] * self.kernel_hw[1] * self.in_channels


def check_strides(strides) -> tuple[int, int]:
    if isinstance(strides, int) and not isinstance(strides, bool):
        strides = (strides, strides)
    try:
        strides = tuple(strides)
    except TypeError:
        raise ValueError(f"strides must be an int or a pair of ints, got {strides!r}") from None
    if len(strides) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides
    ):
        raise ValueError(f"strides must be a pair of positive ints, got {strides!r}")
    return strides


def check_padding(padding) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """Returns "SAME", "VALID" or explicit ((lo, hi), (lo, hi)) as `lax.conv_general_dilated`."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"padding must be 'SAME', 'VALID' or [(lo, hi), (lo, hi)], got {padding!r}"
            )
        return padding.upper()
    try:
        pairs = tuple(tuple(p) for p in padding)
    except TypeError:
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or [(lo, hi), (lo, hi)], got {padding!r}"
        ) from None
    ok = len(pairs) == 2 and all(
        len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        for p in pairs
    )
    if not ok:
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or [(lo, hi), (lo, hi)], got {padding!r}"
        )
    return pairs


def check_p(p):
    """Validates a concrete p; a traced p (the l_p schedule inside jit) cannot be checked here."""
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        if not 1.0 <= p <= 2.0:
            raise ValueError(f"p must be in [1, 2], got {p!r}")
        return float(p)
    if isinstance(p, bool) or not hasattr(p, "shape") or p.shape != ():
        raise ValueError(f"p must be a float in [1, 2] or a scalar array, got {p!r}")
    if not jnp.issubdtype(p.dtype, jnp.floating) and not jnp.issubdtype(p.dtype, jnp.integer):
        raise ValueError(f"p must be a real scalar, got dtype {p.dtype}")
    return p


def check_choice(name: str, value, choices: Sequence[str], allow_none: bool = False):
    if value is None and allow_none:
        return None
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices) + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_float_array(name: str, a) -> None:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{name} must be an array, got {type(a).__name__}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {name}.dtype={a.dtype}")


def conv_geometry(x_shape, w_shape, strides, padding) -> ConvGeometry:
    """Checks an NHWC input against an HWIO filter and returns the static geometry."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be rank 4 (N, H, W, C), got x.shape={tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"w must be rank 4 (kh, kw, cin, cout), got w.shape={tuple(w_shape)}")
    n, h, wd, cin = x_shape
    kh, kw, wcin, cout = w_shape
    if wcin != cin:
        raise ValueError(
            f"channel mismatch: x.shape={tuple(x_shape)} has {cin} input channels but "
            f"w.shape={tuple(w_shape)} expects {wcin}"
        )
    if min(x_shape) < 1 or min(w_shape) < 1:
        raise ValueError(f"empty dimension: x.shape={tuple(x_shape)}, w.shape={tuple(w_shape)}")
    strides = check_strides(strides)
    padding = check_padding(padding)
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads((h, wd), (kh, kw), strides, padding))
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    padded = tuple(n_ + lo + hi for n_, (lo, hi) in zip((h, wd), pads, strict=True))
    if padded[0] < kh or padded[1] < kw:
        raise ValueError(
            f"kernel larger than the padded input: w.shape={tuple(w_shape)} but the padded "
            f"input is {padded[0]}x{padded[1]} (x.shape={tuple(x_shape)}, padding={pads})"
        )
    out_hw = tuple((p - k) // s + 1 for p, k, s in zip(padded, (kh, kw), strides, strict=True))
    return ConvGeometry(
        batch=n,
        in_hw=(h, wd),
        kernel_hw=(kh, kw),
        in_channels=cin,
        out_channels=cout,
        strides=strides,
        pads=pads,
        out_hw=out_hw,
    )


def pad_input(x, geom: ConvGeometry):
    """Zero-pads (or crops, for negative padding) the spatial dims, exactly as lax does."""
    (top, bottom), (left, right) = geom.pads
    return lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )


def unpad_input(dxpad, geom: ConvGeometry):
    """The transpose of `pad_input`: crops the padding (and re-zero-pads a negative one)."""
    (top, bottom), (left, right) = geom.pads
    return lax.pad(
        dxpad,
        jnp.zeros((), dxpad.dtype),
        ((0, 0, 0), (-top, -bottom, 0), (-left, -right, 0), (0, 0, 0)),
    )


def compute_dtype(*dtypes):
    """Low-precision inputs are computed and accumulated in float32, like a conv's accumulator."""
    dtype = jnp.result_type(*dtypes)
    return jnp.promote_types(dtype, jnp.float32)


def with_static_p(fn, p, p_static):
    """Calls fn(p_static); for a traced p, switches to a branch specialised for p = 1 and 2.

    The l_p schedule moves p every epoch inside one compiled step, and ``|d| ** p`` costs an
    exp and a log per term, so p = 1 (most of training) and p = 2 get their cheap forms.
    """
    if p_static is not None:
        return fn(p_static)
    index = jnp.where(p == 1, 0, jnp.where(p == 2, 1, 2))
    return lax.switch(index, [lambda: fn(1.0), lambda: fn(2.0), lambda: fn(None)])
