"""adderjax.distill: kernel maps, alignment and losses against hand-computed values; capture."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from adderjax import distill, models, reference


def test_laplacian_kernel_map_by_hand():
    # y = -||x - f||_1 of a 9-term patch: 0 and 9; sigma 1 and 2 per term.
    y = jnp.array([0.0, -9.0])
    np.testing.assert_allclose(
        distill.laplacian_kernel_map(y, fan_in=9, sigma=1.0), [1, 1 / math.e]
    )
    np.testing.assert_allclose(
        distill.laplacian_kernel_map(y, fan_in=9, sigma=2.0), [1, math.exp(-0.5)], rtol=1e-6
    )


def test_gaussian_kernel_map_by_hand():
    # x = (1, 2), f = (0, 1): x.f = 2, ||x||^2 = 5, ||f||^2 = 1, ||x - f||^2 = 2, n = 2.
    got = distill.gaussian_kernel_map(
        jnp.array([2.0]), jnp.array([5.0]), jnp.array([1.0]), fan_in=2, sigma=1.0
    )
    np.testing.assert_allclose(got, [math.exp(-2 / (2 * 1 * 2))], rtol=1e-6)
    # Rounding that makes the distance negative is clipped: the map never exceeds 1.
    over = distill.gaussian_kernel_map(
        jnp.array([3.0]), jnp.array([5.0]), jnp.array([1.0]), fan_in=2, sigma=1.0
    )
    assert float(over[0]) == 1.0


@pytest.mark.parametrize(("strides", "padding"), [((1, 1), 1), ((2, 2), "SAME"), ((2, 1), "VALID")])
def test_gaussian_map_of_a_conv_is_the_kernel_of_patch_and_filter(strides, padding):
    """From the conv's output, patch norms and filter norms, the map equals
    exp(-||x_patch - f||^2 / (2 sigma^2 n)) with the distance computed directly (the adder
    reference at p = 2 is -||x_patch - f||_2^2, padded zeros included)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    f = (0.3 * rng.normal(size=(3, 3, 3, 4))).astype(np.float32)
    pad = ((1, 1), (1, 1)) if padding == 1 else padding
    conv = jax.lax.conv_general_dilated(
        x, f, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    patch = distill.patch_sq_norms(x, (3, 3), strides, padding)
    assert patch.shape == (*conv.shape[:-1], 1)
    got = distill.gaussian_kernel_map(conv, patch, distill.filter_sq_norms(f), fan_in=27, sigma=0.8)
    sq = -reference.adder_conv_forward(x, f, strides, pad, p=2.0)
    np.testing.assert_allclose(got, np.exp(-sq / (2 * 0.8**2 * 27)), rtol=1e-4, atol=1e-6)


def test_dense_patch_and_filter_norms():
    x = jnp.array([[1.0, 2.0, 2.0]])
    np.testing.assert_allclose(distill.patch_sq_norms(x), [[9.0]])
    w = jnp.array([[1.0, 0.0], [2.0, 3.0], [0.0, 4.0]])
    np.testing.assert_allclose(distill.filter_sq_norms(w), [5.0, 25.0])


def test_kd_loss_by_hand():
    student = jnp.zeros((1, 2))
    teacher = jnp.array([[math.log(3.0), 0.0]])
    # T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2).
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    np.testing.assert_allclose(distill.kd_loss(student, teacher, temperature=1.0), want, rtol=1e-6)
    # T = 2: p_t = (sqrt 3, 1) / (1 + sqrt 3), and the T^2 factor.
    a = math.sqrt(3) / (1 + math.sqrt(3))
    want = 4 * (a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a)))
    np.testing.assert_allclose(distill.kd_loss(student, teacher, temperature=2.0), want, rtol=1e-6)
    # Batch mean: the same row twice gives the same loss.
    twice = distill.kd_loss(jnp.tile(student, (2, 1)), jnp.tile(teacher, (2, 1)), temperature=2.0)
    np.testing.assert_allclose(twice, want, rtol=1e-6)


def test_losses_stop_at_the_teacher():
    s, t = jnp.array([[0.5, -1.0]]), jnp.array([[1.0, 2.0]])
    gs, gt = jax.grad(lambda s, t: distill.kd_loss(s, t, temperature=3.0), argnums=(0, 1))(s, t)
    assert float(jnp.abs(gs).sum()) > 0 and float(jnp.abs(gt).sum()) == 0
    gs, gt = jax.grad(distill.feature_loss, argnums=(0, 1))(s, t)
    np.testing.assert_allclose(gs, 2 * (s - t) / 2)
    assert float(jnp.abs(gt).sum()) == 0


def test_feature_loss_and_alignment():
    a = jnp.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_array_equal(distill.align(a, distill.identity_alignment(2)), a)
    swap = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(distill.align(a, swap), a[..., ::-1])
    np.testing.assert_allclose(distill.feature_loss(a, a + 2.0), 4.0)
    with pytest.raises(ValueError, match=r"alignment's matrix.shape=\(3, 3\)"):
        distill.align(a, jnp.eye(3))
    with pytest.raises(ValueError, match="same output shape"):
        distill.feature_loss(a, a[:1])


def test_standardize():
    x = jnp.asarray(np.random.default_rng(1).normal(3.0, 5.0, size=(4, 5, 5, 2)), jnp.float32)
    z = distill.standardize(x)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-3)


@pytest.mark.parametrize("name", ["sigma", "temperature"])
def test_bad_widths_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be positive, got {name}=0"):
        if name == "sigma":
            distill.laplacian_kernel_map(jnp.zeros(2), fan_in=2, sigma=0)
        else:
            distill.kd_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), temperature=0)


@pytest.mark.parametrize("name", ["resnet20", "vgg_small", "resnet50", "lenet5_bn"])
def test_stage_outputs_match_between_adder_net_and_cnn(name):
    """Every default distilled layer is an adder layer of the AdderNet and a conv or dense
    layer of its CNN, with the same output and map shapes: the maps compare element by
    element. (Traced only: jax.eval_shape.)"""
    size = (2, 28, 28, 1) if "lenet" in name else (2, 64, 64, 3)
    x = jax.ShapeDtypeStruct(size, jnp.float32)
    layers = models.STAGE_OUTPUTS[name]
    shapes = {}
    for adder in (True, False):
        model = models.get_model(name, num_classes=10, layer="adder" if adder else "conv")
        kinds = {}

        def run(x, model=model, kinds=kinds):
            variables = model.init(jax.random.key(0), x, train=False)
            with distill.capture(layers) as taps:
                model.apply(variables, x, train=False)
            kinds.update({k: t.adder for k, t in taps.items()})
            return {k: (t.outputs, distill.feature_map(t, "kernel")) for k, t in taps.items()}

        shapes[adder] = jax.tree.map(lambda a: a.shape, jax.eval_shape(run, x))
        assert kinds == {k: adder for k in layers}
    assert shapes[True] == shapes[False]


def test_capture_inside_grad_and_jit():
    """The recorded arrays belong to the trace: a loss on them has gradients."""
    model = models.get_model("lenet5_bn", num_classes=10)
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    @jax.jit
    def loss(params):
        with distill.capture(["conv2", "fc1"]) as taps:
            model.apply({**variables, "params": params}, x, train=False)
        maps = [distill.feature_map(taps[k], "kernel") for k in ("conv2", "fc1")]
        return sum(jnp.mean(m) for m in maps)

    grads = jax.grad(loss)(variables["params"])
    assert float(jnp.abs(grads["conv2"]["adder"]).sum()) > 0
    assert float(jnp.abs(grads["fc1"]["adder"]).sum()) > 0
    assert float(jnp.abs(grads["fc2"]["adder"]).sum()) == 0  # not distilled


class _Head(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(x)


def test_a_layer_with_a_bias_is_refused():
    model = _Head()
    x = jnp.ones((1, 2))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="has a bias"):
        with distill.capture(["head"]):
            model.apply(variables, x)


def test_doctests():
    assert doctest.testmod(distill).failed == 0
