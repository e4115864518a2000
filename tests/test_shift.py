"""`adderjax.shift`: DeepShift's weights and ShiftAddNet's quantisers against values worked by
hand from their code (ties, clips, zero signs), their gradients, and exact powers of two."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adderjax import shift

LN2 = math.log(2.0)


def test_shift_ranges_follow_the_weight_bits():
    assert shift.shift_range(5, "ps") == (-14, 0)  # their default: ternary sign
    assert shift.shift_range(5, "q") == (-15, 0)
    assert shift.shift_range(3, "ps") == (-2, 0)
    with pytest.raises(ValueError, match="weight_bits=1 is invalid"):
        shift.shift_range(1)
    with pytest.raises(ValueError, match="kind='x' is not one of 'ps', 'q'"):
        shift.shift_range(5, "x")


def test_round_to_fixed_rounds_down_and_clips():
    d = 2.0**-16
    with jax.enable_x64(True):
        x = jnp.asarray([1.5 + d / 2, -d / 2, 0.25, 40000.0, -40000.0, -3 * d - d / 4], jnp.float64)
        got = shift.round_to_fixed(x)
    np.testing.assert_array_equal(got, [1.5, -d, 0.25, 2.0**15 - 1, -(2.0**15), -4 * d])
    np.testing.assert_array_equal(shift.round_to_fixed(jnp.asarray([-2.0, 0.0, 3.0]), 16, 1),
                                  [-2.0, -1.0, 0.0])  # fmt: skip


def test_fixed_point_passes_the_gradient_straight_through():
    x = jnp.asarray([0.1, -0.3, 7.0])
    y, vjp = jax.vjp(lambda x: shift.fixed_point(x, 4), x)
    np.testing.assert_array_equal(y, [0.0625, -0.3125, 7.0])
    np.testing.assert_array_equal(vjp(jnp.asarray([1.0, 2.0, 3.0]))[0], [1.0, 2.0, 3.0])


def test_ps_weight_by_hand():
    # shift: -0.5 ties to -0 (half to even), -1.5 ties to -2, 0.7 clips to 0, -20 to -14,
    # -2.5 ties to -2; sign: 0.5 ties to 0 (sign 0), -0.6 -> -1, 1.7 -> +1, -1.5 -> -2 -> -1.
    p = jnp.asarray([-0.5, -1.5, 0.7, -20.0, -2.5])
    s = jnp.asarray([0.5, -0.6, 1.7, 0.2, -1.5])
    w = shift.ps_weight(p, s)
    np.testing.assert_array_equal(w, [0.0, -0.25, 1.0, 0.0, -0.25])
    t = shift.ps_weight(p, s, 5, 0.3)  # -1 below -0.3, +1 above 0.3, else 0
    np.testing.assert_array_equal(t, [1.0, -0.25, 1.0, 0.0, -0.25])
    with pytest.raises(ValueError, match="must have one shape"):
        shift.ps_weight(p, s[:2])
    with pytest.raises(ValueError, match="sign_threshold=-1"):
        shift.ps_weight(p, s, 5, -1.0)


def test_ps_gradient_is_theirs():
    p = jnp.asarray([-0.5, -1.5, 0.7, -20.0])
    s = jnp.asarray([0.5, -0.6, 1.7, -1.0])
    g = jnp.asarray([1.0, 2.0, -3.0, 4.0])
    _, vjp = jax.vjp(lambda p, s: shift.ps_weight(p, s), p, s)
    dp, ds = vjp(g)
    # g * sign * 2^round(clip(p)) * ln 2; the zero sign gets none; the sign gets g itself.
    want = [0.0, 2.0 * -1 * 0.25 * LN2, -3.0 * LN2, 4.0 * -1 * 2.0**-14 * LN2]
    np.testing.assert_allclose(dp, want, rtol=1e-6)
    np.testing.assert_array_equal(ds, g)


def test_q_weight_by_hand_and_straight_through():
    # 0.3: log2 = -1.74 -> -2; -0.75: -0.42 -> 0; 1e-9 clips to 2^-15; 3 clips to 1; 0 stays;
    # 0.7: -0.51 -> -1; -0.18: -2.47 -> -2.
    w = jnp.asarray([0.3, -0.75, 1e-9, 3.0, 0.0, 0.7, -0.18])
    got, vjp = jax.vjp(shift.q_weight, w)
    np.testing.assert_array_equal(got, [0.25, -1.0, 2.0**-15, 1.0, 0.0, 0.5, -0.25])
    g = jnp.arange(7.0)
    np.testing.assert_array_equal(vjp(g)[0], g)


def test_quantize_grad_keeps_y_and_quantises_its_cotangent():
    y = jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
    g = jax.random.normal(jax.random.key(1), y.shape)
    out, vjp = jax.vjp(lambda y: shift.quantize_grad(y, jax.random.key(0), 3), y)
    np.testing.assert_array_equal(out, y)
    (q,) = vjp(g)
    low, high = float(g.min()), float(g.max())
    scale = (high - low) / 7
    levels = (np.asarray(q) - low) / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # on the 8 levels
    assert levels.min() >= -1e-4 and levels.max() <= 7 + 1e-4
    assert np.max(np.abs(np.asarray(q) - np.asarray(g))) <= scale + 1e-6  # within a level
    # Stochastic rounding is unbiased: averaged over keys, the quantised cotangent is g.
    cotangent = jax.jit(lambda key: jax.vjp(lambda y: shift.quantize_grad(y, key, 3), y)[1](g)[0])
    mean = np.mean([cotangent(jax.random.key(k)) for k in range(400)], axis=0)
    np.testing.assert_allclose(mean, g, atol=0.1 * scale)


def test_effective_weights_are_exact_signed_powers_of_two():
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "conv1": {"shift": jax.random.uniform(k[0], (3, 3, 4, 8), minval=-16, maxval=2),
                  "sign": jax.random.uniform(k[1], (3, 3, 4, 8), minval=-1.5, maxval=1.5)},
        "block": {"fc": {"shift_weight": jax.random.normal(k[2], (16, 10)) * 0.3}},
        "bn": {"scale": jnp.ones(8)},
    }  # fmt: skip
    weights = shift.shift_weights(params)
    assert set(weights) == {"conv1", "block/fc"}
    for name, w in weights.items():
        w = np.asarray(w, np.float64)
        mantissa, exponent = np.frexp(w)
        nonzero = w != 0
        assert np.all(np.abs(mantissa[nonzero]) == 0.5), name
        assert np.all(exponent[nonzero] - 1 >= -15) and np.all(exponent[nonzero] - 1 <= 0), name
    assert np.any(np.asarray(weights["conv1"]) == 0)  # the ternary sign's zeros


def _latents(seed, shape=(6, 50)):
    """Shift and sign latents with exact .5 ties, out-of-range shifts and zero signs."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-17, 2, shape).astype(np.float32)
    p[0] = np.round(p[0]) + 0.5  # ties
    s = rng.uniform(-1.6, 1.6, shape).astype(np.float32)
    s[1] = np.round(s[1]) + 0.5
    s[2, :10] = 0.0
    g = rng.standard_normal(shape).astype(np.float32)
    return p, s, g


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_ps_weight_and_gradient_are_shiftaddnets(threshold):
    torch = pytest.importorskip("torch")
    import shift_reference

    p, s, g = _latents(0)
    tp, ts = torch.tensor(p, requires_grad=True), torch.tensor(s, requires_grad=True)
    want, clamped = shift_reference.ps_weight(tp, ts, threshold=threshold)
    want.backward(torch.tensor(g))
    got, vjp = jax.vjp(lambda p, s: shift.ps_weight(p, s, 5, threshold), p, s)
    np.testing.assert_array_equal(got, want.detach().numpy())
    dp, ds = vjp(jnp.asarray(g))
    np.testing.assert_allclose(dp, clamped.grad.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ds, ts.grad.numpy())


def test_q_weight_and_gradient_are_shiftaddnets():
    torch = pytest.importorskip("torch")
    import shift_reference

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((8, 40)) * np.exp(rng.uniform(-12, 1, (8, 40)))).astype(np.float32)
    w[0, :5] = 0.0
    tw = torch.tensor(w)
    want, clamped = shift_reference.q_weight(tw)
    g = rng.standard_normal(w.shape).astype(np.float32)
    want.backward(torch.tensor(g))
    got, vjp = jax.vjp(lambda w: shift.q_weight(w, 5), w)
    np.testing.assert_array_equal(got, want.detach().numpy())
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], clamped.grad.numpy())


def test_round_to_fixed_is_shiftaddnets():
    torch = pytest.importorskip("torch")
    import shift_reference

    x = (np.random.default_rng(2).standard_normal(500) * 2000).astype(np.float32)
    for fraction, integer in [(16, 16), (4, 8), (0, 3), (16, 1)]:
        want = shift_reference.round_to_fixed(torch.tensor(x), fraction, integer).numpy()
        np.testing.assert_array_equal(shift.round_to_fixed(x, fraction, integer), want)


def test_project_latents_does_what_their_in_place_writes_do():
    params = {
        "a": {"shift": jnp.asarray([-20.0, -3.3, 1.5]), "sign": jnp.asarray([0.2, -0.5, 0.9])},
        "b": {"c": {"shift_weight": jnp.asarray([3.0, -1e-9, 0.0, -0.4])}},
        "bn": {"scale": jnp.asarray([5.0])},
    }
    out = shift.project_latents(params)
    f32 = lambda values: np.asarray(values, np.float32)  # noqa: E731
    np.testing.assert_array_equal(out["a"]["shift"], f32([-14.0, -3.3, 0.0]))  # not rounded
    np.testing.assert_array_equal(out["a"]["sign"], params["a"]["sign"])  # no threshold: kept
    np.testing.assert_array_equal(out["b"]["c"]["shift_weight"], f32([1, -(2.0**-15), 0, -0.4]))
    np.testing.assert_array_equal(out["bn"]["scale"], [5.0])
    ternary = shift.project_latents(params, sign_threshold=0.3)
    np.testing.assert_array_equal(ternary["a"]["sign"], [0.0, -1.0, 1.0])
    # The effective weights do not change: the forward clips and rounds the same way.
    for before, after in zip(
        shift.shift_weights(params).values(), shift.shift_weights(out).values(), strict=True
    ):
        np.testing.assert_array_equal(before, after)


def test_round_act_rounds_to_nearest_without_a_clip():
    """Their frozen layers' input rounding (`se_shift/conv_mask_shift.py:24-31`): to the
    nearest multiple of 2^-15 at 16 bits, ties to even as torch.round, no clip; the gradient
    straight through."""
    u = 2.0**-15
    x = jnp.asarray([1.5 * u, 2.5 * u, -0.4 * u, 0.6 * u, 1e6, -7.25], jnp.float32)
    np.testing.assert_array_equal(shift.round_act(x), [2 * u, 2 * u, 0, u, 1e6, -7.25])
    np.testing.assert_array_equal(shift.round_act(jnp.asarray([0.3, 0.75]), 2), [0.5, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda x: (3 * shift.round_act(x)).sum())(x), 3.0)


def test_frozen_latents_are_their_frozen_layers():
    """`SEConv2d.reset_parameters` at its defaults: shifts uniform over [-7.5, -0.5] rounded
    (so -7..-1, and 0 only from -0.5 itself), signs U(-1, 1) ternary at 0.5; `ps_weight` of
    them is sign * 2^shift exactly."""
    latents = shift.frozen_init_params(jax.random.key(3), (64, 64))
    shifts, signs = np.asarray(latents["shift"]), np.asarray(latents["sign"])
    assert set(np.unique(shifts)) == set(range(-7, 0))
    counts = np.bincount(-shifts.astype(int).ravel())[1:]
    assert counts.min() > 0.6 * counts.mean()  # the end codes -7 and -1 get half-width bins
    assert set(np.unique(signs)) == {-1.0, 0.0, 1.0} and 0.45 < np.mean(signs == 0) < 0.55
    w = shift.ps_weight(latents["shift"], latents["sign"])
    np.testing.assert_array_equal(w, signs * np.exp2(shifts))


def test_frozen_conv_quantises_no_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    w = shift.ps_weight(*shift.frozen_init_params(jax.random.key(1), (3, 3, 3, 4)).values())
    pad = [(1, 1), (1, 1)]

    def grad(frozen):
        f = lambda x: jnp.sum(  # noqa: E731
            jnp.sin(shift.shift_conv(x, w, (1, 1), pad, key=jax.random.key(2), frozen=frozen))
        )
        return jax.grad(f)(x)

    plain = jax.grad(
        lambda x: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
            shift.round_act(x), w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )))
    )(x)  # fmt: skip
    np.testing.assert_array_equal(grad(True), plain)
    assert not np.array_equal(grad(False), plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "p"}, "kind='p' is not one of 'ps', 'q'"),
        ({"weight_bits": 1}, "weight_bits=1 is invalid: expected an integer >= 2"),
        ({"kind": "q", "sign_threshold": 0.5}, "sign_threshold=0.5 is invalid"),
        ({"quant_bits": -1}, "quant_bits=-1 is invalid"),
        ({"frozen": "yes"}, "frozen='yes' is invalid: expected True or False"),
        ({"frozen": True, "kind": "q"}, "frozen=True needs kind='ps' and quant_bits >= 2"),
        ({"frozen": True, "quant_bits": 1}, "frozen=True needs kind='ps' and quant_bits >= 2"),
    ],
)
def test_bad_shift_options_are_one_line(kwargs, message):
    with pytest.raises(ValueError) as info:
        shift.ShiftOptions(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
