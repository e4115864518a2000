"""The AdderNet model zoo in Flax linen: the paper's LeNet-5-BN, CIFAR ResNet-20/32, VGG-small
and ImageNet ResNet-18/50, each with one kind of layer (``layer=``, `LAYERS`): "adder" (the
AdderNet), "conv" (the CNN of the same architecture), "shift" (DeepShift: every conv and
dense layer a bit-shift layer, `adderjax.nn.ShiftConv`) or "shiftadd" (ShiftAddNet: each inner
layer a shift layer then an adder layer, `ShiftAddConv`; the first conv and the classifier
shift layers).

The networks follow the authors' PyTorch reference (huawei-noah/AdderNet ``resnet20.py`` and
``resnet50.py``) layer by layer: explicit PyTorch paddings, the first convolution and the
classifier kept multiplicative in the AdderNet, and submodule names that map a PyTorch
state-dict key mechanically (``layer1.0.downsample.0.adder`` is
``layer1_0/downsample_0/adder`` here). ShiftAddNet's ResNet-20 is their
``models/resnet20_shiftadd.py`` (GATECH-EIC/ShiftAddNet) with every ``nn.Conv2d`` a shift
layer, as their ``convert_to_shift`` leaves it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from adderjax import models
  >>> model = models.get_model("resnet20", num_classes=10)
  >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> variables["params"]["layer2_0"]["downsample_0"]["adder"].shape
  (1, 1, 16, 32)
  >>> jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).shape
  (2, 10)
  >>> shiftadd = models.get_model("resnet20", num_classes=10, layer="shiftadd")
  >>> variables = jax.eval_shape(lambda x: shiftadd.init(jax.random.key(0), x, train=False), x)
  >>> sorted(variables["params"]["layer1_0"]["conv1"])
  ['add', 'shift']

References:
  Chen et al., AdderNet: Do We Really Need Multiplications in Deep Learning? CVPR 2020,
  https://arxiv.org/abs/1912.13200
  You et al., ShiftAddNet: A Hardware-Inspired Deep Network, NeurIPS 2020,
  https://arxiv.org/abs/2010.12785
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from adderjax.batch_norm import BatchNorm
from adderjax.nn import AdderConv, AdderDense, ShiftConv, ShiftDense
from adderjax.shift import ShiftOptions

__all__ = [
    "LAYERS",
    "MODELS",
    "STAGE_OUTPUTS",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "LeNet5BN",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "ResNet32",
    "ResNet50",
    "ShiftAddConv",
    "ShiftAddDense",
    "VGGSmall",
    "check_layer",
    "get_model",
]

Array = Any
Dtype = Any
ModuleDef = Any
P = float | jax.Array | None

# kaiming_normal_(mode="fan_out", nonlinearity="relu"), the reference's init of every nn.Conv2d.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Conv(nn.Conv):
    """`flax.linen.Conv` that accepts and ignores ``p``, so a network calls every layer alike."""

    def __call__(self, inputs: Array, *, p: P = None) -> Array:
        del p  # p is an adder layer's norm; a multiplicative layer has none.
        return super().__call__(inputs)


class _Dense(nn.Dense):
    """`flax.linen.Dense` that accepts and ignores ``p`` (see `_Conv`)."""

    def __call__(self, inputs: Array, *, p: P = None) -> Array:
        del p
        return super().__call__(inputs)


LAYERS = ("conv", "adder", "shift", "shiftadd")


def check_layer(layer: str) -> None:
    """One-line error for a layer kind not in `LAYERS`."""
    if layer not in LAYERS:
        raise ValueError(f"layer={layer!r} is not one of {', '.join(map(repr, LAYERS))}")


class _ShiftConv(ShiftConv):
    """`ShiftConv` that accepts and ignores ``p`` (see `_Conv`)."""

    def __call__(self, inputs: Array, *, p: P = None) -> Array:
        del p
        return super().__call__(inputs)


class _ShiftDense(ShiftDense):
    """`ShiftDense` that accepts and ignores ``p`` (see `_Conv`)."""

    def __call__(self, inputs: Array, *, p: P = None) -> Array:
        del p
        return super().__call__(inputs)


class ShiftAddConv(nn.Module):
    """ShiftAddNet's layer (``resnet20_shiftadd.py``: ``conv3x3`` and the downsample): a shift
    conv (input -> ``features``, with the stride) then an adder conv (``features`` ->
    ``features``, stride 1, same size), no batch norm between.

    Attributes:
      features: output channels of both.
      kernel_size: of both (theirs: 3x3, and 1x1 in the downsample).
      shift_conv, adder_conv: the two layers' classes (`ShiftConv`, `AdderConv` with options).
      strides: the shift conv's.
      padding: the shift conv's; the adder conv pads to keep the size ("SAME", as their 3x3
        padding 1 and 1x1 padding 0 do).
    """

    features: int
    kernel_size: Sequence[int]
    shift_conv: ModuleDef
    adder_conv: ModuleDef
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"

    @nn.compact
    def __call__(self, x: Array, *, p: P = None) -> Array:
        x = self.shift_conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            name="shift",
        )(x)
        return self.adder_conv(self.features, self.kernel_size, padding="SAME", name="add")(x, p=p)


class ShiftAddDense(nn.Module):
    """`ShiftAddConv` for dense layers: a shift dense then an adder dense, both to ``features``.

    Attributes: ``features``, and ``shift_dense``, ``adder_dense`` (the layers' classes).
    """

    features: int
    shift_dense: ModuleDef
    adder_dense: ModuleDef

    @nn.compact
    def __call__(self, x: Array, *, p: P = None) -> Array:
        x = self.shift_dense(self.features, name="shift")(x)
        return self.adder_dense(self.features, name="add")(x, p=p)


def _shift_layers(model: nn.Module) -> tuple[ModuleDef, ModuleDef]:
    kw = dict(dtype=model.dtype, **model.shift_options.layer_kwargs())
    return partial(_ShiftConv, **kw), partial(_ShiftDense, **kw)


def _layers(model: nn.Module) -> tuple[ModuleDef, ModuleDef]:
    """The (conv, dense) of ``model``'s inner layers: where the layer kinds differ.

    Both are called as ``layer(x, p=p)``. The inner layers have no bias, as in the reference;
    the adder filters keep `AdderConv`'s N(0, 1) init, the CNN's convs the reference's kaiming,
    the shift latents their DeepShift init (`adderjax.shift`).
    """
    check_layer(model.layer)
    if model.layer == "conv":
        return (
            partial(_Conv, use_bias=False, dtype=model.dtype, kernel_init=_KAIMING_FAN_OUT),
            partial(_Dense, use_bias=False, dtype=model.dtype),
        )
    if model.layer == "shift":
        return _shift_layers(model)
    kw = dict(
        use_bias=False,
        dtype=model.dtype,
        input_grad=model.input_grad,
        filter_grad=model.filter_grad,
        implementation=model.implementation,
        interpret=model.interpret,
    )
    adder_conv, adder_dense = partial(AdderConv, **kw), partial(AdderDense, **kw)
    if model.layer == "adder":
        return adder_conv, adder_dense
    shift_conv, shift_dense = _shift_layers(model)
    return (
        partial(ShiftAddConv, shift_conv=shift_conv, adder_conv=adder_conv),
        partial(ShiftAddDense, shift_dense=shift_dense, adder_dense=adder_dense),
    )


def _outer_layers(model: nn.Module) -> tuple[ModuleDef, ModuleDef]:
    """The (conv, dense) of the first conv and the classifier: multiplicative in the CNN and
    the AdderNet (the paper), shift layers in DeepShift and ShiftAddNet (their
    `convert_to_shift` converts every conv and linear layer). Called as ``layer(features,
    ..., use_bias=...)``."""
    check_layer(model.layer)
    if model.layer in ("shift", "shiftadd"):
        return _shift_layers(model)
    return (
        partial(nn.Conv, use_bias=False, dtype=model.dtype, kernel_init=_KAIMING_FAN_OUT),
        partial(nn.Dense, dtype=model.dtype),
    )


def _norm(model: nn.Module, train: bool) -> ModuleDef:
    # PyTorch's BatchNorm2d: its statistics (`adderjax.batch_norm`), its momentum 0.1 (flax's
    # 0.9) and its eps 1e-5.
    return partial(
        BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=model.dtype,
    )


def _logits(x: Array) -> Array:
    """The classifier's output in float32 (bfloat16 and float16 models), or float64 where the
    model computes in float64: the loss never sees fewer digits than float32's."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _flatten_chw(x: Array) -> Array:
    # PyTorch flattens NCHW maps; the same (C, H, W) order makes a converted fc weight a plain
    # transpose, as for every other dense layer.
    return jnp.reshape(jnp.transpose(x, (0, 3, 1, 2)), (x.shape[0], -1))


class BasicBlock(nn.Module):
    """ResNet basic block (3x3, 3x3) of the reference ``resnet20.py``, with a projection shortcut.

    Attributes:
      features: output channels.
      conv: the inner conv-like layer (an `AdderConv` or a conv), called as ``conv(x, p=p)``.
      norm: the batch norm.
      strides: the stride of the first 3x3 and of the shortcut.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x: Array, *, p: P = None) -> Array:
        s = (self.strides, self.strides)
        y = self.conv(self.features, (3, 3), strides=s, padding=1, name="conv1")(x, p=p)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=1, name="conv2")(y, p=p)
        y = self.norm(name="bn2")(y)
        return nn.relu(y + _shortcut(self, x, self.features, p))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 to 4x features) of the reference ``resnet50.py``.

    The stride is on the 3x3 (torchvision's "ResNet v1.5"), as in the reference.

    Attributes: as `BasicBlock`; the block outputs ``4 * features`` channels.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    expansion = 4  # Not a field: the output width is 4 * features.

    @nn.compact
    def __call__(self, x: Array, *, p: P = None) -> Array:
        s = (self.strides, self.strides)
        y = self.conv(self.features, (1, 1), padding=0, name="conv1")(x, p=p)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), strides=s, padding=1, name="conv2")(y, p=p)
        y = nn.relu(self.norm(name="bn2")(y))
        out_features = self.expansion * self.features
        y = self.conv(out_features, (1, 1), padding=0, name="conv3")(y, p=p)
        y = self.norm(name="bn3")(y)
        return nn.relu(y + _shortcut(self, x, out_features, p))


def _shortcut(block: nn.Module, x: Array, out_features: int, p: P) -> Array:
    """The identity, or the reference's ``downsample`` (1x1 conv-like, BN) if the shape changes."""
    if block.strides == 1 and x.shape[-1] == out_features:
        return x
    s = (block.strides, block.strides)
    x = block.conv(out_features, (1, 1), strides=s, padding=0, name="downsample_0")(x, p=p)
    return block.norm(name="downsample_1")(x)


class ResNet(nn.Module):
    """ResNet of the AdderNet reference, for CIFAR (``resnet20.py``) or ImageNet (``resnet50.py``).

    The stem conv and the classifier ``fc`` (a 1x1 conv on the pooled map, followed by the
    reference's ``bn2`` batch norm on the logits) are multiplicative in the CNN and the
    AdderNet and shift layers in the other two; every other conv is of ``layer``'s kind.

    Attributes:
      num_classes: number of logits.
      stage_sizes: blocks per stage; stage i has ``num_filters * 2**i`` planes and stride 2
        except the first.
      block_cls: `BasicBlock` or `Bottleneck`.
      num_filters: planes of the first stage (and the stem's output channels).
      stem: "imagenet" (7x7 stride 2, BN, ReLU, 3x3 stride-2 max pool) or "cifar" (3x3, BN,
        ReLU).
      fc_bias: whether the classifier conv has a bias (the reference: ImageNet yes, CIFAR no).
      layer: one of `LAYERS`: "adder" (AdderNet), "conv" (the CNN of the same architecture),
        "shift" (DeepShift) or "shiftadd" (ShiftAddNet).
      shift_options: the shift layers' (`adderjax.shift.ShiftOptions`).
      dtype: the computation dtype; parameters are float32 and the logits are cast to float32
        (float64 models keep float64 logits).
      input_grad, filter_grad, implementation, interpret: passed to every adder layer.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_filters: int = 64
    stem: str = "imagenet"
    fc_bias: bool = True
    layer: str = "adder"
    shift_options: ShiftOptions = ShiftOptions()
    dtype: Dtype = jnp.float32
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool, p: P = None) -> Array:
        """Logits ``(N, num_classes)`` of NHWC images; ``p`` goes to every adder layer."""
        conv, _ = _layers(self)
        norm = _norm(self, train)
        fp_conv, _ = _outer_layers(self)
        if self.stem == "imagenet":
            x = fp_conv(self.num_filters, (7, 7), strides=(2, 2), padding=3, name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
            # flax pads a max pool with -inf, as PyTorch's MaxPool2d(3, 2, padding=1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "cifar":
            x = fp_conv(self.num_filters, (3, 3), padding=1, name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got stem={self.stem!r}")
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    features=self.num_filters * 2**i,
                    conv=conv,
                    norm=norm,
                    strides=2 if i > 0 and j == 0 else 1,
                    name=f"layer{i + 1}_{j}",
                )(x, p=p)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        x = fp_conv(self.num_classes, (1, 1), use_bias=self.fc_bias, name="fc")(x)
        x = norm(name="bn2")(x)
        return _logits(jnp.reshape(x, (x.shape[0], -1)))


class VGG(nn.Module):
    """VGG of 3x3 convs, each followed by BN and ReLU, a 2x2 max pool after each stage, then
    a dense classifier: the LQ-Nets VGG-small the AdderNet paper uses on CIFAR.

    The first conv and ``fc`` are multiplicative in the CNN and the AdderNet, shift layers in
    the other two. The convs are named
    ``conv1, conv2, ...`` and their batch norms ``bn1, bn2, ...`` in order.

    Attributes:
      num_classes: number of logits.
      stages: output channels of each conv, per stage.
      layer, shift_options, dtype, input_grad, filter_grad, implementation, interpret: as in
        `ResNet`.

    References:
      Zhang et al., LQ-Nets, ECCV 2018, https://arxiv.org/abs/1807.10029
    """

    num_classes: int
    stages: Sequence[Sequence[int]]
    layer: str = "adder"
    shift_options: ShiftOptions = ShiftOptions()
    dtype: Dtype = jnp.float32
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool, p: P = None) -> Array:
        """Logits ``(N, num_classes)`` of NHWC images; ``p`` goes to every adder layer."""
        conv, _ = _layers(self)
        norm = _norm(self, train)
        n = 0
        for stage in self.stages:
            for features in stage:
                n += 1
                if n == 1:
                    x = _outer_layers(self)[0](features, (3, 3), padding=1, name="conv1")(x)
                else:
                    x = conv(features, (3, 3), padding=1, name=f"conv{n}")(x, p=p)
                x = nn.relu(norm(name=f"bn{n}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = _outer_layers(self)[1](self.num_classes, name="fc", use_bias=True)(_flatten_chw(x))
        return _logits(x)


class LeNet5BN(nn.Module):
    """LeNet-5 with batch norm after every layer but the last, the AdderNet paper's MNIST net.

    conv1 5x5x6 (padding 2, multiplicative), conv2 5x5x16, fc1 120, fc2 84 (of ``layer``'s
    kind, no bias), each followed by BN and ReLU, with 2x2 max pools after the convs; fc3
    to ``num_classes`` is multiplicative with a bias. conv1 and fc3 are shift layers in the
    "shift" and "shiftadd" networks. Inputs are 28x28x1.

    With ``bottleneck=d`` a layer ``features`` of width d (of ``layer``'s kind, no
    bias, no ReLU) and its BN ``bn5`` come between fc2 and fc3: the LeNet++-style 2-d or 3-d
    features the paper plots (Figure 1) are the output of ``features``, before ``bn5``;
    ``"lenetpp"`` in `MODELS` is ``bottleneck=3``. The BN is what lets the AdderNet train: an
    adder layer's outputs are negative l1 distances of size ~ its fan-in, and fed straight to
    fc3 they gave logits in the hundreds and a network stuck at chance (measured on
    Fashion-MNIST); the CNN has the same BN, so the two stay one architecture.

    Attributes: as `VGG`, without ``stages``, with ``bottleneck``.
    """

    num_classes: int
    bottleneck: int | None = None
    layer: str = "adder"
    shift_options: ShiftOptions = ShiftOptions()
    dtype: Dtype = jnp.float32
    input_grad: str = "hardtanh"
    filter_grad: str = "full_precision"
    implementation: str | None = None
    interpret: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool, p: P = None) -> Array:
        """Logits ``(N, num_classes)`` of NHWC images; ``p`` goes to every adder layer."""
        conv, dense = _layers(self)
        outer_conv, outer_dense = _outer_layers(self)
        norm = _norm(self, train)
        x = outer_conv(6, (5, 5), padding=2, name="conv1")(x)
        x = nn.max_pool(nn.relu(norm(name="bn1")(x)), (2, 2), strides=(2, 2))
        x = conv(16, (5, 5), padding=0, name="conv2")(x, p=p)
        x = nn.max_pool(nn.relu(norm(name="bn2")(x)), (2, 2), strides=(2, 2))
        x = _flatten_chw(x)
        x = nn.relu(norm(name="bn3")(dense(120, name="fc1")(x, p=p)))
        x = nn.relu(norm(name="bn4")(dense(84, name="fc2")(x, p=p)))
        if self.bottleneck is not None:
            x = norm(name="bn5")(dense(self.bottleneck, name="features")(x, p=p))
        x = outer_dense(self.num_classes, use_bias=True, name="fc3")(x)
        return _logits(x)


ResNet20 = partial(
    ResNet, stage_sizes=(3, 3, 3), block_cls=BasicBlock, num_filters=16, stem="cifar", fc_bias=False
)
ResNet32 = partial(
    ResNet, stage_sizes=(5, 5, 5), block_cls=BasicBlock, num_filters=16, stem="cifar", fc_bias=False
)
# The reference's ResNet-50 head (fc with bias, BN on the logits) for ResNet-18 as well.
ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
VGGSmall = partial(VGG, stages=((128, 128), (256, 256), (512, 512)))

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5_bn": LeNet5BN,
    "resnet20": ResNet20,
    "resnet32": ResNet32,
    "vgg_small": VGGSmall,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    # LeNet-5-BN with 3-d features before the classifier, for the paper's Figure 1.
    "lenetpp": partial(LeNet5BN, bottleneck=3),
}


def _resnet_stage_outputs(stage_sizes: Sequence[int], last_conv: str) -> tuple[str, ...]:
    return tuple(f"layer{i + 1}_{n - 1}/{last_conv}" for i, n in enumerate(stage_sizes))


# The last inner (adder, in an AdderNet) layer of each stage, by model name: where feature
# distillation (`adderjax.distill`, PKKD) compares student and teacher by default. LeNet-5-BN
# has no stages; its three adder layers are its stages.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "lenet5_bn": ("conv2", "fc1", "fc2"),
    "lenetpp": ("conv2", "fc1", "fc2"),
    "resnet20": _resnet_stage_outputs((3, 3, 3), "conv2"),
    "resnet32": _resnet_stage_outputs((5, 5, 5), "conv2"),
    "vgg_small": ("conv2", "conv4", "conv6"),
    "resnet18": _resnet_stage_outputs((2, 2, 2, 2), "conv2"),
    "resnet50": _resnet_stage_outputs((3, 4, 6, 3), "conv3"),
}


def get_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name`` in `MODELS`, built with ``kwargs`` (e.g. num_classes,
    ``layer=`` one of `LAYERS`).

    Raises:
      ValueError: for a name not in `MODELS` or a ``layer`` not in `LAYERS`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name={name!r}; known models: {', '.join(MODELS)}")
    check_layer(kwargs.get("layer", "adder"))
    return MODELS[name](**kwargs)
