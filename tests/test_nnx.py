"""Tests for adderjax.nnx: the NNX AdderConv / AdderLinear against the functional op and flax,
and ShiftConv / ShiftLinear against the linen shift layers."""

# Compiling jax.random.normal takes ~1.5 s per new shape on a small CPU, so the layers are
# built with a numpy initializer except where the default one is under test, shapes are
# checked with eval_shape, and layer and op are compared inside one jit per case.

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adderjax import nn as adder_nn
from adderjax import nnx as adder_nnx
from adderjax import ops, optim

X_SHAPE = (2, 8, 8, 2)
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


def _np_init(key, shape, dtype=jnp.float32):
    del key
    return _normal(shape, seed=len(shape), dtype=dtype)


def _conv(**kwargs):
    kwargs = {"kernel_init": _np_init, "bias_init": _np_init, "rngs": nnx.Rngs(0), **kwargs}
    return adder_nnx.AdderConv(2, 4, (3, 3), **kwargs)


def _linear(**kwargs):
    kwargs = {"kernel_init": _np_init, "bias_init": _np_init, "rngs": nnx.Rngs(0), **kwargs}
    return adder_nnx.AdderLinear(6, 5, **kwargs)


def _op_conv(x, model, strides, padding, **kw):
    y = ops.adder_conv(x, model.adder[...], strides, padding, **kw)
    return y + model.bias[...].reshape(1, 1, 1, -1)


def _pure_shapes(state):
    return jax.tree.map(jnp.shape, nnx.to_pure_dict(state))


# --------------------------------------------------------------------------- parameters


def test_param_names_and_shapes():
    for kernel_size in (3, (3, 3), [3, 3]):
        model = nnx.eval_shape(lambda k=kernel_size: adder_nnx.AdderConv(2, 4, k, rngs=nnx.Rngs(0)))
        assert isinstance(model.adder, nnx.Param) and isinstance(model.bias, nnx.Param)
        assert _pure_shapes(nnx.state(model, nnx.Param)) == {"adder": (3, 3, 2, 4), "bias": (4,)}
    model = nnx.eval_shape(
        lambda: adder_nnx.AdderConv(2, 5, (1, 2), use_bias=False, rngs=nnx.Rngs(0))
    )
    assert model.bias is None
    assert _pure_shapes(nnx.state(model, nnx.Param)) == {"adder": (1, 2, 2, 5)}

    model = nnx.eval_shape(lambda: adder_nnx.AdderLinear(6, 5, rngs=nnx.Rngs(0)))
    assert _pure_shapes(nnx.state(model, nnx.Param)) == {"adder": (6, 5), "bias": (5,)}
    model = nnx.eval_shape(lambda: adder_nnx.AdderLinear(6, 5, use_bias=False, rngs=nnx.Rngs(0)))
    assert model.bias is None
    assert _pure_shapes(nnx.state(model, nnx.Param)) == {"adder": (6, 5)}


def test_default_init_is_standard_normal():
    # The shapes of the docstring examples, so their initializers compile only once.
    model = adder_nnx.AdderConv(16, 32, (3, 3), rngs=nnx.Rngs(0))
    w = np.asarray(model.adder[...])
    assert w.shape == (3, 3, 16, 32) and w.dtype == np.float32
    # N(0, 1) as the reference, not flax's lecun_normal (std 1/12 here); 4608 samples.
    assert abs(w.mean()) < 0.06
    assert abs(w.std() - 1.0) < 0.06
    np.testing.assert_array_equal(model.bias[...], 0.0)
    linear = adder_nnx.AdderLinear(16, 10, rngs=nnx.Rngs(1))
    # 160 samples: far from lecun_normal's std of 0.25.
    assert abs(float(np.std(linear.adder[...])) - 1.0) < 0.25
    np.testing.assert_array_equal(linear.bias[...], 0.0)


def test_adder_mask_marks_the_adder_params():
    class Net(nnx.Module):
        def __init__(self):
            self.conv = _conv(use_bias=False)
            self.fc = _linear()
            self.scale = nnx.Param(jnp.ones(3))

    state = nnx.state(Net(), nnx.Param)
    assert "adder" in state["conv"] and "adder" in state["fc"]
    expected = {"conv": {"adder": True}, "fc": {"adder": True, "bias": False}, "scale": False}
    assert nnx.to_pure_dict(optim.adder_mask(state)) == expected


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_conv_matches_op_and_flax_shape(padding, strides):
    x = _normal(X_SHAPE)
    model = _conv(strides=strides, padding=padding)
    op_padding = OP_PADDINGS[str(padding)]
    y, expected = jax.jit(lambda x: (model(x), _op_conv(x, model, strides, op_padding)))(x)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-5)

    # Drop-in: nnx.Conv with the same arguments has the same parameter and output shapes.
    def flax_conv(x):
        conv = nnx.Conv(2, 4, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
        return conv.kernel[...], conv.bias[...], conv(x)

    kernel, bias, flax_y = jax.eval_shape(flax_conv, x)
    assert (kernel.shape, bias.shape) == (model.adder.shape, model.bias.shape)
    assert flax_y.shape == y.shape


def test_conv_unbatched_and_extra_batch_dims():
    model = _conv(strides=2)
    x = _normal((2, 3, 8, 8, 2))
    y, flat, single = jax.jit(lambda x: (model(x), model(x.reshape(6, 8, 8, 2)), model(x[1, 2])))(x)
    assert y.shape == (2, 3, 4, 4, 4)
    np.testing.assert_allclose(y, flat.reshape(2, 3, 4, 4, 4), rtol=1e-6)
    assert single.shape == (4, 4, 4)
    np.testing.assert_allclose(single, flat[5], rtol=1e-6, atol=1e-5)


def test_conv_bfloat16_compute_dtype():
    x = _normal(X_SHAPE)
    model, plain = _conv(dtype=jnp.bfloat16), _conv()
    assert model.adder[...].dtype == jnp.float32 and model.bias[...].dtype == jnp.float32
    y, promoted, expected = jax.jit(
        lambda x: (
            model(x),
            # Without dtype, bfloat16 inputs are promoted with the float32 params, as flax does.
            plain(x.astype(jnp.bfloat16)),
            _op_conv(x, plain, 1, "SAME"),
        )
    )(x)
    assert y.dtype == jnp.bfloat16
    assert promoted.dtype == jnp.float32
    np.testing.assert_allclose(y.astype(jnp.float32), expected, rtol=2e-2, atol=1e-1)


def test_linear_matches_op():
    model, low = _linear(), _linear(dtype=jnp.bfloat16)
    x = _normal((2, 3, 6))

    def f(x):
        expected = ops.adder_dense(x, model.adder[...]) + model.bias[...].reshape(1, 1, -1)
        return model(x), model(x[0, 0]), low(x), expected

    y, unbatched, y16, expected = jax.jit(f)(x)
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(unbatched, expected[0, 0], rtol=1e-6)
    assert y16.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- gradients


# The second case checks that the p and input_grad attributes reach the op, the third filter_grad.
GRAD_CASES = [
    (1, "SAME", {}),
    (2, "VALID", {"p": 2.0, "input_grad": "lp"}),
    (1, "VALID", {"filter_grad": "sign"}),
]


@pytest.mark.parametrize("strides, padding, fields", GRAD_CASES)
def test_conv_grads_are_the_adder_rule(strides, padding, fields):
    x = _normal(X_SHAPE)
    graphdef, state = nnx.split(_conv(strides=strides, padding=padding, **fields))

    def f(state, x):
        loss = lambda state, x: nnx.merge(graphdef, state)(x).sum()
        y, grads = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
        ref, vjp = jax.vjp(
            lambda x, w: ops.adder_conv(x, w, strides, padding, **fields), x, state["adder"][...]
        )
        return y, grads, ref, vjp(jnp.ones_like(ref))

    y, (g_state, g_x), ref, (dx, dw) = jax.jit(f)(state, x)
    bias_sum = ref.shape[0] * ref.shape[1] * ref.shape[2] * state["bias"][...].sum()
    np.testing.assert_allclose(y, ref.sum() + bias_sum, rtol=1e-5)
    np.testing.assert_allclose(g_x, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_state["adder"][...], dw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g_state["bias"][...], np.full(4, np.prod(ref.shape[:3])))


def test_linear_grads_are_the_adder_rule():
    model = _linear()
    x = _normal((4, 6))
    loss = lambda model, x: model(x).sum()
    g_model, g_x = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(model, x)
    w = model.adder[...]
    # By hand: dw[i, o] = sum_n (x[n, i] - w[i, o]), dx[n, i] = sum_o clip(w[i, o] - x[n, i]).
    diff = x[:, :, None] - w[None, :, :]
    np.testing.assert_allclose(g_model["adder"][...], diff.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_x, jnp.clip(-diff, -1, 1).sum(2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_model["bias"][...], np.full(5, 4.0))


def test_training_step_updates_the_adder_param():
    model = _conv(strides=2, padding="VALID")
    x = _normal(X_SHAPE)
    before = {k: v.copy() for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        loss = lambda model: jnp.mean(model(x, p=1.5) ** 2)
        grads = nnx.grad(loss)(model)
        optimizer.update(model, grads)
        return grads

    grads = nnx.to_pure_dict(step(model, optimizer, x))
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert not np.allclose(after["adder"], before["adder"])
    for name in ("adder", "bias"):
        np.testing.assert_allclose(after[name], before[name] - 0.1 * grads[name], rtol=1e-5)


# --------------------------------------------------------------------------- call-time p

PS = (1.0, 1.5, 2.0)


def _check_p_outputs(outs, expected):
    for y, e in zip(outs, expected, strict=True):
        np.testing.assert_allclose(y, e, rtol=1e-5, atol=1e-4)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert not np.allclose(outs[a], outs[b])


def test_conv_call_time_p_overrides_field_without_recompiling():
    x, model = _normal(X_SHAPE), _conv(p=2.0)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, x, p: nnx.merge(graphdef, state)(x, p=p))
    outs = [jitted(state, x, p) for p in PS]
    assert jitted._cache_size() == 1
    # Without a call-time p, the field is used.
    expected, field = jax.jit(
        lambda x: ([_op_conv(x, model, 1, "SAME", p=p) for p in PS], model(x))
    )(x)
    _check_p_outputs(outs, expected)
    np.testing.assert_allclose(field, expected[2], rtol=1e-6)


def test_linear_call_time_p_overrides_field_without_recompiling():
    x, model = _normal((3, 6)), _linear(p=1.5)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, x, p: nnx.merge(graphdef, state)(x, p=p))
    outs = [jitted(state, x, p) for p in PS]
    assert jitted._cache_size() == 1
    bias = model.bias[...].reshape(1, -1)
    expected, field = jax.jit(
        lambda x: ([ops.adder_dense(x, model.adder[...], p=p) + bias for p in PS], model(x))
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
        ({"padding": [1, 1, 1]}, "padding"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"kernel_size": (3,)}, "kernel_size"),
        ({"strides": 0}, "strides"),
        ({"kernel_dilation": 2}, "kernel_dilation"),
        ({"input_dilation": 2}, "input_dilation"),
        ({"feature_group_count": 2}, "feature_group_count"),
        ({"p": 3.0}, "p"),
        ({"p": jnp.asarray(1.5)}, "p"),
        ({"input_grad": "ste"}, "input_grad"),
        ({"filter_grad": "exact"}, "filter_grad"),
        ({"implementation": "cuda"}, "implementation"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_conv_bad_arguments(kwargs, name):
    kwargs = {"in_features": 2, "out_features": 4, "kernel_size": (3, 3), **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b") as info:
        adder_nnx.AdderConv(**kwargs, rngs=nnx.Rngs(0))
    assert "\n" not in str(info.value)


def test_bad_inputs():
    conv = _conv()
    with pytest.raises(ValueError, match="inputs"):
        conv(jnp.ones((8, 2)))
    with pytest.raises(ValueError, match="in_features=2"):
        conv(jnp.ones((2, 8, 8, 5)))
    with pytest.raises(ValueError, match=r"\bp\b"):
        jax.eval_shape(lambda x: conv(x, p=2.5), jnp.ones(X_SHAPE))
    linear = _linear()
    with pytest.raises(ValueError, match="inputs"):
        linear(jnp.ones(()))
    with pytest.raises(ValueError, match="in_features=6"):
        linear(jnp.ones((2, 7)))
    with pytest.raises(ValueError, match=r"\bp\b"):
        adder_nnx.AdderLinear(6, 5, p=3.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_grad"):
        adder_nnx.AdderLinear(6, 5, input_grad="x", rngs=nnx.Rngs(0))


def test_doctests():
    result = doctest.testmod(adder_nnx)
    assert result.attempted > 0
    assert result.failed == 0


def test_interpret_runs_the_pallas_kernels():
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    layer = adder_nnx.AdderConv(3, 4, (3, 3), padding=1, implementation="xla", rngs=nnx.Rngs(0))
    want = layer(x)
    layer.implementation, layer.interpret = "pallas", True
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="interpret must be a bool"):
        adder_nnx.AdderLinear(3, 4, interpret="yes", rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------------
# ShiftConv / ShiftLinear: the linen layers' rules as NNX modules


@pytest.mark.parametrize("kind", ["ps", "q"])
def test_shift_layers_compute_what_the_linen_ones_do(kind):
    conv = adder_nnx.ShiftConv(2, 4, 3, strides=2, padding=1, kind=kind, rngs=nnx.Rngs(0))
    names = ("shift", "sign") if kind == "ps" else ("shift_weight",)
    params = {name: getattr(conv, name)[...] for name in names}
    x = jnp.asarray(np.random.default_rng(1).normal(size=X_SHAPE) * 2, jnp.float32)
    linen = adder_nn.ShiftConv(features=4, kernel_size=3, strides=2, padding=1, kind=kind)
    np.testing.assert_array_equal(conv(x), linen.apply({"params": params}, x))
    g_nnx = jax.grad(lambda x: jnp.sum(conv(x) ** 2))(x)
    g_linen = jax.grad(lambda x: jnp.sum(linen.apply({"params": params}, x) ** 2))(x)
    np.testing.assert_array_equal(g_nnx, g_linen)
    # The gradient quantiser's key is a call argument here (linen draws it from its "shift"
    # stream): 16-bit levels, within a level of the plain gradient.
    quantised = jax.grad(lambda x: jnp.sum(conv(x, key=jax.random.key(3)) ** 2))(x)
    assert not np.array_equal(quantised, g_nnx)
    np.testing.assert_allclose(quantised, g_nnx, atol=1e-3 * float(jnp.abs(g_nnx).max()))
    dense = adder_nnx.ShiftLinear(6, 3, kind=kind, rngs=nnx.Rngs(1))
    dparams = {name: getattr(dense, name)[...] for name in names}
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 6)), jnp.float32)
    linen_dense = adder_nn.ShiftDense(features=3, kind=kind)
    np.testing.assert_array_equal(dense(z), linen_dense.apply({"params": dparams}, z))


def test_shift_layer_options_fail_where_the_layer_is_built():
    with pytest.raises(ValueError, match="weight_bits=1 is invalid"):
        adder_nnx.ShiftConv(2, 4, 3, weight_bits=1, rngs=nnx.Rngs(0))
    layer = adder_nnx.ShiftLinear(6, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expects in_features=6"):
        layer(jnp.ones((2, 5)))


def test_frozen_shift_layers_compute_what_the_linen_ones_do():
    """Their frozen layers as NNX modules: the linen layer's forward on the same latents, no
    gradient to the latents, the input's gradient unquantised even with a key."""
    conv = adder_nnx.ShiftConv(2, 4, 3, padding=1, frozen=True, rngs=nnx.Rngs(0))
    params = {"shift": conv.shift[...], "sign": conv.sign[...]}
    assert set(np.unique(params["shift"])) <= set(range(-7, 1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=X_SHAPE), jnp.float32)
    linen = adder_nn.ShiftConv(features=4, kernel_size=3, padding=1, frozen=True)
    np.testing.assert_array_equal(conv(x), linen.apply({"params": params}, x))
    grads = nnx.grad(lambda m: jnp.sum(m(x, key=jax.random.key(3)) ** 2))(conv)
    assert not np.any(grads.shift[...]) and not np.any(grads.sign[...])
    g_key = jax.grad(lambda x: jnp.sum(conv(x, key=jax.random.key(3)) ** 2))(x)
    np.testing.assert_array_equal(g_key, jax.grad(lambda x: jnp.sum(conv(x) ** 2))(x))
    dense = adder_nnx.ShiftLinear(6, 3, frozen=True, rngs=nnx.Rngs(1))
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 6)), jnp.float32)
    dparams = {"shift": dense.shift[...], "sign": dense.sign[...]}
    linen_dense = adder_nn.ShiftDense(features=3, frozen=True)
    np.testing.assert_array_equal(dense(z), linen_dense.apply({"params": dparams}, z))
    with pytest.raises(ValueError, match="frozen=True needs kind='ps'"):
        adder_nnx.ShiftLinear(6, 3, frozen=True, kind="q", rngs=nnx.Rngs(1))
