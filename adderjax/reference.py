"""The specification of the adder op: a plain jnp forward and the AdderNet backward by hand.

This is slow and memory hungry on purpose (it builds every patch, like the PyTorch
reference's unfold); it exists to be obviously correct, runs in float64, and every fast
path in adderjax is tested against it.

Forward (arXiv:1912.13200 eq. 2, arXiv:2105.14202 for the l_p form)::

    y[n, h, w, o] = -sum_{i, j, c} |xpad[n, h*s + i, w*s + j, c] - w[i, j, c, o]| ** p

Backward, the paper's rules rather than the true gradient:

* filter, the "full-precision gradient" (eq. 5), for every p:
  ``dw[i, j, c, o] = sum_{n, h, w} g[n, h, w, o] * (x_patch - w)``;
* input, ``input_grad="hardtanh"`` (eq. 7): ``sum_o g * clip(w - x_patch, -1, 1)``;
  ``input_grad="lp"`` (journal eq. 27): ``sum_o g * sign(w - x) * |w - x| ** (p - 1)``;
  both scattered back through the patch extraction onto the (unpadded) input;
* filter, ``filter_grad="sign"``: ``sum g * sign(x_patch - w)``, the true derivative of the
  l_1 forward (the paper's ablation, Table 4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from adderjax import geometry

__all__ = [
    "adder_conv",
    "adder_conv_backward",
    "adder_conv_forward",
    "adder_dense",
    "adder_dense_backward",
    "adder_dense_forward",
    "filter_grad_fn",
    "input_grad_fn",
]


def input_grad_fn(d, p, input_grad: str):
    """The per-term input gradient as a function of d = w - x."""
    if input_grad == "hardtanh":
        return jnp.clip(d, -1.0, 1.0)
    return jnp.sign(d) * jnp.abs(d) ** (p - 1)


def _patches(x, geom: geometry.ConvGeometry):
    """(N, Ho, Wo, kh, kw, C): the input patch under every output pixel."""
    xpad = geometry.pad_input(x, geom)
    (kh, kw), (sh, sw), (ho, wo) = geom.kernel_hw, geom.strides, geom.out_hw
    rows = []
    for i in range(kh):
        cols = []
        for j in range(kw):
            cols.append(xpad[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :])
        rows.append(jnp.stack(cols, axis=3))
    return jnp.stack(rows, axis=3)


def adder_conv_forward(x, w, strides=(1, 1), padding="SAME", *, p=1.0):
    geom = geometry.conv_geometry(x.shape, w.shape, strides, padding)
    patches = _patches(x, geom)[..., None]  # (N, Ho, Wo, kh, kw, C, 1)
    return -jnp.sum(jnp.abs(patches - w[None, None, None]) ** p, axis=(3, 4, 5))


def filter_grad_fn(d, filter_grad: str):
    """The per-term filter gradient as a function of d = x - w: d itself, or its sign."""
    return jnp.sign(d) if filter_grad == "sign" else d


def adder_conv_backward(
    x,
    w,
    g,
    strides=(1, 1),
    padding="SAME",
    *,
    p=1.0,
    input_grad="hardtanh",
    filter_grad="full_precision",
):
    """Returns (dx, dw) for the cotangent g of `adder_conv_forward`."""
    geom = geometry.conv_geometry(x.shape, w.shape, strides, padding)
    patches = _patches(x, geom)[..., None]  # (N, Ho, Wo, kh, kw, C, 1)
    gb = g[:, :, :, None, None, None, :]  # (N, Ho, Wo, 1, 1, 1, O)
    wb = w[None, None, None]
    dw = jnp.sum(gb * filter_grad_fn(patches - wb, filter_grad), axis=(0, 1, 2))
    dpatches = jnp.sum(gb * input_grad_fn(wb - patches, p, input_grad), axis=-1)
    # Scatter every patch element back to the padded input position it was read from.
    (kh, kw), (sh, sw), (ho, wo) = geom.kernel_hw, geom.strides, geom.out_hw
    dxpad = jnp.zeros((x.shape[0], *geom.padded_hw, x.shape[3]), dpatches.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad = dxpad.at[
                :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :
            ].add(dpatches[:, :, :, i, j, :])
    return geometry.unpad_input(dxpad, geom), dw


def _dense_diff(x, w):
    """(..., din, dout): x[..., i] - w[i, o]."""
    return x[..., :, None] - w.reshape((1,) * (x.ndim - 1) + w.shape)


def adder_dense_forward(x, w, *, p=1.0):
    return -jnp.sum(jnp.abs(_dense_diff(x, w)) ** p, axis=-2)


def adder_dense_backward(x, w, g, *, p=1.0, input_grad="hardtanh", filter_grad="full_precision"):
    d = _dense_diff(x, w)
    gb = g[..., None, :]
    dw = jnp.sum(gb * filter_grad_fn(d, filter_grad), axis=tuple(range(x.ndim - 1)))
    dx = jnp.sum(gb * input_grad_fn(-d, p, input_grad), axis=-1)
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 5, 6))
def _conv(x, w, strides, padding, p, input_grad, filter_grad):
    return adder_conv_forward(x, w, strides, padding, p=p)


def _conv_fwd(x, w, strides, padding, p, input_grad, filter_grad):
    return _conv(x, w, strides, padding, p, input_grad, filter_grad), (x, w, p)


def _conv_bwd(strides, padding, input_grad, filter_grad, res, g):
    x, w, p = res
    dx, dw = adder_conv_backward(
        x, w, g, strides, padding, p=p, input_grad=input_grad, filter_grad=filter_grad
    )
    return dx, dw, jnp.zeros_like(p)


_conv.defvjp(_conv_fwd, _conv_bwd)


def adder_conv(
    x,
    w,
    strides=(1, 1),
    padding="SAME",
    *,
    p=1.0,
    input_grad="hardtanh",
    filter_grad="full_precision",
):
    """Reference adder convolution, differentiable with the AdderNet rules."""
    geom = geometry.conv_geometry(x.shape, w.shape, strides, padding)
    input_grad = geometry.check_choice("input_grad", input_grad, geometry.INPUT_GRADS)
    filter_grad = geometry.check_choice("filter_grad", filter_grad, geometry.FILTER_GRADS)
    p = jnp.asarray(geometry.check_p(p), geometry.compute_dtype(x.dtype, w.dtype))
    return _conv(x, w, geom.strides, geom.pads, p, input_grad, filter_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense(x, w, p, input_grad, filter_grad):
    return adder_dense_forward(x, w, p=p)


def _dense_fwd(x, w, p, input_grad, filter_grad):
    return _dense(x, w, p, input_grad, filter_grad), (x, w, p)


def _dense_bwd(input_grad, filter_grad, res, g):
    x, w, p = res
    dx, dw = adder_dense_backward(x, w, g, p=p, input_grad=input_grad, filter_grad=filter_grad)
    return dx, dw, jnp.zeros_like(p)


_dense.defvjp(_dense_fwd, _dense_bwd)


def adder_dense(x, w, *, p=1.0, input_grad="hardtanh", filter_grad="full_precision"):
    """Reference adder dense layer, differentiable with the AdderNet rules."""
    input_grad = geometry.check_choice("input_grad", input_grad, geometry.INPUT_GRADS)
    filter_grad = geometry.check_choice("filter_grad", filter_grad, geometry.FILTER_GRADS)
    p = jnp.asarray(geometry.check_p(p), geometry.compute_dtype(x.dtype, w.dtype))
    return _dense(x, w, p, input_grad, filter_grad)
