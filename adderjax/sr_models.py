"""Super-resolution networks, VDSR and the EDSR baseline, as AdderSR (``layer="adder"``) or as
the CNN of the same architecture (``layer="conv"``).

AdderSR (Song et al., CVPR 2021) keeps the first and last layers and the upsampler
multiplicative and makes every inner convolution an adder layer, with two additions:

* a **self-shortcut** per adder layer, ``y = BN(adder(x)) + x``: an adder layer cannot
  learn the identity mapping that SR networks depend on (the output of -|x - w| is never
  positive), its shortcut gives it for free. BN follows every adder layer, also where the
  CNN has none.
* a learnable **power activation** ``sign(y) |y| ** alpha`` after each adder layer
  (`PowerActivation`), to bring back the high frequencies that the l1 distance flattens.

An adder layer is thus adder -> BN -> + x -> ReLU -> power activation: the order the
AdderNet maintainers give (huawei-noah/AdderNet issues #52 and #67, `AdderUnit`), with the
ReLU where the CNN's conv has one (VDSR's every inner layer, the first conv of EDSR's blocks):
a ReLU after ``+ x`` where the CNN has none (the second conv of EDSR's blocks, its body's end)
would clip the negative half of the identity the shortcut carries, at every layer (measured:
0.9 dB lower after 500 steps, docs/super_resolution.md). Both switches can be turned off
for the paper's ablation. The CNN variants are VDSR and EDSR as published: 3x3
convolutions with biases, no BN.

Both networks take RGB images in [0, 255] (N, h, w, 3) and return (N, s h, s w, 3) in
[0, 255] (not clipped). EDSR subtracts DIV2K's RGB mean and works in [0, 255] (its
``rgb_range=255``); VDSR upsamples by MATLAB's bicubic (`adderjax.resize`), works in [0, 1]
and adds its output to the upsampled image (the global residual).

References:
  Song et al., AdderSR: Towards Energy Efficient Image Super-Resolution, CVPR 2021,
  https://arxiv.org/abs/2009.08891
  Kim et al., VDSR, CVPR 2016, https://arxiv.org/abs/1511.04587
  Lim et al., EDSR, CVPRW 2017, https://arxiv.org/abs/1707.02921
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from adderjax import resize
from adderjax.batch_norm import BatchNorm
from adderjax.nn import AdderConv

__all__ = [
    "DIV2K_RGB_MEAN",
    "EDSR",
    "SCALES",
    "SR_LAYERS",
    "SR_MODELS",
    "VDSR",
    "AdderUnit",
    "PowerActivation",
    "check_sr_layer",
    "get_sr_model",
    "pixel_shuffle",
]

Array = Any
P = float | jax.Array | None

# The layer kinds of the SR networks (`adderjax.models.LAYERS` has the shift kinds too; no
# shift SR network is built).
SR_LAYERS = ("adder", "conv")


def check_sr_layer(layer: str) -> None:
    """One-line error for a layer kind not in `SR_LAYERS`."""
    if layer not in SR_LAYERS:
        raise ValueError(
            f"layer={layer!r} is not one of {', '.join(map(repr, SR_LAYERS))} for an SR network"
        )


# The RGB mean of DIV2K's training images (EDSR's MeanShift), in [0, 1].
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SCALES = (2, 3, 4)
# PyTorch's default init of nn.Conv2d, which EDSR and the VDSR ports keep: weights and biases
# uniform in +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)).
_TORCH_KERNEL = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias(key, shape, dtype=jnp.float32, *, fan_in: int):
    bound = 1 / fan_in**0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class PowerActivation(nn.Module):
    """``sign(x) |x| ** alpha`` with one learned ``alpha`` per layer, starting at
    `init_alpha` (1: the identity). Zero stays zero, with zero gradients there."""

    init_alpha: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        alpha = self.param("alpha", nn.initializers.constant(self.init_alpha), ())
        magnitude = jnp.abs(x)
        nonzero = magnitude > 0
        # The double where keeps log(0) out of the gradient of alpha and of x.
        safe = jnp.where(nonzero, magnitude, jnp.ones_like(magnitude))
        powered = jnp.exp(alpha.astype(x.dtype) * jnp.log(safe))
        return jnp.where(nonzero, jnp.sign(x) * powered, jnp.zeros_like(x))


class AdderUnit(nn.Module):
    """One inner layer of an SR network: a 3x3 adder layer (adder -> BN -> + x -> ReLU ->
    power activation; the shortcut and the power activation optional) or, for the CNN, a
    3x3 conv with bias (-> ReLU where `relu`).

    Attributes:
      features: output channels (equal to the input's when `self_shortcut`).
      layer: "adder" (AdderSR) or "conv" (the CNN), one of `SR_LAYERS`.
      relu: a ReLU after the layer (where the published CNN has one), after the shortcut in
        an adder layer.
      self_shortcut, power_activation: AdderSR's two additions (adder layers only).
      train: batch statistics (True) or running averages (False) in BN.
      layer_kwargs: passed to `adderjax.nn.AdderConv` (input_grad, implementation, ...).
    """

    features: int
    layer: str = "adder"
    relu: bool = True
    self_shortcut: bool = True
    power_activation: bool = True
    train: bool = False
    dtype: Any = jnp.float32
    layer_kwargs: tuple = ()

    @nn.compact
    def __call__(self, x: Array, *, p: P = None) -> Array:
        check_sr_layer(self.layer)
        if self.layer == "conv":
            y = _conv(self.features, x.shape[-1], self.dtype, "conv")(x)
            return nn.relu(y) if self.relu else y
        y = AdderConv(
            self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="adder",
            **dict(self.layer_kwargs),
        )(x, p=p)  # fmt: skip
        # PyTorch's BatchNorm2d statistics and momentum, as the classification models.
        y = BatchNorm(
            use_running_average=not self.train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
            name="bn",
        )(y)  # fmt: skip
        if self.self_shortcut:
            if x.shape[-1] != self.features:
                raise ValueError(
                    f"a self-shortcut needs as many input as output channels, got "
                    f"{x.shape[-1]} -> {self.features}"
                )
            y = y + x
        if self.relu:
            y = nn.relu(y)
        if self.power_activation:
            y = PowerActivation(name="power")(y)
        return y


def _conv(features: int, in_features: int, dtype, name: str) -> nn.Conv:
    """A 3x3 conv with bias, initialised as PyTorch's."""
    return nn.Conv(
        features, (3, 3), padding=1, dtype=dtype, kernel_init=_TORCH_KERNEL,
        bias_init=partial(_torch_bias, fan_in=9 * in_features), name=name,
    )  # fmt: skip


def pixel_shuffle(x: Array, r: int) -> Array:
    """PyTorch's ``PixelShuffle(r)`` in NHWC: (N, H, W, C r^2) -> (N, r H, r W, C), with
    PyTorch's channel order (so a converted upsampler weight needs no permutation)."""
    n, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle({r}) needs channels divisible by {r * r}, got {c}")
    x = jnp.reshape(x, (n, h, w, c // (r * r), r, r))
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
    return jnp.reshape(x, (n, h * r, w * r, c // (r * r)))


def _check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got scale={scale!r}")


def _mean(dtype) -> jax.Array:
    return jnp.asarray(DIV2K_RGB_MEAN, dtype).reshape(1, 1, 1, 3) * 255


class _SRBase(nn.Module):
    """What VDSR and EDSR share: the scale, the switches, the adder layers' options."""

    scale: int = 2
    features: int = 64
    layer: str = "adder"
    self_shortcut: bool = True
    power_activation: bool = True
    dtype: Any = jnp.float32
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    def unit(self, train: bool) -> Callable[..., AdderUnit]:
        kwargs = (
            ("input_grad", self.input_grad),
            ("filter_grad", self.filter_grad),
            ("implementation", self.implementation),
            ("interpret", self.interpret),
        )
        return partial(
            AdderUnit,
            self.features,
            layer=self.layer,
            self_shortcut=self.self_shortcut,
            power_activation=self.power_activation,
            train=train,
            dtype=self.dtype,
            layer_kwargs=kwargs,
        )

    def conv(self, features: int, in_features: int, name: str) -> nn.Conv:
        """A multiplicative 3x3 conv with bias (first, last and upsampler layers)."""
        return _conv(features, in_features, self.dtype, name)


class VDSR(_SRBase):
    """VDSR: ``bicubic(x) + net(bicubic(x))`` with `depth` 3x3 layers of `features` channels.

    ``conv_in`` (multiplicative, ReLU), ``body_1 .. body_{depth-2}`` (`AdderUnit` with ReLU),
    ``conv_out`` (multiplicative, to RGB). The network sees the upsampled image minus the
    DIV2K mean, divided by 255.
    """

    depth: int = 20

    @nn.compact
    def __call__(self, x: Array, *, train: bool, p: P = None) -> Array:
        _check_scale(self.scale)
        if self.depth < 3:
            raise ValueError(f"VDSR needs depth >= 3, got depth={self.depth}")
        x = jnp.asarray(x, self.dtype)
        h, w = x.shape[-3:-1]
        up = resize.resize_axes(x, (h * self.scale, w * self.scale), (self.scale,) * 2)
        z = (up - _mean(self.dtype)) / 255
        z = nn.relu(self.conv(self.features, x.shape[-1], "conv_in")(z))
        unit = self.unit(train)
        for i in range(1, self.depth - 1):
            z = unit(relu=True, name=f"body_{i}")(z, p=p)
        residual = self.conv(x.shape[-1], self.features, "conv_out")(z)
        return (up + 255 * residual).astype(jnp.float32)


class EDSR(_SRBase):
    """The EDSR baseline: ``head``, `num_blocks` residual blocks (``block_i/unit1`` with
    ReLU, ``block_i/unit2`` without, times `res_scale`, plus the block's input), ``body_end``,
    the global skip from the head, then the multiplicative upsampler (``upsample_j``: a conv
    to 4 or 9 times the channels and `pixel_shuffle`; x4 is two x2 stages) and ``tail``.
    """

    num_blocks: int = 16
    # The blocks' residual scaling: None is 0.1 for AdderSR with self-shortcuts and 1 (the
    # EDSR baseline's) otherwise. With a self-shortcut in both of a block's adder layers the
    # block's branch already carries its input, so its output is about (1 + res_scale) times
    # the input: 1 would double the features in every block (2^16 in 16 blocks) and bury the
    # unit-scale BN terms (measured: 31.5 dB against 34.7 dB with 0.1 after 500 steps,
    # docs/super_resolution.md); 0.1 is EDSR's own value for its large model.
    res_scale: float | None = None
    # The pixel range the network works in (EDSR's --rgb_range): 255 as EDSR's baseline;
    # 1 keeps the features near the unit scale of BN, where AdderSR's self-shortcuts add
    # commensurate terms.
    rgb_range: float = 255.0

    @property
    def block_scale(self) -> float:
        """`res_scale`, or its default where None."""
        if self.res_scale is not None:
            return self.res_scale
        return 0.1 if self.layer == "adder" and self.self_shortcut else 1.0

    @nn.compact
    def __call__(self, x: Array, *, train: bool, p: P = None) -> Array:
        _check_scale(self.scale)
        if self.num_blocks < 1:
            raise ValueError(f"EDSR needs num_blocks >= 1, got num_blocks={self.num_blocks}")
        mean = _mean(self.dtype)
        to_range = self.rgb_range / 255
        x = (jnp.asarray(x, self.dtype) - mean) * to_range
        head = self.conv(self.features, x.shape[-1], "head")(x)
        unit = self.unit(train)
        z = head
        for i in range(self.num_blocks):
            y = unit(relu=True, name=f"block_{i}_unit1")(z, p=p)
            y = unit(relu=False, name=f"block_{i}_unit2")(y, p=p)
            z = z + self.block_scale * y
        z = unit(relu=False, name="body_end")(z, p=p) + head
        stages = (2, 2) if self.scale == 4 else (self.scale,)
        for j, r in enumerate(stages):
            z = pixel_shuffle(
                self.conv(self.features * r * r, self.features, f"upsample_{j}")(z), r
            )
        out = self.conv(x.shape[-1], self.features, "tail")(z) / to_range + mean
        return out.astype(jnp.float32)


SR_MODELS: dict[str, Callable[..., nn.Module]] = {"vdsr": VDSR, "edsr": EDSR}


def get_sr_model(name: str, **kwargs) -> nn.Module:
    """The SR model registered as ``name`` in `SR_MODELS`, built with ``kwargs``.

    Raises:
      ValueError: for a name not in `SR_MODELS` or a ``layer`` not in `SR_LAYERS`.
    """
    if name not in SR_MODELS:
        raise ValueError(f"unknown SR model name={name!r}; known: {', '.join(SR_MODELS)}")
    check_sr_layer(kwargs.get("layer", "adder"))
    return SR_MODELS[name](**kwargs)
