"""`adderjax.batch_norm.BatchNorm`: flax's module with PyTorch's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from adderjax.batch_norm import BatchNorm

EPS = 1e-5


def _train_step(module, variables, x):
    y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    return y, {**variables, **updates}


def test_running_statistics_are_pytorchs_at_batch_4():
    """Hand-computed: PyTorch's BatchNorm2d(momentum=0.1) updates running_var with the
    unbiased batch variance, n / (n - 1) times the biased one that normalises."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 3, 3, 2)).astype(np.float32)
    module = BatchNorm(momentum=0.9, epsilon=EPS)
    variables = module.init(jax.random.key(0), x, use_running_average=True)
    mean, var = np.ones(2, np.float64) * 0, np.ones(2, np.float64)
    for step in range(2):
        batch = x + step  # a second, shifted batch
        y, variables = _train_step(module, variables, batch)
        flat = batch.reshape(-1, 2).astype(np.float64)
        n = flat.shape[0]
        assert n == 36
        mean = 0.9 * mean + 0.1 * flat.mean(0)
        var = 0.9 * var + 0.1 * flat.var(0, ddof=1)
        want_y = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPS)
        np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), want_y, rtol=1e-5, atol=1e-5)
    stats = variables["batch_stats"]
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=1e-6)
    # flax's BatchNorm uses the biased variance: it differs by 0.1 * var / (n - 1) per step.
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=EPS)
    flax_vars = flax_bn.init(jax.random.key(0), x, use_running_average=True)
    for step in range(2):
        _, flax_vars = _train_step(flax_bn, flax_vars, x + step)
    assert np.max(np.abs(flax_vars["batch_stats"]["var"] - var)) > 1e-2


def test_variance_keeps_float32_precision_on_adder_like_outputs():
    """Adder outputs have a large mean and a small spread: E[x^2] - E[x]^2 (flax's default)
    cancels catastrophically in float32, the two-pass variance does not."""
    rng = np.random.default_rng(1)
    x64 = -1000.0 + rng.normal(0.0, 1.0, (8, 4, 4, 3))
    cot = rng.normal(size=x64.shape)

    def grads(module, x, c):
        variables = module.init(jax.random.key(0), x, use_running_average=True)

        def loss(x):
            y, _ = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
            return jnp.sum(y * c)

        return np.asarray(jax.grad(loss)(x), np.float64)

    with jax.enable_x64():
        want = grads(BatchNorm(dtype=jnp.float64, param_dtype=jnp.float64), x64, cot)
    ours = grads(BatchNorm(), x64.astype(np.float32), cot.astype(np.float32))
    fast = grads(nn.BatchNorm(), x64.astype(np.float32), cot.astype(np.float32))

    def error(g):
        return np.linalg.norm(g - want) / np.linalg.norm(want)

    assert error(ours) < 1e-4
    assert error(fast) > 10 * error(ours)


def test_drop_in_for_flax_batch_norm():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 5, 4)), jnp.float32)
    ours, theirs = BatchNorm(use_running_average=True), nn.BatchNorm(use_running_average=True)
    variables = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x)
    )
    stats = {"mean": jnp.arange(4.0), "var": jnp.arange(1.0, 5.0)}
    params = {"scale": jnp.full(4, 2.0), "bias": jnp.full(4, -1.0)}
    variables = {"params": params, "batch_stats": stats}
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-6)
    y = BatchNorm(use_running_average=True, dtype=jnp.bfloat16).apply(variables, x)
    assert y.dtype == jnp.bfloat16


def test_unsupported_arguments_are_one_line_errors():
    x = jnp.ones((2, 3, 3, 4))
    with pytest.raises(ValueError, match="axis_name='batch'") as info:
        BatchNorm(use_running_average=False, axis_name="batch").init(jax.random.key(0), x)
    assert "\n" not in str(info.value)
