"""What the linen (`adderjax.nn`) and NNX (`adderjax.nnx`) adder layers share.

Argument checking in flax's forms (kernel_size, strides, padding, the unsupported dilation
and grouping), the AdderNet arguments, the default initialisers and the conv call over any
number of batch dims, so both APIs accept and refuse exactly the same things.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax.numpy as jnp
from flax import linen as nn

from adderjax import geometry, ops

__all__ = [
    "PaddingLike",
    "add_bias",
    "adder_args",
    "apply_conv",
    "canonicalize_padding",
    "check_in_features",
    "check_inputs",
    "conv_args",
    "default_bias_init",
    "default_kernel_init",
]

PaddingLike = str | int | Sequence[int | tuple[int, int]]

# The reference (and the paper) initialise the adder filter with N(0, 1); flax's
# lecun_normal would make |x - w| dominated by x at the start of training.
default_kernel_init = nn.initializers.normal(stddev=1.0)
default_bias_init = nn.initializers.zeros_init()

_UNSUPPORTED_PADDINGS = ("CIRCULAR", "REFLECT", "CAUSAL")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pair(name: str, value, *, allow_none: bool = False) -> tuple[int, int]:
    """An int or a sequence of two ints as a pair of positive ints (None means 1, as in flax)."""
    if value is None and allow_none:
        value = 1
    if _is_int(value):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(
            f"{name} must be a positive int or a pair of positive ints (adder layers are 2-D), "
            f"got {name}={value!r}"
        )
    return tuple(int(v) for v in pair)


def canonicalize_padding(padding: PaddingLike) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """Flax's padding forms as the "SAME", "VALID" or ((lo, hi), (lo, hi)) of `ops.adder_conv`."""
    bad = (
        f"padding must be 'SAME', 'VALID', an int, or a sequence of 2 ints or (lo, hi) pairs, "
        f"got padding={padding!r}"
    )
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in ("SAME", "VALID"):
            return mode
        if mode in _UNSUPPORTED_PADDINGS:
            raise ValueError(
                f"padding={padding!r} is not supported by adder layers; use 'SAME', 'VALID' or "
                f"explicit zero padding"
            )
        raise ValueError(bad)
    if _is_int(padding):
        return ((int(padding), int(padding)),) * 2
    try:
        dims = tuple(padding)
    except TypeError:
        raise ValueError(bad) from None
    pads = []
    for d in dims:
        if _is_int(d):
            pads.append((int(d), int(d)))
            continue
        try:
            pair = tuple(d)
        except TypeError:
            raise ValueError(bad) from None
        if len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise ValueError(bad)
        pads.append((int(pair[0]), int(pair[1])))
    if len(pads) != 2:
        raise ValueError(bad)
    return tuple(pads)


def _check_unit(name: str, value) -> None:
    """Dilation and grouping have no adder op behind them; only the flax default is allowed."""
    if value is None or (_is_int(value) and value == 1):
        return
    if isinstance(value, Sequence) and all(_is_int(v) and v == 1 for v in value):
        return
    raise ValueError(f"{name} must be 1, adder layers do not support it; got {name}={value!r}")


def conv_args(
    kernel_size,
    strides,
    padding,
    input_dilation=1,
    kernel_dilation=1,
    feature_group_count=1,
):
    """Checks the convolution arguments shared by the linen and NNX layers.

    Returns (kernel_size, strides, padding) in the form `ops.adder_conv` takes; an int
    kernel_size k means (k, k) since these layers are 2-D only.
    """
    kernel_size = _pair("kernel_size", kernel_size)
    strides = _pair("strides", strides, allow_none=True)
    padding = canonicalize_padding(padding)
    _check_unit("input_dilation", input_dilation)
    _check_unit("kernel_dilation", kernel_dilation)
    if feature_group_count != 1:
        raise ValueError(
            f"feature_group_count must be 1, adder layers do not support grouping; "
            f"got feature_group_count={feature_group_count!r}"
        )
    return kernel_size, strides, padding


def adder_args(
    p, input_grad, implementation, filter_grad="full_precision", *, allow_array_p: bool = True
):
    """Checks the AdderNet arguments; a concrete p is returned as a float."""
    if not allow_array_p and not (isinstance(p, numbers.Real) and not isinstance(p, bool)):
        raise ValueError(
            f"p must be a float in [1, 2] (a traced p goes in the call, layer(x, p=p)), got p={p!r}"
        )
    p = geometry.check_p(p)
    geometry.check_choice("input_grad", input_grad, geometry.INPUT_GRADS)
    geometry.check_choice("filter_grad", filter_grad, geometry.FILTER_GRADS)
    geometry.check_choice(
        "implementation", implementation, geometry.IMPLEMENTATIONS, allow_none=True
    )
    return p


def check_inputs(inputs, min_rank: int, layout: str) -> None:
    if not hasattr(inputs, "ndim") or inputs.ndim < min_rank:
        shape = getattr(inputs, "shape", None)
        raise ValueError(f"inputs must have shape {layout}, got inputs.shape={shape}")


def check_in_features(inputs, in_features: int) -> None:
    if inputs.shape[-1] != in_features:
        raise ValueError(
            f"inputs has {inputs.shape[-1]} features in its last axis but the layer's filter "
            f"expects in_features={in_features} (inputs.shape={tuple(inputs.shape)})"
        )


def add_bias(y, bias):
    if bias is None:
        return y
    # An explicit reshape, so the layer also works under jax_numpy_rank_promotion="raise".
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def batched_conv(conv, inputs):
    """``conv`` of (N, H, W, C) over ``(*batch, H, W, C)`` inputs, any number of batch dims
    (none too), as flax does."""
    num_batch = inputs.ndim - 3
    batch_shape = inputs.shape[:num_batch]
    if num_batch != 1:
        inputs = jnp.reshape(inputs, (-1,) + inputs.shape[num_batch:])
    y = conv(inputs)
    if num_batch != 1:
        y = jnp.reshape(y, batch_shape + y.shape[1:])
    return y


def apply_conv(
    inputs, kernel, bias, strides, padding, *, p, input_grad, filter_grad, implementation, interpret
):
    """The adder conv over ``(*batch, H, W, C)`` inputs, any number of batch dims, as flax does."""

    def conv(x):
        y = ops.adder_conv(
            x,
            kernel,
            strides,
            padding,
            p=p,
            input_grad=input_grad,
            filter_grad=filter_grad,
            implementation=implementation,
            interpret=interpret,
        )
        return add_bias(y, bias)

    return batched_conv(conv, inputs)
