"""Bit-shift weights (DeepShift, Elhoushi et al., arXiv:1905.13298), as ShiftAddNet uses them.

A shift layer's weights are signed powers of two (or zero), so a multiplication by one is a
bit shift. Two parameterisations, each exactly as ShiftAddNet's code (GATECH-EIC/ShiftAddNet
at 654a632; "their code" below) computes it and its gradient:

* DeepShift-PS (`ps_weight`, `deepshift/modules.py:333-342`): a float shift latent P and a
  float sign latent S are trained; P is clipped to `shift_range` ([-14, 0] at their default
  5 weight bits) and rounded half to even (``torch.round``), S is rounded and signed, so the
  sign is ternary; W = sign * 2^P. The gradients are straight through every rounding and
  clip (`deepshift/ste.py`), with `unsym_grad_mul` (ste.py:119-131) giving the sign the
  weight's own gradient: dL/dP = dL/dW * sign * 2^P * ln 2, dL/dS = dL/dW (a weight whose
  sign is 0 gets no shift gradient).
* DeepShift-Q (`q_weight`, `deepshift/modules_q.py:117-119`): a float weight, |w| clipped to
  [2^-(2^(bits-1) - 1), 1] ([2^-15, 1] at 5 bits; zero stays zero), then rounded to the
  nearest power of two in the log domain, sign(w) * 2^round(log2 |w|); gradient straight
  through.

Their activations are rounded down to fixed point before a shift layer (`fixed_point`,
`deepshift/utils.py:6-17`, 16 fraction bits, straight through), and a shift layer's output
gradient is quantised to 16 bits with stochastic rounding (`quantize_grad`,
`adder/quantize.py:91-118`).

What their code does that a functional version does elsewhere: their forward clips P (and,
with a sign threshold, ternarises S; and clips Q's |w|) in place, so the stored latents stay
in range and the optimizer carries on from there; here the forward clips and rounds a copy,
and `project_latents` after each update does what their in-place writes do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "FROZEN_RANGE",
    "ShiftOptions",
    "check_frozen",
    "check_layer_args",
    "effective_weight",
    "fixed_point",
    "frozen_init_params",
    "init_params",
    "latent_kind",
    "project_latents",
    "ps_weight",
    "q_weight",
    "quantize_grad",
    "round_act",
    "round_to_fixed",
    "shift_conv",
    "shift_dense",
    "shift_range",
    "shift_weights",
]

KINDS = ("ps", "q")
# A shift layer's latents, by kind: how layers name them and how a parameter tree shows them.
LATENTS = {"ps": ("shift", "sign"), "q": ("shift_weight",)}
LN2 = math.log(2.0)
# The shifts of their frozen layers (`se_shift/conv_mask_shift.py:81-85`): the powers of two
# down to their --threshold 5e-3, 2^-7.
FROZEN_RANGE = (-7, 0)


def shift_range(weight_bits: int, kind: str = "ps") -> tuple[int, int]:
    """(lowest, highest) shift of `weight_bits`-bit shift weights: PS spends a code on the
    ternary sign's zero, [-(2^(bits-1) - 2), 0] (modules.py:258); Q has a binary sign,
    [-(2^(bits-1) - 1), 0] (modules_q.py:83)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(map(repr, KINDS))}")
    if not isinstance(weight_bits, int) or isinstance(weight_bits, bool) or weight_bits < 2:
        raise ValueError(f"weight_bits={weight_bits!r} is invalid: expected an integer >= 2")
    spare = 2 if kind == "ps" else 1
    return -(2 ** (weight_bits - 1) - spare), 0


def round_to_fixed(x: jax.Array, fraction_bits: int = 16, integer_bits: int = 16) -> jax.Array:
    """`deepshift/utils.py:6-17`: x rounded down to a multiple of 2^-fraction_bits and clipped
    to [-2^(integer_bits-1), 2^(integer_bits-1) - 1]; ``integer_bits=1`` gives sign(x) - 1,
    as theirs does."""
    if integer_bits < 1:
        raise ValueError(f"integer_bits={integer_bits} is invalid: expected an integer >= 1")
    x = jnp.asarray(x)
    if integer_bits == 1:
        return jnp.sign(x) - 1
    delta = 2.0 ** (-fraction_bits)
    bound = 2.0 ** (integer_bits - 1)
    return jnp.clip(jnp.floor(x / delta) * delta, -bound, bound - 1)


def _straight_through(forward):
    """``forward(x, option)`` as a `jax.custom_vjp` whose gradient passes straight through to
    ``x`` (their `ste` functions' backward: the cotangent unchanged)."""
    function = jax.custom_vjp(forward, nondiff_argnums=(1,))
    function.defvjp(lambda x, option: (forward(x, option), None), lambda _, __, g: (g,))
    return function


@_straight_through
def fixed_point(x: jax.Array, fraction_bits: int = 16) -> jax.Array:
    """`round_to_fixed` with 16 integer bits, its gradient straight through
    (`ste.round_fixed_point`, ste.py:40-50): a shift layer's input."""
    return round_to_fixed(x, fraction_bits, 16)


@_straight_through
def round_act(x: jax.Array, bits: int = 16) -> jax.Array:
    """The input rounding of their frozen shift layers (`se_shift/conv_mask_shift.py:24-31`):
    x rounded to the *nearest* multiple of 2^-(bits-1) (half to even, as ``torch.round``), no
    clip, gradient straight through."""
    scale = 2.0 ** (bits - 1)
    return jnp.round(jnp.asarray(x) * scale) / scale


def latent_kind(tree: Any) -> str | None:
    """The kind of shift layer whose latents `tree` (a mapping) holds, or None."""
    if isinstance(tree, Mapping):
        for kind, names in LATENTS.items():
            if all(name in tree for name in names):
                return kind
    return None


def _clip_magnitude(weight: jax.Array, weight_bits: int) -> jax.Array:
    """|w| clipped to DeepShift-Q's [2^low, 1] (`ste.clampabs`; zero becomes 2^low here, its
    callers keep it zero)."""
    low, high = shift_range(weight_bits, "q")
    return jnp.clip(jnp.abs(weight), 2.0**low, 2.0**high)


def _power_of_two(exponent: jax.Array) -> jax.Array:
    """2^exponent for integral float exponents, exactly (XLA:CPU's exp2 is off by ulps)."""
    return jnp.ldexp(jnp.ones_like(exponent), exponent.astype(jnp.int32))


def _ternary_sign(sign: jax.Array, threshold: float | None) -> jax.Array:
    if threshold is None:  # ste.sign(ste.round(S)): round half to even, then sign
        return jnp.sign(jnp.round(sign))
    # ste.myround (ste.py:5-23): -1 below -threshold, +1 above threshold, else 0.
    return jnp.where(sign < -threshold, -1.0, jnp.where(sign > threshold, 1.0, 0.0)).astype(
        sign.dtype
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def ps_weight(
    shift: jax.Array, sign: jax.Array, weight_bits: int = 5, sign_threshold: float | None = None
) -> jax.Array:
    """DeepShift-PS's weight sign * 2^round(clip(shift)) from its two latents (same shape).

    Args:
      shift: the float shift latent P; clipped to `shift_range(weight_bits, "ps")`.
      sign: the float sign latent S; ternary sign(round(S)), or with `sign_threshold` t:
        -1 below -t, +1 above t, 0 between (their ``--sign_threshold_ps``).
      weight_bits: their ``--weight_bits`` (5).
      sign_threshold: None (their default) or t >= 0.

    The gradient is theirs: d/dshift = g * sign * 2^shift * ln 2, d/dsign = g.
    """
    return _ps_forward(shift, sign, weight_bits, sign_threshold)[0]


def _ps_forward(shift, sign, weight_bits, sign_threshold):
    shift, sign = jnp.asarray(shift), jnp.asarray(sign)
    if shift.shape != sign.shape:
        raise ValueError(f"shift {shift.shape} and sign {sign.shape} must have one shape")
    if sign_threshold is not None and not sign_threshold >= 0:
        raise ValueError(f"sign_threshold={sign_threshold!r} is invalid: expected None or >= 0")
    low, high = shift_range(weight_bits, "ps")
    power = _power_of_two(jnp.round(jnp.clip(shift, low, high)))
    signs = _ternary_sign(sign, sign_threshold)
    return power * signs, (power, signs)


def _ps_bwd(weight_bits, sign_threshold, residuals, g):
    power, signs = residuals
    return g * signs * power * jnp.asarray(LN2, g.dtype), g


ps_weight.defvjp(_ps_forward, _ps_bwd)


@_straight_through
def q_weight(weight: jax.Array, weight_bits: int = 5) -> jax.Array:
    """DeepShift-Q's weight: |w| clipped to [2^low, 1] (`shift_range(weight_bits, "q")`;
    zero stays zero, as `ste.clampabs` leaves it), then sign(w) * 2^round(log2 |w|); the
    gradient straight through."""
    weight = jnp.asarray(weight)
    magnitude = _clip_magnitude(weight, weight_bits)
    shift = jnp.round(jnp.log(magnitude) / LN2)  # utils.get_shift_and_sign: log(|w|) / log(2)
    return jnp.where(weight == 0, jnp.zeros_like(weight), jnp.sign(weight) * _power_of_two(shift))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def quantize_grad(y: jax.Array, key: jax.Array, num_bits: int = 16) -> jax.Array:
    """y in the forward; in the backward its cotangent quantised to `num_bits` unsigned
    levels between its minimum and maximum over the whole batch, with stochastic rounding
    from `key` (`adder/quantize.py:91-118` with ``flatten_dims=(1, -1)``: per-example
    extremes, reduced to the batch's; scale at least 1e-8)."""
    del key, num_bits
    return y


def _quantize_grad_fwd(y, key, num_bits):
    return y, key


def _quantize_grad_bwd(num_bits, key, g):
    low, high = jnp.min(g), jnp.max(g)
    qmax = 2.0**num_bits - 1.0
    scale = jnp.maximum((high - low) / qmax, 1e-8).astype(g.dtype)
    noise = jax.random.uniform(key, g.shape, g.dtype, -0.5, 0.5)
    levels = jnp.round(jnp.clip((g - low) / scale + noise, 0.0, qmax))
    return levels * scale + low, None


quantize_grad.defvjp(_quantize_grad_fwd, _quantize_grad_bwd)


def shift_weights(
    params: Mapping[str, Any], *, weight_bits: int = 5, sign_threshold: float | None = None
) -> dict[str, jax.Array]:
    """{"layer/path": effective weight} of every shift layer in a parameter tree: a mapping
    holding "shift" and "sign" (DeepShift-PS) or "shift_weight" (DeepShift-Q). Each value is
    0 or a signed power of two, exactly."""
    out = {}

    def walk(tree, path):
        if not isinstance(tree, Mapping):
            return
        kind = latent_kind(tree)
        if kind is not None:
            out["/".join(path)] = effective_weight(tree, kind, weight_bits, sign_threshold)
        for key, sub in tree.items():
            walk(sub, (*path, str(key)))

    walk(params, ())
    return out


# --------------------------------------------------------------------------------------------
# What the shift layers (`adderjax.nn.ShiftConv`, `adderjax.nnx.ShiftConv`, ...) share


def check_layer_args(kind: str, weight_bits: int, sign_threshold, quant_bits: int) -> None:
    """One-line errors for a shift layer's options."""
    shift_range(weight_bits, kind)
    if sign_threshold is not None and (kind != "ps" or not sign_threshold >= 0):
        raise ValueError(
            f"sign_threshold={sign_threshold!r} is invalid: expected None, or a number >= 0 "
            f"with kind='ps'"
        )
    if not isinstance(quant_bits, int) or isinstance(quant_bits, bool) or quant_bits < 0:
        raise ValueError(f"quant_bits={quant_bits!r} is invalid: expected an integer >= 0")


def check_frozen(frozen: bool, kind: str, quant_bits: int) -> None:
    """One-line errors for a frozen shift layer's options (their frozen layers are PS ones
    with 16-bit inputs)."""
    if not isinstance(frozen, bool):
        raise ValueError(f"frozen={frozen!r} is invalid: expected True or False")
    if frozen and (kind != "ps" or quant_bits < 2):
        raise ValueError(
            f"frozen=True needs kind='ps' and quant_bits >= 2 (their frozen layers), got "
            f"kind={kind!r}, quant_bits={quant_bits!r}"
        )


@dataclasses.dataclass(frozen=True)
class ShiftOptions:
    """The options of every shift layer of a network (`adderjax.models`' ``shift=``).

    Attributes:
      kind: "ps" (DeepShift-PS, ShiftAddNet's) or "q" (DeepShift-Q).
      weight_bits: their ``--weight_bits`` (5).
      sign_threshold: None, or their ``--sign_threshold_ps`` (PS only).
      quant_bits: their ``--shift_quant_bits`` (16): the input's fraction bits and the output
        gradient's bits.
      frozen: their ``train_fix.py`` variant: PS latents drawn once as their frozen layers
        draw them (`frozen_init_params`) and never trained (no gradient reaches them), the
        input rounded to nearest (`round_act`), the output gradient left alone.
    """

    kind: str = "ps"
    weight_bits: int = 5
    sign_threshold: float | None = None
    quant_bits: int = 16
    frozen: bool = False

    def __post_init__(self):
        check_layer_args(self.kind, self.weight_bits, self.sign_threshold, self.quant_bits)
        if not isinstance(self.frozen, bool):
            raise ValueError(f"frozen={self.frozen!r} is invalid: expected True or False")
        check_frozen(self.frozen, self.kind, self.quant_bits)

    def layer_kwargs(self) -> dict[str, Any]:
        """As keyword arguments of `adderjax.nn.ShiftConv` / `ShiftDense`."""
        return dataclasses.asdict(self)


def frozen_init_params(key: jax.Array, shape, dtype=jnp.float32, sign_threshold=0.5) -> dict:
    """PS latents as their frozen layers draw them (`SEConv2d.reset_parameters` at its
    defaults ``distribution='uniform'``, ``threshold=5e-3``, ``sign_threshold=0.5``,
    `se_shift/conv_mask_shift.py:118-127`): P uniform over [-7.5, -0.5], clipped to
    `FROZEN_RANGE` and rounded; S uniform over [-1, 1] made ternary at 0.5. The latents hold
    integers, so `ps_weight` gives their weight sign * 2^P exactly."""
    low, high = FROZEN_RANGE
    k_shift, k_sign = jax.random.split(key)
    shift = jax.random.uniform(k_shift, shape, dtype, low - 0.5, -1 + 0.5)
    sign = jax.random.uniform(k_sign, shape, dtype, -1.0, 1.0)
    return {
        "shift": jnp.round(jnp.clip(shift, low, high)),
        "sign": _ternary_sign(sign, sign_threshold),
    }


def init_params(key: jax.Array, kind: str, shape, weight_bits: int, dtype=jnp.float32) -> dict:
    """A shift layer's latents as their layers initialise them (`reset_parameters`): PS's
    shift uniform over `shift_range` and sign uniform over [-1, 1] (modules.py:285-287); Q's
    weight as `torch.nn.init.kaiming_uniform_(a=sqrt(5))`, uniform over +-1/sqrt(fan_in) with
    fan_in all but the last axis of `shape` (modules_q.py:244)."""
    low, high = shift_range(weight_bits, kind)
    if kind == "ps":
        k_shift, k_sign = jax.random.split(key)
        return {
            "shift": jax.random.uniform(k_shift, shape, dtype, low, high),
            "sign": jax.random.uniform(k_sign, shape, dtype, -1.0, 1.0),
        }
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return {"shift_weight": jax.random.uniform(key, shape, dtype, -bound, bound)}


def effective_weight(
    params: Mapping[str, jax.Array], kind: str, weight_bits: int, sign_threshold=None
) -> jax.Array:
    """The weight a shift layer applies: `ps_weight` of its "shift" and "sign", or `q_weight`
    of its "shift_weight"."""
    if kind == "ps":
        return ps_weight(params["shift"], params["sign"], weight_bits, sign_threshold)
    return q_weight(params["shift_weight"], weight_bits)


def _quantized_output(y, quant_bits, key):
    if quant_bits > 0 and key is not None:
        return quantize_grad(y, key, quant_bits)
    return y


def _shift_input(x, quant_bits, frozen):
    return round_act(x, quant_bits) if frozen else fixed_point(x, quant_bits)


def shift_conv(
    x, weight, strides, padding, *, quant_bits: int = 16, key=None, frozen: bool = False
) -> jax.Array:
    """Conv2dShift's forward (modules.py:343-374) with an effective `weight` (kh, kw, cin,
    cout): the input through `fixed_point` with ``quant_bits`` fraction bits (theirs rounds it
    whatever quant_bits is), a plain convolution, and with a `key` and quant_bits > 0 the
    output's cotangent through `quantize_grad`. ``x`` is (N, H, W, C). With ``frozen`` it is
    their frozen layer's forward instead (`SEConv2d.forward`, conv_mask_shift.py:165-176):
    the input through `round_act`, the gradient left alone."""
    x = _shift_input(x, quant_bits, frozen)
    y = jax.lax.conv_general_dilated(
        x, weight.astype(x.dtype), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y if frozen else _quantized_output(y, quant_bits, key)


def shift_dense(x, weight, *, quant_bits: int = 16, key=None, frozen: bool = False) -> jax.Array:
    """The dense form of `shift_conv` (a 1x1 Conv2dShift over ``x[..., din]``): their own
    `LinearShift` cannot run (its forward reads a `threshold` its constructor never sets,
    modules.py:132), and their networks' classifiers are 1x1 shift convolutions."""
    x = _shift_input(x, quant_bits, frozen)
    y = jnp.matmul(x, weight.astype(x.dtype))
    return y if frozen else _quantized_output(y, quant_bits, key)


def project_latents(
    params: Mapping[str, Any], *, weight_bits: int = 5, sign_threshold: float | None = None
) -> Any:
    """`params` with every shift layer's latents as their forward leaves them in place: PS's
    "shift" clipped to `shift_range` (modules.py:334) and, with a `sign_threshold`, "sign"
    replaced by its ternary value (`ste.myround` writes it back, ste.py:5-10); Q's
    "shift_weight" with |w| clipped to [2^low, 1], zero kept (`ste.clampabs`, modules_q.py:118).
    Applied after each optimizer update, the next step starts where theirs does."""
    low, high = shift_range(weight_bits, "ps")

    def project(tree):
        if not isinstance(tree, Mapping):
            return tree
        out = {key: project(sub) for key, sub in tree.items()}
        kind = latent_kind(tree)
        if kind == "ps":
            out["shift"] = jnp.clip(tree["shift"], low, high)
            if sign_threshold is not None:
                out["sign"] = _ternary_sign(tree["sign"], sign_threshold)
        elif kind == "q":
            w = tree["shift_weight"]
            magnitude = _clip_magnitude(w, weight_bits)
            out["shift_weight"] = jnp.where(w == 0, w, jnp.sign(w) * magnitude).astype(w.dtype)
        return type(tree)(out) if not isinstance(tree, dict) else out

    return project(params)
