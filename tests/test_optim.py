"""Tests for adderjax.optim: the adder mask, the adaptive learning rate and adder_sgd."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from adderjax import optim

ETA = 0.2


def _bits(x):
    """The raw bytes of an array, so that -0.0 vs 0.0 or a rounded value shows up."""
    x = np.asarray(x)
    return x.dtype, x.shape, x.tobytes()


def _np_adaptive(g, eta=ETA, eps=1e-12):
    """The adaptive learning rate as the PyTorch reference applies it, in float64."""
    g = np.asarray(g, np.float64)
    return g * eta * math.sqrt(g.size) / max(np.sqrt(np.sum(g * g)), eps)


# --------------------------------------------------------------------------- adder_mask


def test_adder_mask_linen_variables():
    variables = {
        "params": {
            "AdderConv_0": {"adder": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
            "AdderDense_0": {"adder": jnp.ones((4, 10))},
            "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "Dense_0": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
            # Only the leaf's own key counts, not a module of that name.
            "adder": {"kernel": jnp.ones((2, 2))},
        },
        "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros(4), "var": jnp.ones(4)}},
    }
    expected = {
        "params": {
            "AdderConv_0": {"adder": True, "bias": False},
            "AdderDense_0": {"adder": True},
            "BatchNorm_0": {"bias": False, "scale": False},
            "Dense_0": {"bias": False, "kernel": False},
            "adder": {"kernel": False},
        },
        "batch_stats": {"BatchNorm_0": {"mean": False, "var": False}},
    }
    mask = optim.adder_mask(variables)
    assert mask == expected
    assert all(type(leaf) is bool for leaf in jax.tree.leaves(mask))
    # Without the 'params' level.
    assert optim.adder_mask(variables["params"]) == expected["params"]


def test_adder_mask_sequences_none_and_masked_nodes():
    params = {
        "blocks": [{"adder": jnp.ones((2, 2)), "bias": jnp.ones(2)}, {"adder": jnp.ones(3)}],
        # A list under 'adder': its leaves' own keys are positions, not names.
        "adder": [jnp.ones(2), jnp.ones(2)],
        "frozen": None,
        "skipped": optax.MaskedNode(),
    }
    mask = optim.adder_mask(params)
    assert mask == {
        "blocks": [{"adder": True, "bias": False}, {"adder": True}],
        "adder": [False, False],
        "frozen": None,
        "skipped": optax.MaskedNode(),
    }
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert optim.adder_mask(None) is None
    assert optim.adder_mask(jnp.ones(3)) is False  # a bare leaf has no name


def test_adder_mask_linen_boxed_params():
    params = {"AdderConv_0": {"adder": nn.Partitioned(jnp.ones((3, 3, 2, 4)), names=(None,) * 4)}}
    mask = optim.adder_mask(params)
    assert isinstance(mask["AdderConv_0"]["adder"], nn.Partitioned)
    assert mask["AdderConv_0"]["adder"].value is True


class _NNXAdder(nnx.Module):
    def __init__(self, shape):
        self.adder = nnx.Param(jnp.ones(shape))
        self.bias = nnx.Param(jnp.zeros(shape[-1:]))


class _NNXNet(nnx.Module):
    def __init__(self):
        self.conv = _NNXAdder((3, 3, 2, 4))
        self.dense = _NNXAdder((4, 10))
        self.scale = nnx.Param(jnp.ones(10))
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))


_NNX_EXPECTED = {
    "conv": {"adder": True, "bias": False},
    "dense": {"adder": True, "bias": False},
    "scale": False,
}


@pytest.mark.parametrize("which", ["split", "state_param", "as_pure"])
def test_adder_mask_nnx_state(which):
    model = _NNXNet()
    if which == "split":
        _, state = nnx.split(model)
        expected = {**_NNX_EXPECTED, "count": False}
    else:
        state = nnx.state(model, nnx.Param)
        expected = _NNX_EXPECTED
        if which == "as_pure":  # what nnx.Optimizer hands to the transformation
            state = nnx.as_pure(state)
    mask = optim.adder_mask(state)
    assert jax.tree.structure(mask) == jax.tree.structure(state)
    assert nnx.to_pure_dict(mask) == expected
    assert all(type(leaf) is bool for leaf in jax.tree.leaves(mask))


def test_adder_mask_nnx_paths_end_in_value():
    # Why adder_mask looks through Variables: in flax 0.12 every nnx.State leaf path ends
    # in GetAttrKey('value'), so the name 'adder' is the second-to-last entry.
    _, state = nnx.split(_NNXAdder((2, 2)))
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths[0][-1] == jax.tree_util.GetAttrKey("value")
    assert paths[0][-2] == jax.tree_util.DictKey("adder")


def test_adder_mask_works_as_optax_mask():
    params = {"AdderConv_0": {"adder": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    tx = optax.masked(optax.set_to_zero(), optim.adder_mask)
    updates, _ = tx.update(params, tx.init(params))
    np.testing.assert_array_equal(updates["AdderConv_0"]["adder"], np.zeros((2, 2)))
    np.testing.assert_array_equal(updates["AdderConv_0"]["bias"], np.ones(2))


# ------------------------------------------------------------------ scale_by_adaptive_lr


def _grads():
    conv = np.array([3.0, 0.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32).reshape(2, 2, 1, 2)
    return {
        "AdderConv_0": {
            "adder": jnp.asarray(conv),  # ||g|| = 5 by hand, k = 8
            "bias": jnp.asarray([1e-30, -0.0, 7.5], jnp.float32),
        },
        "AdderDense_0": {"adder": jnp.asarray(np.arange(6, dtype=np.float32).reshape(3, 2) * 100)},
        "BatchNorm_0": {"scale": jnp.asarray([0.1, -3.0], jnp.float32)},
    }


def test_scale_by_adaptive_lr_values():
    grads = _grads()
    tx = optim.scale_by_adaptive_lr(eta=ETA)
    state = tx.init(grads)
    assert state == optax.EmptyState()
    updates, new_state = jax.jit(tx.update)(grads, state)
    assert new_state == optax.EmptyState()

    conv = updates["AdderConv_0"]["adder"]
    factor = ETA * math.sqrt(8) / 5.0
    np.testing.assert_allclose(
        conv,
        np.array([3, 0, -4, 0, 0, 0, 0, 0]).reshape(2, 2, 1, 2) * factor,
        rtol=1e-6,
    )
    dense = updates["AdderDense_0"]["adder"]
    np.testing.assert_allclose(dense, _np_adaptive(grads["AdderDense_0"]["adder"]), rtol=1e-6)
    # Each layer is normalised on its own, to norm eta * sqrt(k).
    np.testing.assert_allclose(np.linalg.norm(conv), ETA * math.sqrt(8), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(dense), ETA * math.sqrt(6), rtol=1e-6)
    # Everything else comes back bit for bit.
    assert _bits(updates["AdderConv_0"]["bias"]) == _bits(grads["AdderConv_0"]["bias"])
    assert _bits(updates["BatchNorm_0"]["scale"]) == _bits(grads["BatchNorm_0"]["scale"])
    assert jax.tree.structure(updates) == jax.tree.structure(grads)


@pytest.mark.parametrize("eta", [0.05, 1.0, 3.0])
def test_scale_by_adaptive_lr_eta(eta):
    g = {"adder": jnp.asarray(np.linspace(-2, 3, 12, dtype=np.float32).reshape(2, 3, 2))}
    updates, _ = optim.scale_by_adaptive_lr(eta).update(g, optax.EmptyState())
    np.testing.assert_allclose(updates["adder"], _np_adaptive(g["adder"], eta), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_scale_by_adaptive_lr_keeps_dtypes(dtype):
    rng = np.random.default_rng(0)
    adder = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    grads = {
        "adder": jnp.asarray(adder, dtype),
        "bias": jnp.asarray(rng.normal(size=4), dtype),
        "f32": {"adder": jnp.asarray(adder)},
    }
    updates, _ = jax.jit(optim.scale_by_adaptive_lr().update)(grads, optax.EmptyState())
    assert updates["adder"].dtype == dtype
    assert updates["bias"].dtype == dtype
    assert updates["f32"]["adder"].dtype == jnp.float32
    assert _bits(updates["bias"]) == _bits(grads["bias"])
    expected = _np_adaptive(np.asarray(grads["adder"], np.float64))
    tol = {jnp.float32: 1e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}[dtype]
    np.testing.assert_allclose(np.asarray(updates["adder"], np.float64), expected, rtol=tol)


def test_scale_by_adaptive_lr_half_precision_norm_does_not_overflow():
    # 300**2 > 65504: a norm taken in float16 is inf and would zero the update.
    g = {"adder": jnp.full((16, 16), 300.0, jnp.float16)}
    updates, _ = optim.scale_by_adaptive_lr(eta=ETA).update(g, optax.EmptyState())
    assert updates["adder"].dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(updates["adder"], np.float32), ETA, rtol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_scale_by_adaptive_lr_zero_gradient(dtype):
    g = {"adder": jnp.zeros((2, 2, 1, 2), dtype), "bias": jnp.zeros(2, dtype)}
    updates, _ = jax.jit(optim.scale_by_adaptive_lr().update)(g, optax.EmptyState())
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype == dtype
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
        np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)


def test_scale_by_adaptive_lr_eps_floor():
    # Below eps the norm is clamped, so tiny gradients are scaled by eta*sqrt(k)/eps.
    g = {"adder": jnp.full((2, 2), 1e-8, jnp.float32)}
    updates, _ = optim.scale_by_adaptive_lr(eta=1.0, eps=1.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(updates["adder"], 1e-8 * 2.0, rtol=1e-6)


def test_scale_by_adaptive_lr_does_not_recompile():
    tx = optim.scale_by_adaptive_lr()
    traces = []

    @jax.jit
    def step(grads):
        traces.append(None)
        return tx.update(grads, optax.EmptyState())[0]

    a = _grads()
    b = jax.tree.map(lambda x: x * 2 + 1, a)
    step(a)
    out = step(b)
    assert len(traces) == 1
    assert step._cache_size() == 1
    np.testing.assert_allclose(
        out["AdderDense_0"]["adder"], _np_adaptive(b["AdderDense_0"]["adder"]), rtol=1e-6
    )


def test_scale_by_adaptive_lr_traced_eta():
    # A traced eta cannot be validated at construction; it must still work.
    g = {"adder": jnp.asarray([[3.0, 4.0]])}
    f = jax.jit(lambda eta: optim.scale_by_adaptive_lr(eta).update(g, optax.EmptyState())[0])
    np.testing.assert_allclose(f(0.5)["adder"], _np_adaptive(g["adder"], 0.5), rtol=1e-6)


# ----------------------------------------------------------------------------- adder_sgd


def _np_adder_sgd(params, grads_seq, lrs, momentum, nesterov, weight_decay, eta=ETA):
    """torch.optim.SGD (dampening=0) after the adaptive scaling, on dicts of numpy float64."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    bufs = {}
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            if name == "adder":
                g = _np_adaptive(g, eta)
            d = g + weight_decay * p
            if momentum:
                bufs[name] = d if name not in bufs else momentum * bufs[name] + d
                d = d + momentum * bufs[name] if nesterov else bufs[name]
            params[name] = p - lr * d
    return params


def _sgd_problem(steps=4):
    rng = np.random.default_rng(42)
    params = {
        "adder": rng.normal(size=(2, 2, 1, 2)).astype(np.float32),
        "bias": rng.normal(size=2).astype(np.float32),
        "scale": (1 + rng.normal(size=2)).astype(np.float32),
    }
    grads_seq = [
        {
            k: (rng.normal(size=v.shape) * 10 ** rng.uniform(-3, 1)).astype(np.float32)
            for k, v in params.items()
        }
        for _ in range(steps)
    ]
    return params, grads_seq


def _run(tx, params, grads_seq, pass_params=True):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params if pass_params else None)
        return optax.apply_updates(params, updates), state

    for grads in grads_seq:
        params, state = step(params, state, jax.tree.map(jnp.asarray, grads))
    return params, state


@pytest.mark.parametrize("nesterov", [False, True])
def test_adder_sgd_matches_pytorch_sgd(nesterov):
    params, grads_seq = _sgd_problem()
    lr, momentum, wd = 0.1, 0.9, 0.05
    tx = optim.adder_sgd(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    got, _ = _run(tx, params, grads_seq)
    want = _np_adder_sgd(params, grads_seq, [lr] * len(grads_seq), momentum, nesterov, wd)
    for name in params:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_adder_sgd_nesterov_differs():
    # Guards the comparison above against nesterov being ignored.
    params, grads_seq = _sgd_problem()
    plain, _ = _run(optim.adder_sgd(0.1, nesterov=False), params, grads_seq)
    nest, _ = _run(optim.adder_sgd(0.1, nesterov=True), params, grads_seq)
    assert not np.allclose(plain["adder"], nest["adder"])


def test_adder_sgd_schedule():
    params, grads_seq = _sgd_problem()
    schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    tx = optim.adder_sgd(schedule, momentum=0.8, weight_decay=1e-2)
    got, _ = _run(tx, params, grads_seq)
    lrs = [0.2 * 0.5**t for t in range(len(grads_seq))]
    want = _np_adder_sgd(params, grads_seq, lrs, 0.8, False, 1e-2)
    for name in params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_adder_sgd_without_momentum_or_weight_decay():
    params, grads_seq = _sgd_problem()
    tx = optim.adder_sgd(0.3, momentum=0.0, weight_decay=0.0)
    # No momentum buffer is kept, and no params are needed without weight decay.
    got, state = _run(tx, params, grads_seq, pass_params=False)
    assert not any(
        isinstance(s, optax.TraceState)
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.TraceState))
    )
    want = _np_adder_sgd(params, grads_seq, [0.3] * len(grads_seq), 0.0, False, 0.0)
    for name in params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_adder_sgd_with_nnx_optimizer():
    model = _NNXAdder((2, 2))
    model.adder[...] = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    opt = nnx.Optimizer(model, optim.adder_sgd(0.1, weight_decay=0.01), wrt=nnx.Param)
    grads = nnx.State(
        {
            "adder": nnx.Param(jnp.asarray([[3.0, 0.0], [0.0, -4.0]])),
            "bias": nnx.Param(jnp.asarray([1.0, -1.0])),
        }
    )
    opt.update(model, grads)
    want = _np_adder_sgd(
        {"adder": [[1.0, 2.0], [3.0, 4.0]], "bias": [0.0, 0.0]},
        [{"adder": [[3.0, 0.0], [0.0, -4.0]], "bias": [1.0, -1.0]}],
        [0.1],
        0.9,
        False,
        0.01,
    )
    np.testing.assert_allclose(model.adder[...], want["adder"], rtol=1e-6)
    np.testing.assert_allclose(model.bias[...], want["bias"], rtol=1e-6)


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "make, name, value",
    [
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", 0.0),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", -0.2),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", float("nan")),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", float("inf")),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", "0.2"),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", True),
        (lambda v: optim.scale_by_adaptive_lr(eta=v), "eta", None),
        (lambda v: optim.scale_by_adaptive_lr(eps=v), "eps", 0.0),
        (lambda v: optim.adder_sgd(v), "learning_rate", 0.0),
        (lambda v: optim.adder_sgd(v), "learning_rate", -0.1),
        (lambda v: optim.adder_sgd(v), "learning_rate", float("nan")),
        (lambda v: optim.adder_sgd(v), "learning_rate", "fast"),
        (lambda v: optim.adder_sgd(0.1, momentum=v), "momentum", 1.0),
        (lambda v: optim.adder_sgd(0.1, momentum=v), "momentum", -0.1),
        (lambda v: optim.adder_sgd(0.1, nesterov=v), "nesterov", "yes"),
        (lambda v: optim.adder_sgd(0.1, weight_decay=v), "weight_decay", -1e-4),
        (lambda v: optim.adder_sgd(0.1, weight_decay=v), "weight_decay", float("inf")),
        (lambda v: optim.adder_sgd(0.1, eta=v), "eta", -1.0),
    ],
)
def test_bad_arguments(make, name, value):
    with pytest.raises(ValueError, match=name) as info:
        make(value)
    message = str(info.value)
    assert "\n" not in message
    assert repr(value) in message


def test_bad_array_argument_message_is_one_line():
    with pytest.raises(ValueError, match=r"eta .*shape \(2,\)"):
        optim.scale_by_adaptive_lr(eta=jnp.ones(2))


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        optim.adder_sgd(0.1, momentum=0.0, nesterov=True)


def test_good_arguments_accepted():
    optim.scale_by_adaptive_lr(eta=1)
    optim.scale_by_adaptive_lr(eta=np.float32(0.2))
    optim.scale_by_adaptive_lr(eta=jnp.asarray(0.2))
    optim.adder_sgd(optax.constant_schedule(0.1), momentum=0, weight_decay=0, eta=5)
    optim.adder_sgd(np.float64(0.1), momentum=np.float32(0.5), nesterov=np.bool_(True))


# ------------------------------------------------------------------------------ docs


def test_public_api():
    assert sorted(optim.__all__) == [
        "InvalidArgumentError",
        "add_decayed_weights",
        "adder_mask",
        "adder_sgd",
        "check_sgd_arguments",
        "decay_mask",
        "scale_by_adaptive_lr",
    ]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=0.0, nesterov=True), "nesterov"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(eta=0.0), "eta"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, name):
    """`check_sgd_arguments` is what adder_sgd and the trainer's config checks both run."""
    args = dict(learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4, eta=0.2)
    args.update(kwargs)
    with pytest.raises(optim.InvalidArgumentError) as info:
        optim.check_sgd_arguments(**args)
    assert info.value.name == name and info.value.value == kwargs[name]
    with pytest.raises(ValueError, match=name):
        optim.adder_sgd(**args)


def test_doctests():
    result = doctest.testmod(optim)
    assert result.attempted > 0
    assert result.failed == 0


def test_no_weight_decay_on_shift_and_sign_latents():
    """ShiftAddNet's parameter groups: weight decay on everything but DeepShift-PS's shift and
    sign latents (their Q weights and adder filters decay); the state is optax's unmasked one,
    so optimizer states of models without shift layers keep their layout."""
    params = {
        "conv": {"shift": jnp.full(2, -3.0), "sign": jnp.full(2, 0.5)},
        "q": {"shift_weight": jnp.full(2, 0.25)},
        "add": {"adder": jnp.ones(2)},
        "bn": {"scale": jnp.ones(2)},
    }
    assert optim.decay_mask(params) == {
        "conv": {"shift": False, "sign": False},
        "q": {"shift_weight": True},
        "add": {"adder": True},
        "bn": {"scale": True},
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = optim.adder_sgd(learning_rate=1.0, momentum=0.0, weight_decay=0.5)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert jax.tree.map(lambda u: float(u[0]), updates) == {
        "conv": {"shift": 0.0, "sign": 0.0},
        "q": {"shift_weight": -0.125},
        "add": {"adder": -0.5},  # decay added after the adaptive rate (of a zero gradient: 0)
        "bn": {"scale": -0.5},
    }
    decay = optim.add_decayed_weights(0.5)
    assert jax.tree.structure(decay.init(params)) == jax.tree.structure(
        optax.add_decayed_weights(0.5).init(params)
    )
    with pytest.raises(ValueError, match="needs params"):
        decay.update(zeros, decay.init(params))
