"""adderjax.native: the op's native CPU path (dtypes, the p dispatch, the mesh, training)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adderjax
from adderjax import native

pytestmark = pytest.mark.skipif(
    "native" not in adderjax.available_implementations(),
    reason=str(adderjax.unavailable_implementations().get("native")),
)

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(4, 9, 9, 6)), jnp.float32)
W = jnp.asarray(RNG.normal(size=(3, 3, 6, 5)), jnp.float32)


G = jnp.asarray(RNG.normal(size=(4, 5, 5, 5)), jnp.float32)


def grads(implementation, x=X, w=W, **kwargs):
    def loss(x, w):
        y = adderjax.adder_conv(x, w, (2, 2), "SAME", implementation=implementation, **kwargs)
        return jnp.sum(y.astype(jnp.float32) * G)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)


def assert_trees_close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = max(float(jnp.max(jnp.abs(v))), 1.0)
        np.testing.assert_allclose(np.asarray(u, np.float32), v, rtol=rtol, atol=rtol * scale)


def test_formula_per_dtype():
    assert native.filter_formula(jnp.float32) == "min"
    assert native.filter_formula(jnp.float64) == "abs"


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(p=1.5, input_grad="lp"), dict(p=2.0, input_grad="lp"), dict(filter_grad="sign")],
)
def test_gradients_match_the_xla_path(kwargs):
    assert_trees_close(grads("native", **kwargs), grads("xla", **kwargs), 1e-5)


def test_bfloat16_is_computed_in_float32():
    x, w = X.astype(jnp.bfloat16), W.astype(jnp.bfloat16)
    y = adderjax.adder_conv(x, w, implementation="native")
    assert y.dtype == jnp.bfloat16
    want = adderjax.adder_conv(x.astype(jnp.float32), w.astype(jnp.float32), implementation="xla")
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2)
    (_, (dx, dw)) = grads("native", x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16


def test_traced_p_takes_the_branches_and_matches_xla():
    f = jax.jit(lambda p: adderjax.adder_conv(X, W, p=p, implementation="native"))
    g = jax.jit(lambda p: adderjax.adder_conv(X, W, p=p, implementation="xla"))
    for p in (1.0, 1.3, 2.0):
        np.testing.assert_allclose(f(p), g(p), rtol=1e-5)
    assert f._cache_size() == 1


def test_adam_step_of_a_layer_matches_the_xla_path():
    layer = lambda impl: adderjax.nn.AdderConv(4, (3, 3), implementation=impl)
    variables = layer("xla").init(jax.random.key(0), X)
    opt = optax.adam(1e-2)

    def step(impl, params):
        loss = lambda p: jnp.mean(layer(impl).apply({"params": p}, X) ** 2)
        g = jax.grad(loss)(params)
        updates, _ = opt.update(g, opt.init(params), params)
        return optax.apply_updates(params, updates)

    assert_trees_close(step("native", variables["params"]), step("xla", variables["params"]), 1e-5)


def test_a_mesh_runs_each_batch_shard_and_matches_one_device(tmp_path):
    """Under jax.set_mesh the custom calls run in a shard_map over the batch (the filter
    gradient's correlation summed over the shards)."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        import adderjax
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(8, 6, 6, 3)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
        def f(x, w):
            loss = lambda x, w: jnp.sum(jnp.sin(adderjax.adder_conv(x, w)))
            return jax.grad(loss, (0, 1))(x, w)
        whole = jax.jit(f)(x, w)
        mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))
            text = jax.jit(f).lower(xs, w).as_text()
            split = jax.jit(f)(xs, w)
        assert text.count("sdy.manual_computation") >= 3, "not in a shard_map"
        for kernel in ("forward", "input_grad", "filter_corr"):
            assert f"adderjax_{kernel}_" in text, kernel
        for a, b in zip(whole, split):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        print("ok")
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.getcwd(),
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
