"""Tests for adderjax.nn: the linen AdderConv / AdderDense against the functional op and flax,
and ShiftConv / ShiftDense against a plain conv of DeepShift weights and ShiftAddNet's own."""

# Compiling jax.random.normal takes ~2 s per new shape on a small CPU, and every eager call
# of the adder op compiles its scan again, so the tests build arrays with numpy, check
# shapes with jax.eval_shape and compare layer and op inside one jit per case.

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import adderjax
from adderjax import nn as adder_nn
from adderjax import ops, optim, reference
from adderjax import shift as shift_lib

X_SHAPE = (2, 8, 8, 2)
W_SHAPE = (3, 3, 2, 4)
PADDINGS = ["SAME", "VALID", 1, [(1, 1), (1, 1)]]
# What each padding form above means for a 3x3 kernel, in the form ops.adder_conv takes.
OP_PADDINGS = {
    "SAME": "SAME",
    "VALID": "VALID",
    "1": ((1, 1), (1, 1)),
    "[(1, 1), (1, 1)]": ((1, 1), (1, 1)),
}


def _normal(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _conv_vars(use_bias=True):
    params = {"adder": _normal(W_SHAPE, 1)}
    if use_bias:
        params["bias"] = _normal(W_SHAPE[-1:], 2)
    return {"params": params}


def _dense_vars():
    return {"params": {"adder": _normal((6, 5), 3), "bias": _normal((5,), 4)}}


def _op_conv(x, params, strides, padding, **kw):
    y = ops.adder_conv(x, params["adder"], strides, padding, **kw)
    return y + params["bias"].reshape(1, 1, 1, -1)


def _shapes(layer, x):
    return jax.tree.map(jnp.shape, jax.eval_shape(layer.init, jax.random.key(0), x))


# --------------------------------------------------------------------------- parameters


def test_param_names_and_shapes():
    x = jax.ShapeDtypeStruct(X_SHAPE, jnp.float32)
    for kernel_size in (3, (3, 3), [3, 3]):
        layer = adder_nn.AdderConv(features=4, kernel_size=kernel_size)
        assert _shapes(layer, x) == {"params": {"adder": (3, 3, 2, 4), "bias": (4,)}}
    layer = adder_nn.AdderConv(features=5, kernel_size=(1, 2), use_bias=False)
    assert _shapes(layer, x) == {"params": {"adder": (1, 2, 2, 5)}}

    x = jax.ShapeDtypeStruct((3, 6), jnp.float32)
    assert _shapes(adder_nn.AdderDense(features=5), x) == {
        "params": {"adder": (6, 5), "bias": (5,)}
    }
    assert _shapes(adder_nn.AdderDense(features=5, use_bias=False), x) == {
        "params": {"adder": (6, 5)}
    }


def test_default_init_is_standard_normal():
    # The shapes of the AdderConv docstring example, so its initializer compiles only once.
    layer = adder_nn.AdderConv(features=32, kernel_size=(3, 3))
    params = layer.init(jax.random.key(0), jnp.ones((2, 8, 8, 16)))["params"]
    w = np.asarray(params["adder"])
    assert w.shape == (3, 3, 16, 32) and w.dtype == np.float32
    # N(0, 1) as the reference, not flax's lecun_normal (std 1/12 here); 4608 samples.
    assert abs(w.mean()) < 0.06
    assert abs(w.std() - 1.0) < 0.06
    np.testing.assert_array_equal(params["bias"], 0.0)
    # The dense layer has the same defaults.
    assert adder_nn.AdderDense.kernel_init is adder_nn.AdderConv.kernel_init
    assert adder_nn.AdderDense.bias_init is adder_nn.AdderConv.bias_init


def test_linen_params_work_with_adder_mask():
    assert optim.adder_mask(_conv_vars()) == {"params": {"adder": True, "bias": False}}


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_conv_matches_op_and_flax_shape(padding, strides):
    x, variables = _normal(X_SHAPE), _conv_vars()
    layer = adder_nn.AdderConv(features=4, kernel_size=(3, 3), strides=strides, padding=padding)
    op_padding = OP_PADDINGS[str(padding)]
    y, expected = jax.jit(
        lambda v, x: (layer.apply(v, x), _op_conv(x, v["params"], strides, op_padding))
    )(variables, x)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-5)

    # Drop-in: flax's Conv with the same arguments has the same parameter and output shapes.
    conv = nn.Conv(features=4, kernel_size=(3, 3), strides=strides, padding=padding)
    flax_shapes = _shapes(conv, x)["params"]
    assert flax_shapes == {"kernel": W_SHAPE, "bias": W_SHAPE[-1:]}
    flax_vars = {"params": {"kernel": variables["params"]["adder"], "bias": y[0, 0, 0]}}
    assert jax.eval_shape(conv.apply, flax_vars, x).shape == y.shape


def test_conv_unbatched_and_extra_batch_dims():
    layer = adder_nn.AdderConv(features=4, kernel_size=(3, 3), strides=2)
    x, variables = _normal((2, 3, 8, 8, 2)), _conv_vars()
    y, flat, single = jax.jit(
        lambda v, x: (
            layer.apply(v, x),
            layer.apply(v, x.reshape(6, 8, 8, 2)),
            layer.apply(v, x[1, 2]),
        )
    )(variables, x)
    assert y.shape == (2, 3, 4, 4, 4)
    np.testing.assert_allclose(y, flat.reshape(2, 3, 4, 4, 4), rtol=1e-6)
    assert single.shape == (4, 4, 4)
    np.testing.assert_allclose(single, flat[5], rtol=1e-6, atol=1e-5)


def test_conv_bfloat16_compute_dtype():
    x, variables = _normal(X_SHAPE), _conv_vars()
    layer = adder_nn.AdderConv(features=4, kernel_size=(3, 3), dtype=jnp.bfloat16)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert {v.dtype for v in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    plain = adder_nn.AdderConv(features=4, kernel_size=(3, 3))
    y, promoted, expected = jax.jit(
        lambda v, x: (
            layer.apply(v, x),
            # Without dtype, bfloat16 inputs are promoted with the float32 params, as flax does.
            plain.apply(v, x.astype(jnp.bfloat16)),
            _op_conv(x, v["params"], 1, "SAME"),
        )
    )(variables, x)
    assert y.dtype == jnp.bfloat16
    assert promoted.dtype == jnp.float32
    np.testing.assert_allclose(y.astype(jnp.float32), expected, rtol=2e-2, atol=1e-1)


def test_dense_matches_op():
    layer = adder_nn.AdderDense(features=5)
    x, variables = _normal((2, 3, 6)), _dense_vars()
    params = variables["params"]

    def f(v, x):
        expected = ops.adder_dense(x, params["adder"]) + params["bias"].reshape(1, 1, -1)
        low = adder_nn.AdderDense(features=5, dtype=jnp.bfloat16).apply(v, x)
        return layer.apply(v, x), layer.apply(v, x[0, 0]), low, expected

    y, unbatched, low, expected = jax.jit(f)(variables, x)
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(unbatched, expected[0, 0], rtol=1e-6)
    assert low.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- gradients


# The second case also checks that the p and input_grad fields reach the op, the third filter_grad.
GRAD_CASES = [
    (1, "SAME", {}),
    (2, "VALID", {"p": 2.0, "input_grad": "lp"}),
    (1, "VALID", {"filter_grad": "sign"}),
]


@pytest.mark.parametrize("strides, padding, fields", GRAD_CASES)
def test_conv_grads_are_the_adder_rule(strides, padding, fields):
    x, variables = _normal(X_SHAPE), _conv_vars()
    layer = adder_nn.AdderConv(
        features=4, kernel_size=(3, 3), strides=strides, padding=padding, **fields
    )

    def f(v, x):
        y, grads = jax.value_and_grad(lambda v, x: layer.apply(v, x).sum(), argnums=(0, 1))(v, x)
        w = v["params"]["adder"]
        ref, vjp = jax.vjp(lambda x, w: ops.adder_conv(x, w, strides, padding, **fields), x, w)
        # Autodiff of the plain forward, which gives sign(x - w) where the paper has x - w.
        autodiff = jax.grad(
            lambda w: reference.adder_conv_forward(
                x, w, (strides, strides), padding, p=fields.get("p", 1.0)
            ).sum()
        )(w)
        return y, grads, ref, vjp(jnp.ones_like(ref)), autodiff

    y, (g_params, g_x), ref, (dx, dw), autodiff = jax.jit(f)(variables, x)
    g_params = g_params["params"]
    bias_sum = ref.shape[0] * ref.shape[1] * ref.shape[2] * variables["params"]["bias"].sum()
    np.testing.assert_allclose(y, ref.sum() + bias_sum, rtol=1e-5)
    np.testing.assert_allclose(g_x, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_params["adder"], dw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g_params["bias"], np.full(4, np.prod(ref.shape[:3])), rtol=1e-6)
    if fields.get("filter_grad") == "sign":  # the ablation's rule is the true gradient
        np.testing.assert_allclose(g_params["adder"], autodiff, rtol=1e-5, atol=1e-4)
    else:
        assert not np.allclose(g_params["adder"], autodiff, rtol=1e-2, atol=1e-2)


def test_dense_grads_are_the_adder_rule():
    layer = adder_nn.AdderDense(features=5)
    x, variables = _normal((4, 6)), _dense_vars()
    loss = lambda v, x: layer.apply(v, x).sum()
    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
    w = variables["params"]["adder"]
    # By hand: dw[i, o] = sum_n (x[n, i] - w[i, o]), dx[n, i] = sum_o clip(w[i, o] - x[n, i]).
    diff = x[:, :, None] - w[None, :, :]
    np.testing.assert_allclose(g_params["params"]["adder"], diff.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_x, jnp.clip(-diff, -1, 1).sum(2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_params["params"]["bias"], np.full(5, 4.0))


# --------------------------------------------------------------------------- call-time p

PS = (1.0, 1.5, 2.0)


def _check_p_outputs(outs, expected):
    for y, e in zip(outs, expected, strict=True):
        np.testing.assert_allclose(y, e, rtol=1e-5, atol=1e-4)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert not np.allclose(outs[a], outs[b])


def test_conv_call_time_p_overrides_field_without_recompiling():
    x, variables = _normal(X_SHAPE), _conv_vars()
    layer = adder_nn.AdderConv(features=4, kernel_size=(3, 3), p=2.0)
    jitted = jax.jit(lambda v, x, p: layer.apply(v, x, p=p))
    outs = [jitted(variables, x, p) for p in PS]
    assert jitted._cache_size() == 1
    expected, field = jax.jit(
        # Without a call-time p, the field is used.
        lambda v, x: ([_op_conv(x, v["params"], 1, "SAME", p=p) for p in PS], layer.apply(v, x))
    )(variables, x)
    _check_p_outputs(outs, expected)
    np.testing.assert_allclose(field, expected[2], rtol=1e-6)


def test_dense_call_time_p_overrides_field_without_recompiling():
    x, variables = _normal((3, 6)), _dense_vars()
    layer = adder_nn.AdderDense(features=5, p=1.5)
    jitted = jax.jit(lambda v, x, p: layer.apply(v, x, p=p))
    outs = [jitted(variables, x, p) for p in PS]
    assert jitted._cache_size() == 1
    params = variables["params"]
    bias = params["bias"].reshape(1, -1)
    expected, field = jax.jit(
        lambda x: (
            [ops.adder_dense(x, params["adder"], p=p) + bias for p in PS],
            layer.apply(variables, x),
        )
    )(x)
    _check_p_outputs(outs, expected)
    np.testing.assert_allclose(field, expected[1], rtol=1e-6)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"padding": "CIRCULAR"}, "padding"),
        ({"padding": "REFLECT"}, "padding"),
        ({"padding": "CAUSAL"}, "padding"),
        ({"padding": "FULL"}, "padding"),
        ({"padding": [1, 1, 1]}, "padding"),
        ({"padding": [(1, 1, 1), (1, 1)]}, "padding"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"kernel_size": (3,)}, "kernel_size"),
        ({"kernel_size": (3, 0)}, "kernel_size"),
        ({"strides": 0}, "strides"),
        ({"strides": (1, 1, 1)}, "strides"),
        ({"kernel_dilation": 2}, "kernel_dilation"),
        ({"input_dilation": (1, 2)}, "input_dilation"),
        ({"feature_group_count": 2}, "feature_group_count"),
        ({"p": 3.0}, "p"),
        ({"p": 0.5}, "p"),
        ({"input_grad": "ste"}, "input_grad"),
        ({"filter_grad": "exact"}, "filter_grad"),
        ({"implementation": "cuda"}, "implementation"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_conv_bad_arguments(kwargs, name):
    layer = adder_nn.AdderConv(**{"features": 4, "kernel_size": (3, 3), **kwargs})
    with pytest.raises(ValueError, match=rf"\b{name}\b") as info:
        jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(X_SHAPE, jnp.float32))
    assert "\n" not in str(info.value)


def test_conv_bad_inputs():
    layer = adder_nn.AdderConv(features=4, kernel_size=(3, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="inputs"):
        jax.eval_shape(layer.init, key, jnp.ones((8, 2)))
    variables = _conv_vars()
    with pytest.raises(ValueError, match="in_features=2"):
        jax.eval_shape(layer.apply, variables, jnp.ones((2, 8, 8, 5)))
    with pytest.raises(ValueError, match=r"\bp\b"):
        jax.eval_shape(lambda x: layer.apply(variables, x, p=2.5), jnp.ones(X_SHAPE))


def test_dense_bad_arguments():
    layer = adder_nn.AdderDense(features=5)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="inputs"):
        jax.eval_shape(layer.init, key, jnp.ones(()))
    with pytest.raises(ValueError, match="in_features=6"):
        jax.eval_shape(layer.apply, _dense_vars(), jnp.ones((2, 7)))
    with pytest.raises(ValueError, match=r"\bp\b"):
        jax.eval_shape(adder_nn.AdderDense(features=5, p=3.0).init, key, jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="input_grad"):
        jax.eval_shape(adder_nn.AdderDense(5, input_grad="x").init, key, jnp.ones((2, 6)))


def test_doctests():
    result = doctest.testmod(adder_nn)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("layer", ["conv", "dense"])
def test_interpret_runs_the_pallas_kernels(layer):
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    if layer == "conv":
        make = lambda **kw: adder_nn.AdderConv(4, (3, 3), padding=1, **kw)  # noqa: E731
    else:
        make = lambda **kw: adder_nn.AdderDense(4, **kw)  # noqa: E731
    variables = make(implementation="xla").init(jax.random.key(0), x)
    want = make(implementation="xla").apply(variables, x)
    layer_pallas = make(implementation="pallas", interpret=True)
    jaxpr = str(jax.make_jaxpr(lambda v: layer_pallas.apply(v, x))(variables))
    assert "pallas_call" in jaxpr
    np.testing.assert_allclose(layer_pallas.apply(variables, x), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="interpret=True runs the Pallas kernels"):
        make(implementation="xla", interpret=True).apply(variables, x)


# --------------------------------------------------------------------------------------------
# ShiftConv / ShiftDense


def _shift_latents(shape, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "shift": jnp.asarray(rng.uniform(-16, 1, shape), jnp.float32),
        "sign": jnp.asarray(rng.uniform(-1.5, 1.5, shape), jnp.float32),
    }


@pytest.mark.parametrize("padding, strides", [("SAME", 1), ("VALID", 2), (1, 1)])
def test_shift_conv_is_a_conv_of_fixed_point_inputs_with_power_of_two_weights(padding, strides):
    layer = adder_nn.ShiftConv(features=4, kernel_size=3, strides=strides, padding=padding)
    params = _shift_latents(W_SHAPE)
    x = jnp.asarray(np.random.default_rng(1).normal(size=X_SHAPE) * 3, jnp.float32)
    weight = shift_lib.ps_weight(params["shift"], params["sign"])
    stride, pads = (strides, strides), OP_PADDINGS[str(padding)]
    want = jax.lax.conv_general_dilated(
        shift_lib.round_to_fixed(x),
        weight,
        stride,
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    got = layer.apply({"params": params}, x)
    np.testing.assert_array_equal(got, want)
    # Several batch dims, and none, as flax's Conv.
    np.testing.assert_array_equal(layer.apply({"params": params}, x[None])[0], want)
    np.testing.assert_array_equal(layer.apply({"params": params}, x[0]), want[0])
    assert set(adderjax.shift_weights(params)) == {""}  # the layer's own latents


def test_shift_conv_gradients_are_the_conv_gradients_through_deepshift():
    layer = adder_nn.ShiftConv(features=4, kernel_size=3)
    params = _shift_latents(W_SHAPE)
    x = jnp.asarray(np.random.default_rng(1).normal(size=X_SHAPE), jnp.float32)
    weight = shift_lib.ps_weight(params["shift"], params["sign"])
    xq = shift_lib.round_to_fixed(x)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    g = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 4)), jnp.float32)
    _, conv_vjp = jax.vjp(conv, xq, weight)
    dx_want, dw = conv_vjp(g)
    _, layer_vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    dparams, dx = layer_vjp(g)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-5, atol=1e-6)  # fixed point: straight
    signs = jnp.sign(jnp.round(params["sign"]))
    power = jnp.ldexp(1.0, jnp.round(jnp.clip(params["shift"], -14, 0)).astype(jnp.int32))
    np.testing.assert_allclose(dparams["shift"], dw * signs * power * np.log(2), rtol=1e-5)
    np.testing.assert_allclose(dparams["sign"], dw, rtol=1e-6)


def test_shift_conv_matches_shiftaddnets_conv2dshift_in_pytorch():
    torch = pytest.importorskip("torch")
    import shift_reference

    params = _shift_latents((3, 3, 3, 5), seed=4)
    x = np.random.default_rng(5).normal(size=(2, 7, 7, 3)).astype(np.float32) * 4
    got = adder_nn.ShiftConv(features=5, kernel_size=3, padding=1).apply({"params": params}, x)
    # Conv2dShift.forward: weight_ps, the input through round_fixed_point, F.conv2d (OIHW).
    to_torch = lambda a: torch.tensor(np.asarray(a)).permute(3, 2, 0, 1)  # noqa: E731
    weight, _ = shift_reference.ps_weight(to_torch(params["shift"]), to_torch(params["sign"]))
    xt = shift_reference.round_to_fixed(torch.tensor(x).permute(0, 3, 1, 2), 16, 16)
    want = torch.nn.functional.conv2d(xt, weight, padding=1).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_shift_layers_initialise_as_theirs_and_name_their_latents():
    x = jnp.ones((1, 5, 5, 6))
    ps = adder_nn.ShiftConv(features=7, kernel_size=3).init(jax.random.key(0), x)["params"]
    assert set(ps) == {"shift", "sign"} and ps["shift"].shape == (3, 3, 6, 7)
    assert float(ps["shift"].min()) >= -14 and float(ps["shift"].max()) <= 0
    assert float(jnp.abs(ps["sign"]).max()) <= 1
    q = adder_nn.ShiftDense(features=7, kind="q").init(jax.random.key(0), jnp.ones((2, 54)))
    w = q["params"]["shift_weight"]
    assert w.shape == (54, 7) and float(jnp.abs(w).max()) <= 1 / np.sqrt(54)
    for weight in adderjax.shift_weights({"a": ps, "b": q["params"]}).values():
        mantissa, _ = np.frexp(np.asarray(weight))
        assert np.all(np.isin(np.abs(mantissa), [0.0, 0.5]))


def test_shift_dense_is_a_1x1_shift_conv():
    params = _shift_latents((6, 3), seed=7)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 4, 4, 6)), jnp.float32)
    dense = adder_nn.ShiftDense(features=3).apply({"params": params}, x)
    conv_params = jax.tree.map(lambda a: a[None, None], params)
    conv = adder_nn.ShiftConv(features=3, kernel_size=1).apply({"params": conv_params}, x)
    np.testing.assert_allclose(dense, conv, rtol=1e-6, atol=1e-6)


def test_a_shift_rng_stream_quantises_the_output_gradient():
    layer = adder_nn.ShiftConv(features=4, kernel_size=3, quant_bits=4)
    params = _shift_latents(W_SHAPE)
    x = jnp.asarray(np.random.default_rng(1).normal(size=X_SHAPE), jnp.float32)

    def grads(rngs):
        return jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x, rngs=rngs) ** 2))(params)

    plain, quantised = grads(None), grads({"shift": jax.random.key(0)})
    assert not np.allclose(plain["sign"], quantised["sign"])
    again = grads({"shift": jax.random.key(0)})
    np.testing.assert_array_equal(again["sign"], quantised["sign"])  # a function of the key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "x"}, "kind='x' is not one of 'ps', 'q'"),
        ({"weight_bits": 1}, "weight_bits=1 is invalid"),
        ({"kind": "q", "sign_threshold": 0.3}, "sign_threshold=0.3 is invalid"),
        ({"quant_bits": -1}, "quant_bits=-1 is invalid"),
    ],
)
def test_bad_shift_options_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        adder_nn.ShiftConv(features=2, kernel_size=3, **kwargs).init(
            jax.random.key(0), jnp.ones((1, 4, 4, 2))
        )
    assert "\n" not in str(info.value)
