"""Distillation of an AdderNet from a CNN: the kernel feature maps, the alignment, the losses.

PKKD (Xu et al., NeurIPS 2020) distils a CNN teacher of the same architecture into an AdderNet
student, on the logits and on intermediate layers. An adder layer's output is a negative l1
distance between input patch and filter (Laplacian-like), a convolution's an inner product
(Gaussian-like), so the two are compared after a kernel of each layer's own distance:

    student (adder):  k_a = exp(-||x - f||_1 / (sigma_a * n)) = exp(y_adder / (sigma_a * n))
    teacher (conv):   k_c = exp(-||x - f||_2^2 / (2 sigma_c^2 n)),
                      ||x - f||_2^2 = ||x||^2 - 2 y_conv + ||f||^2

where n is the layer's fan-in (kh * kw * cin, or din for a dense layer), so sigma_a and sigma_c
are per-term widths that suit every layer alike. Both maps come from what the layer computed
anyway: its output y, the patch norms ||x||^2 of its input (a windowed sum of x^2) and the
filter norms ||f||^2. A 1x1 linear map (`align`), trained with the student and used in
training only, aligns the student's map with the teacher's before the squared error.

`capture` records the inputs and outputs of named layers during any `apply`, so none of the
model zoo's networks needs changing to be distilled.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from adderjax import distill
  >>> y_adder = -jnp.array([[0.0, 9.0]])           # -||x - f||_1 of two filters, n = 9
  >>> [round(float(v), 4) for v in distill.laplacian_kernel_map(y_adder, fan_in=9, sigma=1.0)[0]]
  [1.0, 0.3679]
  >>> distill.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=4.0)
  Array(0., dtype=float32)

References:
  Xu et al., Kernel Based Progressive Distillation for Adder Neural Networks, NeurIPS 2020,
  https://arxiv.org/abs/2009.13044
  Hinton et al., Distilling the Knowledge in a Neural Network, 2015,
  https://arxiv.org/abs/1503.02531
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from adderjax import layer_core

__all__ = [
    "FEATURES",
    "Tap",
    "align",
    "capture",
    "feature_loss",
    "feature_map",
    "filter_sq_norms",
    "gaussian_kernel_map",
    "identity_alignment",
    "kd_loss",
    "laplacian_kernel_map",
    "patch_sq_norms",
    "standardize",
]

Features = Literal["kernel", "plain", "none"]
# What is compared at a distilled layer: the kernel maps above ("kernel", PKKD), the layers'
# outputs standardised per channel ("plain", the ablation without kernels), or nothing.
FEATURES: tuple[str, ...] = ("kernel", "plain", "none")


def laplacian_kernel_map(adder_out: jax.Array, *, fan_in: int, sigma: float) -> jax.Array:
    """``exp(y / (sigma * fan_in))`` of an adder layer's output ``y = -||x - f||_1``.

    The Laplacian kernel of input patch and filter, ``exp(-||x - f||_1 / (sigma * n))``, read
    off the layer's output (no bias). Values lie in (0, 1].
    """
    _check_positive(sigma=sigma, fan_in=fan_in)
    return jnp.exp(adder_out / (sigma * fan_in))


def gaussian_kernel_map(
    conv_out: jax.Array,
    patch_sq: jax.Array,
    filter_sq: jax.Array,
    *,
    fan_in: int,
    sigma: float,
) -> jax.Array:
    """``exp(-||x - f||_2^2 / (2 sigma^2 fan_in))`` of a convolution (or dense) layer.

    ``||x - f||^2 = ||x||^2 - 2 x.f + ||f||^2`` from the layer's output ``x.f`` (no bias),
    the patch norms ``patch_sq`` (shape ``(..., 1)``, `patch_sq_norms`) and the filter norms
    ``filter_sq`` (shape ``(features,)``, `filter_sq_norms`). Rounding can make the distance
    slightly negative; it is clipped at 0, so values lie in (0, 1].
    """
    _check_positive(sigma=sigma, fan_in=fan_in)
    rank = conv_out.ndim  # broadcast explicitly (rank promotion may be an error)
    filter_sq = jnp.reshape(filter_sq, (1,) * (rank - 1) + (-1,))
    patch_sq = jnp.reshape(patch_sq, (1,) * (rank - patch_sq.ndim) + patch_sq.shape)
    sq = jnp.maximum(patch_sq - 2.0 * conv_out + filter_sq, 0.0)
    return jnp.exp(-sq / (2.0 * sigma**2 * fan_in))


def patch_sq_norms(
    x: jax.Array,
    kernel_size: Sequence[int] | None = None,
    strides: Sequence[int] = (1, 1),
    padding: Any = "VALID",
) -> jax.Array:
    """``||x_patch||^2`` of every input patch a layer sees, shape ``(..., Ho, Wo, 1)``.

    For a convolution (``kernel_size`` given) a windowed sum of ``sum_c x^2`` with the layer's
    strides and padding (padded zeros add nothing, as in the convolution); for a dense layer
    (``kernel_size=None``) ``sum_i x_i^2`` over the last axis, shape ``(..., 1)``.
    """
    sq = jnp.sum(jnp.square(_at_least_f32(x)), axis=-1, keepdims=True)
    if kernel_size is None:
        return sq
    kh, kw = kernel_size
    padding = layer_core.canonicalize_padding(padding)
    if not isinstance(padding, str):
        padding = ((0, 0), *padding, (0, 0))
    return jax.lax.reduce_window(
        sq,
        0.0,
        jax.lax.add,
        (1, kh, kw, 1),
        (1, *strides, 1),
        padding,
    )


def filter_sq_norms(kernel: jax.Array) -> jax.Array:
    """``||f||^2`` of every filter (the last axis of a conv or dense kernel): ``(features,)``."""
    k = _at_least_f32(kernel)
    return jnp.sum(jnp.square(k), axis=tuple(range(k.ndim - 1)))


def standardize(features: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Zero mean, unit variance per channel (the last axis) over every other axis."""
    f = _at_least_f32(features)
    axes = tuple(range(f.ndim - 1))
    mean = jnp.mean(f, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(f - mean), axis=axes, keepdims=True)
    return (f - mean) * jax.lax.rsqrt(var + eps)


def identity_alignment(channels: int) -> jax.Array:
    """The (channels, channels) identity: the alignment's initial value."""
    return jnp.eye(channels, dtype=jnp.float32)


def align(features: jax.Array, matrix: jax.Array) -> jax.Array:
    """The 1x1 linear alignment ``features @ matrix`` over the last (channel) axis."""
    if features.shape[-1] != matrix.shape[0]:
        raise ValueError(
            f"{features.shape=} does not match the alignment's {matrix.shape=}: its first "
            f"axis must be the features' channels"
        )
    return jnp.einsum("...c,cd->...d", features, matrix)


def feature_loss(student_map: jax.Array, teacher_map: jax.Array) -> jax.Array:
    """``mean((student_map - teacher_map)^2)``; gradients stop at the teacher's map."""
    if student_map.shape != teacher_map.shape:
        raise ValueError(
            f"{student_map.shape=} and {teacher_map.shape=} differ: a distilled layer must "
            f"have the same output shape in both networks"
        )
    diff = _at_least_f32(student_map) - jax.lax.stop_gradient(teacher_map)
    return jnp.mean(jnp.square(diff))


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float):
    """Hinton's logit distillation: ``T^2 * mean_batch KL(softmax(t / T) || softmax(s / T))``.

    The T^2 keeps its gradients the size of the cross-entropy's as T changes; gradients stop
    at the teacher's logits.
    """
    _check_positive(temperature=temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{student_logits.shape=} and {teacher_logits.shape=} differ")
    t = jax.lax.stop_gradient(_at_least_f32(teacher_logits)) / temperature
    log_p_t = jax.nn.log_softmax(t, axis=-1)
    log_p_s = jax.nn.log_softmax(_at_least_f32(student_logits) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return temperature**2 * jnp.mean(kl)


class Tap(NamedTuple):
    """What `capture` recorded of one layer's call.

    Attributes:
      inputs: the layer's input.
      outputs: its output.
      kernel: its filter (``adder`` of an adder layer, ``kernel`` of a conv or dense layer).
      adder: whether it is an adder layer.
      kernel_size, strides, padding: the window of a convolution; None for a dense layer.
    """

    inputs: jax.Array
    outputs: jax.Array
    kernel: jax.Array
    adder: bool
    kernel_size: tuple[int, int] | None
    strides: tuple[int, int] | None
    padding: Any

    @property
    def fan_in(self) -> int:
        return math.prod(self.kernel.shape[:-1])


def _tap(module: nn.Module, inputs, outputs) -> Tap:
    params = module.variables.get("params", {})
    adder = "adder" in params
    if not adder and "kernel" not in params:
        raise ValueError(
            f"layer {'/'.join(module.path)!r} ({type(module).__name__}) has no 'adder' or "
            f"'kernel' parameter: only conv, dense and adder layers can be distilled"
        )
    if params.get("bias") is not None:
        raise ValueError(
            f"layer {'/'.join(module.path)!r} has a bias: its kernel map needs the bare "
            f"distance (the model zoo's inner layers have none)"
        )
    kernel = params["adder" if adder else "kernel"]
    window = (None, None, None)
    if kernel.ndim == 4:
        kh, kw = kernel.shape[:2]
        s = module.strides if module.strides is not None else 1
        strides = (s, s) if isinstance(s, int) else tuple(s)
        window = ((kh, kw), strides, module.padding)
    return Tap(inputs, outputs, kernel, adder, *window)


@contextlib.contextmanager
def capture(paths: Iterable[str]) -> Iterator[dict[str, Tap]]:
    """Records, while active, the calls of the layers at ``paths`` ("layer3_2/conv2").

    Yields a dict filled as the layers run, inside any ``model.apply`` (jitted or not, under
    ``jax.grad``: the recorded arrays belong to the trace that computed them, so use them in
    the same function). A layer called more than once keeps its last call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from adderjax import distill, models
      >>> model = models.get_model("lenet5_bn", num_classes=10)
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> variables = model.init(jax.random.key(0), x, train=False)
      >>> with distill.capture(["conv2", "fc1"]) as taps:
      ...     _ = model.apply(variables, x, train=False)
      >>> taps["conv2"].outputs.shape, taps["conv2"].adder, taps["fc1"].fan_in
      ((2, 10, 10, 16), True, 400)
    """
    wanted = set(paths)
    taps: dict[str, Tap] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            path = "/".join(context.module.path)
            if path in wanted:
                taps[path] = _tap(context.module, args[0], out)
        return out

    with nn.intercept_methods(interceptor):
        yield taps


def feature_map(
    tap: Tap, features: Features, *, sigma_a: float = 1.0, sigma_c: float = 1.0
) -> jax.Array:
    """The map of one recorded layer that distillation compares.

    "kernel": `laplacian_kernel_map` of an adder layer, `gaussian_kernel_map` of a conv or
    dense layer; "plain": the output `standardize`d.
    """
    if features == "plain":
        return standardize(tap.outputs)
    if features != "kernel":
        raise ValueError(f"features must be 'kernel' or 'plain', got features={features!r}")
    y = _at_least_f32(tap.outputs)
    if tap.adder:
        return laplacian_kernel_map(y, fan_in=tap.fan_in, sigma=sigma_a)
    patch = patch_sq_norms(tap.inputs, tap.kernel_size, tap.strides or (1, 1), tap.padding)
    return gaussian_kernel_map(
        y, patch, filter_sq_norms(tap.kernel), fan_in=tap.fan_in, sigma=sigma_c
    )


def _at_least_f32(x: jax.Array) -> jax.Array:
    """x in float32, or float64 where it is float64: the maps and losses never compute in
    bfloat16 or float16, and a float64 run keeps its digits."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {name}={value!r}")
