"""Flax linen adder layers, `AdderConv` and `AdderDense`, drop-in for `flax.linen.Conv` / `Dense`,
and the bit-shift layers `ShiftConv` and `ShiftDense` (DeepShift, as ShiftAddNet uses them).

The adder layers hold a filter named ``adder`` (as in the PyTorch reference) and call
`adderjax.ops`; the shift layers hold DeepShift's latents and call `adderjax.shift`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta

from adderjax import layer_core, ops, shift
from adderjax.layer_core import PaddingLike, default_bias_init, default_kernel_init

__all__ = ["AdderConv", "AdderDense", "ShiftConv", "ShiftDense"]

Array = Any
Dtype = Any
Initializer = Any


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
        kernel_size, strides, padding = layer_core.conv_args(
            self.kernel_size,
            self.strides,
            self.padding,
            self.input_dilation,
            self.kernel_dilation,
            self.feature_group_count,
        )
        p = layer_core.adder_args(
            self.p if p is None else p, self.input_grad, self.implementation, self.filter_grad
        )
        layer_core.check_inputs(inputs, 3, "(*batch_dims, H, W, C)")
        existing = _existing_shape(self, "adder")
        if existing is not None and len(existing) == 4:
            layer_core.check_in_features(inputs, existing[2])
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
        return layer_core.apply_conv(
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
        p = layer_core.adder_args(
            self.p if p is None else p, self.input_grad, self.implementation, self.filter_grad
        )
        layer_core.check_inputs(inputs, 1, "(..., din)")
        existing = _existing_shape(self, "adder")
        if existing is not None and len(existing) == 2:
            layer_core.check_in_features(inputs, existing[0])
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
        return layer_core.add_bias(y, bias)


def _shift_weight(module: nn.Module, inputs, shape):
    """A shift layer's (inputs, effective weight, gradient-quantiser key, bias): its options
    checked, its latents (`shift.init_params`, or `shift.frozen_init_params` when frozen, each
    from its own key), the input promoted, the key of `adderjax.shift.quantize_grad` from the
    "shift" rng stream when the caller gives one (``apply(..., rngs={"shift": key})``; else
    None, no quantisation), and the bias (or None)."""
    kind, bits, threshold = module.kind, module.weight_bits, module.sign_threshold
    shift.check_layer_args(kind, bits, threshold, module.quant_bits)
    shift.check_frozen(module.frozen, kind, module.quant_bits)
    names = shift.LATENTS[kind]
    existing = _existing_shape(module, names[0])
    if existing is not None and len(existing) == len(shape):
        # Checked before `param` would raise flax's shape error: the input's channels.
        layer_core.check_in_features(inputs, existing[-2])

    def init(key, name):
        if module.frozen:
            return shift.frozen_init_params(key, shape, module.param_dtype)[name]
        return shift.init_params(key, kind, shape, bits, module.param_dtype)[name]

    params = {name: module.param(name, init, name) for name in names}
    if module.frozen:  # never trained: no gradient reaches the latents
        params = jax.tree.map(jax.lax.stop_gradient, params)
    weight = shift.effective_weight(params, kind, bits, threshold)
    bias = None
    if module.use_bias:
        bias = module.param("bias", nn.initializers.zeros_init(), (shape[-1],), module.param_dtype)
    (inputs,) = nn.dtypes.promote_dtype(inputs, dtype=module.dtype)
    key = None
    if module.quant_bits > 0 and not module.frozen and module.has_rng("shift"):
        key = module.make_rng("shift")
    return inputs, weight, key, bias


def _shift_bias(y, bias, quant_bits):
    """The bias as theirs meant it, rounded to fixed point (`ste.round_fixed_point(self.bias,
    quant_bits)`, a call that lacks its argument in their code) and added."""
    if bias is None:
        return y
    return layer_core.add_bias(y, shift.fixed_point(bias, quant_bits).astype(y.dtype))


class ShiftConv(nn.Module):
    """2-D bit-shift convolution (DeepShift's `Conv2dShift` as ShiftAddNet uses it): a
    convolution whose weights are signed powers of two, so each product is a shift.

    ``y = conv(fixed_point(x), W)`` with ``W = adderjax.shift.effective_weight(...)``: for
    ``kind="ps"`` (DeepShift-PS, ShiftAddNet's) the trained latents are ``shift`` and
    ``sign`` and ``W = sign(round(sign)) * 2^round(clip(shift))``; for ``kind="q"``
    (DeepShift-Q) the latent is the float ``shift_weight``, rounded to the nearest signed
    power of two. The input is rounded down to ``quant_bits`` fraction bits, and when the
    caller gives a "shift" rng stream (``apply(..., rngs={"shift": key})``) the output's
    gradient is quantised to ``quant_bits`` bits with stochastic rounding, as theirs always
    is. See docs/shift.md.

    Attributes:
      features: output channels.
      kernel_size: an int k, meaning (k, k), or a pair of ints.
      strides: an int or a pair of ints (default 1).
      padding: as `AdderConv` ("SAME", "VALID", ints or pairs).
      kind: "ps" or "q".
      weight_bits: their ``--weight_bits`` (5: shifts in [-14, 0] for PS, [-15, 0] for Q).
      sign_threshold: None, or their ``--sign_threshold_ps`` (PS only).
      quant_bits: their ``--shift_quant_bits`` (16); 0 rounds the input to integers and
        leaves the gradient alone, as their code does.
      frozen: their ``train_fix.py`` variant (PS only): latents drawn by
        `adderjax.shift.frozen_init_params` and never trained, the input rounded to nearest
        (`adderjax.shift.round_act`), the output gradient left alone.
      use_bias: add a bias (zeros init), rounded to ``quant_bits`` fraction bits as their
        ``round_fixed_point(self.bias)`` means to (that call lacks its argument in their
        code, so their biased shift layers cannot run; their networks have no bias).
      dtype: the dtype of the computation (default: inferred from inputs and params).
      param_dtype: the dtype of the latents (default float32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from adderjax import nn as adder_nn
      >>> layer = adder_nn.ShiftConv(features=8, kernel_size=3)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 6, 6, 4)))
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'shift': (3, 3, 4, 8), 'sign': (3, 3, 4, 8)}}
      >>> layer.apply(variables, jnp.ones((2, 6, 6, 4)), rngs={"shift": jax.random.key(1)}).shape
      (2, 6, 6, 8)
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: None | int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    kind: str = "ps"
    weight_bits: int = 5
    sign_threshold: float | None = None
    quant_bits: int = 16
    frozen: bool = False
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``(*batch_dims, H, W, C)`` -> ``(*batch_dims, Ho, Wo, features)``."""
        kernel_size, strides, padding = layer_core.conv_args(
            self.kernel_size, self.strides, self.padding
        )
        layer_core.check_inputs(inputs, 3, "(*batch_dims, H, W, C)")
        shape = kernel_size + (jnp.shape(inputs)[-1], self.features)
        inputs, weight, key, bias = _shift_weight(self, inputs, shape)
        y = layer_core.batched_conv(
            lambda x: shift.shift_conv(
                x,
                weight,
                strides,
                padding,
                quant_bits=self.quant_bits,
                key=key,
                frozen=self.frozen,
            ),
            inputs,
        )
        return _shift_bias(y, bias, self.quant_bits)


class ShiftDense(nn.Module):
    """Bit-shift dense layer over the last axis: `ShiftConv`'s rules as a 1x1 layer (their
    `LinearShift` cannot run; their classifiers are 1x1 shift convolutions).

    Attributes: ``features`` and, as in `ShiftConv`, ``kind``, ``weight_bits``,
    ``sign_threshold``, ``quant_bits``, ``frozen``, ``use_bias``, ``dtype`` and
    ``param_dtype``. The latents have shape ``(din, features)``.
    """

    features: int
    kind: str = "ps"
    weight_bits: int = 5
    sign_threshold: float | None = None
    quant_bits: int = 16
    frozen: bool = False
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``(..., din)`` -> ``(..., features)``."""
        layer_core.check_inputs(inputs, 1, "(..., din)")
        shape = (jnp.shape(inputs)[-1], self.features)
        inputs, weight, key, bias = _shift_weight(self, inputs, shape)
        y = shift.shift_dense(
            inputs, weight, quant_bits=self.quant_bits, key=key, frozen=self.frozen
        )
        return _shift_bias(y, bias, self.quant_bits)
