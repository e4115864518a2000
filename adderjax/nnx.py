"""Flax NNX adder layers, `AdderConv` and `AdderLinear`, drop-in for `flax.nnx.Conv` / `Linear`,
and the bit-shift layers `ShiftConv` and `ShiftLinear` (DeepShift, as ShiftAddNet uses them).

The adder filter is the `nnx.Param` ``adder`` (as in the PyTorch reference); the forward and
the AdderNet gradients are those of `adderjax.ops`. The shift layers' latents and rules are
`adderjax.nn.ShiftConv`'s (`adderjax.shift`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adderjax import layer_core, ops, shift
from adderjax.layer_core import PaddingLike, default_bias_init, default_kernel_init

__all__ = ["AdderConv", "AdderLinear", "ShiftConv", "ShiftLinear"]

Array = Any
Dtype = Any
Initializer = Any


class AdderConv(nnx.Module):
    """2-D adder convolution, a drop-in for `flax.nnx.Conv` with a negative l_p distance.

    ``y = -sum |x_patch - adder| ** p (+ bias)`` over every ``(kh, kw, cin)`` input patch,
    with the AdderNet gradients of `adderjax.ops.adder_conv`. Inputs are channels-last
    ``(*batch_dims, H, W, C)``: as in flax, several batch dims are flattened and restored, and
    an unbatched ``(H, W, C)`` input gives an unbatched output.

    Args:
      in_features: number of input channels.
      out_features: number of filters (output channels).
      kernel_size: an int k, meaning (k, k), or a pair of ints. Only 2-D kernels exist here
        (unlike flax, an int is not a 1-D kernel).
      strides: an int or a pair of ints (default 1).
      padding: "SAME", "VALID", an int n (n zeros on every side), a sequence of two ints (per
        spatial dim, both sides) or of two ``(lo, hi)`` pairs. Padded zeros count as inputs,
        as in the reference. "CIRCULAR", "REFLECT" and "CAUSAL" raise.
      input_dilation, kernel_dilation, feature_group_count: accepted for flax compatibility,
        and must be 1.
      use_bias: whether to add a bias (default True, as flax; the AdderNet models use False).
      dtype: the dtype of the computation (default: inferred from inputs and params).
      param_dtype: the dtype of the parameters (default float32).
      kernel_init: initializer of the ``adder`` filter (default N(0, 1), as the reference).
      bias_init: initializer of the bias (default zeros).
      p: the norm, a float in [1, 2] (1 is the AdderNet). A call-time ``p`` overrides it.
      input_grad: "hardtanh" or "lp", the input gradient rule of `adderjax.ops.adder_conv`.
      filter_grad: "full_precision" (the paper) or "sign" (its ablation), as in
        `adderjax.ops.adder_conv`.
      implementation: None (the best for the backend), "xla" or "pallas".
      interpret: with implementation="pallas", run the kernels in Pallas interpret mode.
      rngs: the `nnx.Rngs` the parameters are initialised from.
      kernel_metadata, bias_metadata: metadata (e.g. sharding) for the two `nnx.Param`.

    Attributes:
      adder: `nnx.Param` of shape ``(kh, kw, in_features, out_features)``.
      bias: `nnx.Param` of shape ``(out_features,)``, or None when ``use_bias=False``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from adderjax import nnx as adder_nnx
      >>> layer = adder_nnx.AdderConv(16, 32, (3, 3), strides=2, use_bias=False, rngs=nnx.Rngs(0))
      >>> layer.adder.shape, layer.bias
      ((3, 3, 16, 32), None)
      >>> layer(jnp.ones((2, 8, 8, 16)), p=1.5).shape
      (2, 4, 4, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        *,
        input_dilation: None | int | Sequence[int] = 1,
        kernel_dilation: None | int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        p: float = 1.0,
        input_grad: str = "hardtanh",
        filter_grad: str = "full_precision",
        implementation: str | None = None,
        interpret: bool = False,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        # Checked here rather than at call time so a bad layer fails where it is built.
        kernel_size, strides, padding = layer_core.conv_args(
            kernel_size, strides, padding, input_dilation, kernel_dilation, feature_group_count
        )
        p = layer_core.adder_args(p, input_grad, implementation, filter_grad, allow_array_p=False)
        kernel_shape = kernel_size + (in_features, out_features)
        self.adder = nnx.Param(
            kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata
        )
        self.bias: nnx.Param[jax.Array] | None
        if use_bias:
            self.bias = nnx.Param(
                bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)

        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.p = p
        self.input_grad = input_grad
        self.filter_grad = filter_grad
        self.implementation = implementation
        if not isinstance(interpret, bool):
            raise ValueError(f"interpret must be a bool, got interpret={interpret!r}")
        self.interpret = interpret

    def __call__(self, inputs: Array, *, p: float | jax.Array | None = None) -> Array:
        """Applies the adder convolution.

        Args:
          inputs: ``(*batch_dims, H, W, C)``, channels last.
          p: overrides ``self.p`` for this call. It may be a traced scalar, so an l_p
            schedule can change p every epoch inside one jitted train step without
            recompiling (a changing Python float attribute would retrace).

        Returns:
          ``(*batch_dims, Ho, Wo, out_features)``.
        """
        p = self.p if p is None else p
        layer_core.check_inputs(inputs, 3, "(*batch_dims, H, W, C)")
        layer_core.check_in_features(inputs, self.in_features)
        kernel = self.adder[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = nnx.nn.dtypes.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return layer_core.apply_conv(
            inputs,
            kernel,
            bias,
            self.strides,
            self.padding,
            p=p,
            input_grad=self.input_grad,
            filter_grad=self.filter_grad,
            implementation=self.implementation,
            interpret=self.interpret,
        )


class AdderLinear(nnx.Module):
    """Adder dense layer over the last axis, a drop-in for `flax.nnx.Linear`.

    ``y[..., o] = -sum_i |x[..., i] - adder[i, o]| ** p (+ bias[o])`` with the AdderNet
    gradients of `adderjax.ops.adder_dense`.

    Args:
      in_features: number of input features.
      out_features: number of output features.
      use_bias: whether to add a bias (default True, as flax).
      dtype: the dtype of the computation (default: inferred from inputs and params).
      param_dtype: the dtype of the parameters (default float32).
      kernel_init: initializer of the ``adder`` weights (default N(0, 1), as the reference).
      bias_init: initializer of the bias (default zeros).
      p: the norm, a float in [1, 2]. A call-time ``p`` overrides it.
      input_grad: "hardtanh" or "lp", as in `adderjax.ops.adder_dense`.
      filter_grad: "full_precision" or "sign", as in `adderjax.ops.adder_dense`.
      implementation: None (the best for the backend), "xla" or "pallas".
      interpret: with implementation="pallas", run the kernels in Pallas interpret mode.
      rngs: the `nnx.Rngs` the parameters are initialised from.
      kernel_metadata, bias_metadata: metadata (e.g. sharding) for the two `nnx.Param`.

    Attributes:
      adder: `nnx.Param` of shape ``(in_features, out_features)``.
      bias: `nnx.Param` of shape ``(out_features,)``, or None when ``use_bias=False``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from adderjax import nnx as adder_nnx
      >>> layer = adder_nnx.AdderLinear(16, 10, rngs=nnx.Rngs(0))
      >>> layer.adder.shape, layer.bias.shape
      ((16, 10), (10,))
      >>> layer(jnp.ones((5, 2, 16))).shape
      (5, 2, 10)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        p: float = 1.0,
        input_grad: str = "hardtanh",
        filter_grad: str = "full_precision",
        implementation: str | None = None,
        interpret: bool = False,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        p = layer_core.adder_args(p, input_grad, implementation, filter_grad, allow_array_p=False)
        self.adder = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
            **kernel_metadata,
        )
        self.bias: nnx.Param[jax.Array] | None
        if use_bias:
            self.bias = nnx.Param(
                bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)

        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.p = p
        self.input_grad = input_grad
        self.filter_grad = filter_grad
        self.implementation = implementation
        if not isinstance(interpret, bool):
            raise ValueError(f"interpret must be a bool, got interpret={interpret!r}")
        self.interpret = interpret

    def __call__(self, inputs: Array, *, p: float | jax.Array | None = None) -> Array:
        """Applies the adder dense layer to the last axis of ``inputs``.

        Args:
          inputs: ``(..., in_features)``.
          p: overrides ``self.p`` for this call; may be a traced scalar (see
            `AdderConv.__call__`).

        Returns:
          ``(..., out_features)``.
        """
        p = self.p if p is None else p
        layer_core.check_inputs(inputs, 1, "(..., in_features)")
        layer_core.check_in_features(inputs, self.in_features)
        kernel = self.adder[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = nnx.nn.dtypes.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = ops.adder_dense(
            inputs,
            kernel,
            p=p,
            input_grad=self.input_grad,
            filter_grad=self.filter_grad,
            implementation=self.implementation,
            interpret=self.interpret,
        )
        return layer_core.add_bias(y, bias)


class _ShiftLayer(nnx.Module):
    """The latents and options of a shift layer (`ShiftConv`, `ShiftLinear`)."""

    def _init_shift(self, shape, kind, weight_bits, sign_threshold, quant_bits, frozen, dtype,
                    param_dtype, rngs):  # fmt: skip
        shift.check_layer_args(kind, weight_bits, sign_threshold, quant_bits)
        shift.check_frozen(frozen, kind, quant_bits)
        for name in shift.LATENTS[kind]:  # each latent from its own key, as `adderjax.nn`'s
            if frozen:
                value = shift.frozen_init_params(rngs.params(), shape, param_dtype)[name]
            else:
                value = shift.init_params(rngs.params(), kind, shape, weight_bits, param_dtype)
                value = value[name]
            setattr(self, name, nnx.Param(value))
        self.frozen = frozen
        self.kind = kind
        self.weight_bits = weight_bits
        self.sign_threshold = sign_threshold
        self.quant_bits = quant_bits
        self.dtype = dtype
        self.param_dtype = param_dtype

    def _weight(self):
        params = {name: getattr(self, name)[...] for name in shift.LATENTS[self.kind]}
        if self.frozen:  # never trained: no gradient reaches the latents
            params = jax.tree.map(jax.lax.stop_gradient, params)
        return shift.effective_weight(params, self.kind, self.weight_bits, self.sign_threshold)


class ShiftConv(_ShiftLayer):
    """2-D bit-shift convolution: `adderjax.nn.ShiftConv` as an NNX module.

    Args:
      in_features, out_features, kernel_size, strides, padding: as `AdderConv`.
      kind, weight_bits, sign_threshold, quant_bits, frozen, dtype, param_dtype: as
        `adderjax.nn.ShiftConv`.
      rngs: the `nnx.Rngs` the latents are initialised from.

    Attributes:
      shift, sign: `nnx.Param` latents ``(kh, kw, in_features, out_features)`` (kind "ps"), or
      shift_weight: the `nnx.Param` float weight (kind "q").

    A call's ``key`` quantises the output's gradient (`adderjax.shift.quantize_grad`); without
    one it is left alone.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from adderjax import nnx as adder_nnx
      >>> layer = adder_nnx.ShiftConv(4, 8, 3, rngs=nnx.Rngs(0))
      >>> layer.shift.shape, layer.sign.shape
      ((3, 3, 4, 8), (3, 3, 4, 8))
      >>> layer(jnp.ones((2, 6, 6, 4)), key=jax.random.key(1)).shape
      (2, 6, 6, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        *,
        kind: str = "ps",
        weight_bits: int = 5,
        sign_threshold: float | None = None,
        quant_bits: int = 16,
        frozen: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kernel_size, strides, padding = layer_core.conv_args(kernel_size, strides, padding)
        shape = kernel_size + (in_features, out_features)
        self._init_shift(shape, kind, weight_bits, sign_threshold, quant_bits, frozen, dtype,
                         param_dtype, rngs)  # fmt: skip
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding

    def __call__(self, inputs: Array, *, key: jax.Array | None = None) -> Array:
        """``(*batch_dims, H, W, C)`` -> ``(*batch_dims, Ho, Wo, out_features)``."""
        layer_core.check_inputs(inputs, 3, "(*batch_dims, H, W, C)")
        layer_core.check_in_features(inputs, self.in_features)
        weight = self._weight()
        (inputs,) = nnx.nn.dtypes.promote_dtype((inputs,), dtype=self.dtype)
        return layer_core.batched_conv(
            lambda x: shift.shift_conv(
                x,
                weight,
                self.strides,
                self.padding,
                quant_bits=self.quant_bits,
                key=key,
                frozen=self.frozen,
            ),
            inputs,
        )


class ShiftLinear(_ShiftLayer):
    """Bit-shift dense layer over the last axis: `adderjax.nn.ShiftDense` as an NNX module.

    Args: ``in_features``, ``out_features``, ``rngs`` and, as `ShiftConv`, ``kind``,
    ``weight_bits``, ``sign_threshold``, ``quant_bits``, ``frozen``, ``dtype``,
    ``param_dtype``. The
    latents have shape ``(in_features, out_features)``; a call's ``key`` quantises the
    output's gradient.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kind: str = "ps",
        weight_bits: int = 5,
        sign_threshold: float | None = None,
        quant_bits: int = 16,
        frozen: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._init_shift((in_features, out_features), kind, weight_bits, sign_threshold,
                         quant_bits, frozen, dtype, param_dtype, rngs)  # fmt: skip
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, inputs: Array, *, key: jax.Array | None = None) -> Array:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        layer_core.check_inputs(inputs, 1, "(..., in_features)")
        layer_core.check_in_features(inputs, self.in_features)
        (inputs,) = nnx.nn.dtypes.promote_dtype((inputs,), dtype=self.dtype)
        return shift.shift_dense(
            inputs, self._weight(), quant_bits=self.quant_bits, key=key, frozen=self.frozen
        )
