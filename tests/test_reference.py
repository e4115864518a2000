"""The reference must itself be right: checked here against independent formulations."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from adderjax import reference


def _loop_forward(x, w, strides, pads, p):
    """Seven nested loops in numpy: the definition, character for character."""
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    (t, b), (lft, r) = pads
    xpad = np.zeros((n, h + t + b, wd + lft + r, cin))
    xpad[:, t : t + h, lft : lft + wd] = x
    ho = (h + t + b - kh) // strides[0] + 1
    wo = (wd + lft + r - kw) // strides[1] + 1
    y = np.zeros((n, ho, wo, cout))
    for nn, hh, ww, o in itertools.product(range(n), range(ho), range(wo), range(cout)):
        for i, j, c in itertools.product(range(kh), range(kw), range(cin)):
            d = xpad[nn, hh * strides[0] + i, ww * strides[1] + j, c] - w[i, j, c, o]
            y[nn, hh, ww, o] -= abs(d) ** p
    return y


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize(
    "strides,pads",
    [((1, 1), ((1, 1), (1, 1))), ((2, 1), ((0, 2), (1, 0))), ((2, 2), ((0, 0),) * 2)],
)
def test_forward_matches_loops(p, strides, pads):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 5, 6, 3)), rng.normal(size=(3, 2, 3, 4))
    with jax.enable_x64(True):
        y = reference.adder_conv_forward(jnp.asarray(x), jnp.asarray(w), strides, pads, p=p)
        np.testing.assert_allclose(np.asarray(y), _loop_forward(x, w, strides, pads, p), rtol=1e-12)


def test_forward_p2_is_a_conv_expansion():
    # -sum (x - w)^2 = 2 x*w - sum x^2 - sum w^2, with x*w a real convolution.
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 7, 7, 4)))
        w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)))
        dn = ("NHWC", "HWIO", "NHWC")
        xw = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn)
        x2 = lax.conv_general_dilated(x * x, jnp.ones_like(w), (2, 2), "SAME", dimension_numbers=dn)
        expected = 2 * xw - x2 - jnp.sum(w * w, axis=(0, 1, 2))[None, None, None, :]
        y = reference.adder_conv_forward(x, w, (2, 2), "SAME", p=2.0)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "VALID"), ((2, 1), "SAME")])
def test_backward_at_p2_is_half_the_true_gradient(strides, padding):
    # At p = 2 both AdderNet rules (full-precision dw, l_p dx) are the true gradient / 2, and
    # so is hardtanh's dx while every |w - x| < 1. Autodiff of the forward is independent.
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)))
        w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)))
        y, vjp = jax.vjp(
            lambda a, b: reference.adder_conv_forward(a, b, strides, padding, p=2.0), x, w
        )
        g = jnp.asarray(rng.normal(size=y.shape))
        true_dx, true_dw = vjp(g)
        dx, dw = reference.adder_conv_backward(x, w, g, strides, padding, p=2.0, input_grad="lp")
        np.testing.assert_allclose(dx, true_dx / 2, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dw, true_dw / 2, rtol=1e-10, atol=1e-10)
        # hardtanh == l_p(p=2) when nothing is clipped.
        small_x, small_w = x * 0.1, w * 0.1
        dx_h, dw_h = reference.adder_conv_backward(
            small_x, small_w, g, strides, padding, p=1.0, input_grad="hardtanh"
        )
        dx_l, dw_l = reference.adder_conv_backward(
            small_x, small_w, g, strides, padding, p=2.0, input_grad="lp"
        )
        np.testing.assert_allclose(dx_h, dx_l, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw_h, dw_l, rtol=1e-12, atol=1e-12)


def test_hardtanh_clips_and_lp1_is_sign():
    # One input, one weight: the rules can be read off directly.
    x = jnp.asarray([[[[0.0]]]])
    g = jnp.ones((1, 1, 1, 3))
    w = jnp.asarray([[[[3.0, -0.25, -2.0]]]])
    dx, dw = reference.adder_conv_backward(x, w, g, padding="VALID", input_grad="hardtanh")
    np.testing.assert_allclose(dx.ravel(), [1.0 - 0.25 - 1.0])
    np.testing.assert_allclose(dw.ravel(), [-3.0, 0.25, 2.0])  # x - w, unclipped
    dx, _ = reference.adder_conv_backward(x, w, g, padding="VALID", p=1.0, input_grad="lp")
    np.testing.assert_allclose(dx.ravel(), [1.0 - 1.0 - 1.0])


def test_dense_is_a_1x1_conv():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    y = reference.adder_dense_forward(x, w, p=1.5)
    yc = reference.adder_conv_forward(x[:, None, None], w[None, None], padding="VALID", p=1.5)
    np.testing.assert_allclose(y, yc[:, 0, 0], rtol=1e-6)
    dx, dw = reference.adder_dense_backward(x, w, g, p=1.5, input_grad="lp")
    dxc, dwc = reference.adder_conv_backward(
        x[:, None, None], w[None, None], g[:, None, None], padding="VALID", p=1.5, input_grad="lp"
    )
    np.testing.assert_allclose(dx, dxc[:, 0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, dwc[0, 0], rtol=1e-5, atol=1e-6)


def test_reference_custom_vjp_uses_the_adder_rules():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: reference.adder_conv(a, b, p=1.0), x, w)
    g = jnp.ones_like(y)
    dx, dw = vjp(g)
    rdx, rdw = reference.adder_conv_backward(x, w, g, p=1.0)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(dw, rdw)
