"""Flax linen adder layers, `AdderConv` and `AdderDense`, drop-in for `flax.linen.Conv` / `Dense`.

They hold a filter named ``adder`` (as in the PyTorch reference) and call `adderjax.ops`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta

from adderjax import geometry, ops

__all__ = ["AdderConv", "AdderDense"]

Array = Any
Dtype = Any
Initializer = Any
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


def _canonicalize_padding(padding: PaddingLike) -> str | tuple[tuple[int, int], tuple[int, int]]:
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


def _conv_args(
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
    padding = _canonicalize_padding(padding)
    _check_unit("input_dilation", input_dilation)
    _check_unit("kernel_dilation", kernel_dilation)
    if feature_group_count != 1:
        raise ValueError(
            f"feature_group_count must be 1, adder layers do not support grouping; "
            f"got feature_group_count={feature_group_count!r}"
        )
    return kernel_size, strides, padding


def _adder_args(
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


def _check_inputs(inputs, min_rank: int, layout: str) -> None:
    if not hasattr(inputs, "ndim") or inputs.ndim < min_rank:
        shape = getattr(inputs, "shape", None)
        raise ValueError(f"inputs must have shape {layout}, got inputs.shape={shape}")


def _check_in_features(inputs, in_features: int) -> None:
    if inputs.shape[-1] != in_features:
        raise ValueError(
            f"inputs has {inputs.shape[-1]} features in its last axis but the layer's filter "
            f"expects in_features={in_features} (inputs.shape={tuple(inputs.shape)})"
        )


def _add_bias(y, bias):
    if bias is None:
        return y
    # An explicit reshape, so the layer also works under jax_numpy_rank_promotion="raise".
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _apply_conv(
    inputs, kernel, bias, strides, padding, *, p, input_grad, filter_grad, implementation, interpret
):
    """The adder conv over ``(*batch, H, W, C)`` inputs, any number of batch dims, as flax does."""
    num_batch = inputs.ndim - 3
    batch_shape = inputs.shape[:num_batch]
    if num_batch != 1:
        inputs = jnp.reshape(inputs, (-1,) + inputs.shape[num_batch:])
    y = ops.adder_conv(
        inputs,
        kernel,
        strides,
        padding,
        p=p,
        input_grad=input_grad,
        filter_grad=filter_grad,
        implementation=implementation,
        interpret=interpret,
    )
    y = _add_bias(y, bias)
    if num_batch != 1:
        y = jnp.reshape(y, batch_shape + y.shape[1:])
    return y


def _existing_shape(module: nn.Module, name: str):
    if module.has_variable("params", name):
        return jnp.shape(meta.unbox(module.get_variable("params", name)))
    return None


class AdderConv(nn.Module):
    """2-D adder convolution, a drop-in for `flax.linen.Conv` with a negative l_p distance.

    ``y = -sum |x_patch - adder| ** p (+ bias)`` over every ``(kh, kw, cin)`` input patch,
    with the AdderNet gradients of `adderjax.ops.adder_conv`. Inputs are channels-last
    ``(*batch_dims, H, W, C)``: as in flax, several batch dims are flattened and restored, and
    an unbatched ``(H, W, C)`` input gives an unbatched output.

    Attributes:
      features: number of filters (output channels).
      kernel_size: an int k, meaning (k, k), or a pair of ints. Only 2-D kernels exist here
        (unlike flax, an int is not a 1-D kernel).
      strides: an int or a pair of ints (default 1).
      padding: "SAME", "VALID", an int n (n zeros on every side), a sequence of two ints (per
        spatial dim, both sides) or of two ``(lo, hi)`` pairs. Padded zeros count as inputs
        (``|0 - w|`` contributes), as in the reference. "CIRCULAR", "REFLECT" and "CAUSAL"
        raise.
      input_dilation, kernel_dilation, feature_group_count: accepted for flax compatibility,
        and must be 1.
      use_bias: whether to add a bias (default True, as flax; the AdderNet models use False).
      dtype: the dtype of the computation (default: inferred from inputs and params).
      param_dtype: the dtype of the parameters (default float32).
      kernel_init: initializer of the ``adder`` filter (default N(0, 1), as the reference).
      bias_init: initializer of the bias (default zeros).
      p: the norm, in [1, 2] (1 is the AdderNet). A call-time ``p`` overrides it.
      input_grad: "hardtanh" or "lp", the input gradient rule of `adderjax.ops.adder_conv`.
      filter_grad: "full_precision" (the paper) or "sign" (its ablation), as in
        `adderjax.ops.adder_conv`.
      implementation: None (the best for the backend), "xla" or "pallas".
      interpret: with implementation="pallas", run the kernels in Pallas interpret mode
        (any backend; how the GPU kernels are tested on CPU).

    The parameters are ``adder``, shape ``(kh, kw, cin, features)``, and ``bias``,
    ``(features,)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from adderjax import nn as adder_nn
      >>> layer = adder_nn.AdderConv(features=32, kernel_size=(3, 3), use_bias=False)
      >>> x = jnp.ones((2, 8, 8, 16))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'adder': (3, 3, 16, 32)}}
      >>> layer.apply(variables, x, p=2.0).shape
      (2, 8, 8, 32)
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: None | int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    input_dilation: None | int | Sequence[int] = 1
    kernel_dilation: None | int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = default_bias_init
    p: float = 1.0
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    @nn.compact
    def __call__(self, inputs: Array, *, p: float | jax.Array | None = None) -> Array:
        """Applies the adder convolution.

        Args:
          inputs: ``(*batch_dims, H, W, C)``, channels last.
          p: overrides the ``p`` field for this call. It may be a traced scalar, so an l_p
            schedule can change p every epoch inside one jitted train step without
            recompiling (a changing Python float in the field would retrace).

        Returns:
          ``(*batch_dims, Ho, Wo, features)``.
        """
        kernel_size, strides, padding = _conv_args(
            self.kernel_size,
            self.strides,
            self.padding,
            self.input_dilation,
            self.kernel_dilation,
            self.feature_group_count,
        )
        p = _adder_args(
            self.p if p is None else p, self.input_grad, self.implementation, self.filter_grad
        )
        _check_inputs(inputs, 3, "(*batch_dims, H, W, C)")
        existing = _existing_shape(self, "adder")
        if existing is not None and len(existing) == 4:
            _check_in_features(inputs, existing[2])
        kernel = self.param(
            "adder",
            self.kernel_init,
            kernel_size + (jnp.shape(inputs)[-1], self.features),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return _apply_conv(
            inputs,
            kernel,
            bias,
            strides,
            padding,
            p=p,
            input_grad=self.input_grad,
            filter_grad=self.filter_grad,
            implementation=self.implementation,
            interpret=self.interpret,
        )


class AdderDense(nn.Module):
    """Adder dense layer over the last axis, a drop-in for `flax.linen.Dense`.

    ``y[..., o] = -sum_i |x[..., i] - adder[i, o]| ** p (+ bias[o])`` with the AdderNet
    gradients of `adderjax.ops.adder_dense`.

    Attributes:
      features: number of output features.
      use_bias: whether to add a bias (default True, as flax).
      dtype: the dtype of the computation (default: inferred from inputs and params).
      param_dtype: the dtype of the parameters (default float32).
      kernel_init: initializer of the ``adder`` weights (default N(0, 1), as the reference).
      bias_init: initializer of the bias (default zeros).
      p: the norm, in [1, 2]. A call-time ``p`` overrides it.
      input_grad: "hardtanh" or "lp", as in `adderjax.ops.adder_dense`.
      filter_grad: "full_precision" or "sign", as in `adderjax.ops.adder_dense`.
      implementation: None (the best for the backend), "xla" or "pallas".
      interpret: with implementation="pallas", run the kernels in Pallas interpret mode
        (any backend; how the GPU kernels are tested on CPU).

    The parameters are ``adder``, shape ``(din, features)``, and ``bias``, ``(features,)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from adderjax import nn as adder_nn
      >>> layer = adder_nn.AdderDense(features=10)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 16)))
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'adder': (16, 10), 'bias': (10,)}}
      >>> layer.apply(variables, jnp.ones((5, 2, 16))).shape
      (5, 2, 10)
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = default_bias_init
    p: float = 1.0
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    @nn.compact
    def __call__(self, inputs: Array, *, p: float | jax.Array | None = None) -> Array:
        """Applies the adder dense layer to the last axis of ``inputs``.

        Args:
          inputs: ``(..., din)``.
          p: overrides the ``p`` field for this call; may be a traced scalar (see
            `AdderConv.__call__`).

        Returns:
          ``(..., features)``.
        """
        p = _adder_args(
            self.p if p is None else p, self.input_grad, self.implementation, self.filter_grad
        )
        _check_inputs(inputs, 1, "(..., din)")
        existing = _existing_shape(self, "adder")
        if existing is not None and len(existing) == 2:
            _check_in_features(inputs, existing[0])
        kernel = self.param(
            "adder", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = ops.adder_dense(
            inputs,
            kernel,
            p=p,
            input_grad=self.input_grad,
            filter_grad=self.filter_grad,
            implementation=self.implementation,
            interpret=self.interpret,
        )
        return _add_bias(y, bias)
