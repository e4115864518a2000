"""The public adder op: `adder_conv` and `adder_dense`, with the AdderNet backward as a custom_vjp.

The forward is ``y = -sum |x_patch - w| ** p``; the backward follows the paper
(arXiv:1912.13200 eq. 5 and 7, arXiv:2105.14202 eq. 27), not autodiff: the filter gets the
full-precision gradient ``x - w`` and the input a HardTanh-clipped (or l_p) gradient.
`adderjax.reference` is the specification every implementation here is tested against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from adderjax import geometry, native, pallas, xla

__all__ = [
    "adder_conv",
    "adder_dense",
    "available_implementations",
    "default_implementation",
    "unavailable_implementations",
]


def available_implementations() -> tuple[str, ...]:
    """Implementations that can run on the current default backend, the default first.

    "pallas" (the Triton kernels of `kernels/` on a GPU, the Mosaic ones on a TPU) needs a
    GPU or TPU; on any backend the Triton kernels can still run in Pallas interpret mode with
    ``interpret=True``, slowly, which is how CI tests them.
    "native" (the C++ kernels of `kernels/cpu/`) needs the CPU backend and the extension that
    `pip install` builds where a C++ compiler is found (`unavailable_implementations()` says
    why it is missing). "xla" runs everywhere.
    """
    backend = jax.default_backend()
    if backend in ("gpu", "tpu"):
        return ("pallas", "xla")
    if backend == "cpu" and native.available():
        return ("native", "xla")
    return ("xla",)


def unavailable_implementations() -> dict[str, str]:
    """Each implementation that cannot run on the current default backend, with why."""
    backend = jax.default_backend()
    missing = {}
    if backend not in ("gpu", "tpu"):
        missing["pallas"] = (
            f"needs a GPU or TPU backend, this is {backend!r} (interpret=True runs it)"
        )
    if backend != "cpu":
        missing["native"] = f"needs the CPU backend, this is {backend!r}"
    elif not native.available():
        missing["native"] = native.unavailable_reason()
    return missing


def default_implementation() -> str:
    """What `implementation=None` picks: "pallas" on GPU and TPU, "native" on CPU where it was
    built, else "xla"."""
    return available_implementations()[0]


# Internal name of the kernels run in interpret mode (a static argument of the custom_vjp).
_PALLAS_INTERPRET = "pallas-interpret"


def _resolve_implementation(implementation, interpret) -> str:
    implementation = geometry.check_choice(
        "implementation", implementation, geometry.IMPLEMENTATIONS, allow_none=True
    )
    if not isinstance(interpret, bool):
        raise ValueError(f"interpret must be a bool, got {interpret!r}")
    if interpret:
        if implementation != "pallas":
            raise ValueError(
                f"interpret=True runs the Pallas kernels in interpret mode; it needs "
                f"implementation='pallas', got implementation={implementation!r}"
            )
        return _PALLAS_INTERPRET
    if implementation is None:
        return default_implementation()
    if implementation not in available_implementations():
        raise ValueError(
            f"implementation={implementation!r} is not available: "
            f"{unavailable_implementations()[implementation]} "
            f"(available: {available_implementations()})"
        )
    return implementation


def _forward(x, w, p, geom, p_static, implementation):
    if implementation == "xla":
        return xla.forward(x, w, p, geom, p_static)
    if implementation == "native":
        return native.forward(x, w, p, geom, p_static)
    return pallas.forward(x, w, p, geom, p_static, interpret=implementation == _PALLAS_INTERPRET)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _adder_conv(x, w, p, geom, p_static, input_grad, filter_grad, implementation):
    del input_grad, filter_grad
    y = _forward(x, w, p, geom, p_static, implementation)
    return y.astype(jnp.result_type(x.dtype, w.dtype))


def _adder_conv_fwd(x, w, p, geom, p_static, input_grad, filter_grad, implementation):
    y = _adder_conv(x, w, p, geom, p_static, input_grad, filter_grad, implementation)
    return y, (x, w, p)


def _adder_conv_bwd(geom, p_static, input_grad, filter_grad, implementation, res, g):
    x, w, p = res
    if implementation in ("xla", "native"):
        if implementation == "xla":
            dx = xla.input_grad(x, w, g, p, geom, p_static, input_grad)
        else:
            dx = native.input_grad(x, w, g, p, geom, p_static, input_grad)
        if filter_grad == "sign":  # the ablation's rule: XLA's on both paths
            dw = xla.sign_filter_grad(x, w, g, geom)
        elif implementation == "xla":
            dw = xla.filter_grad(x, w, g, geom)
        else:
            dw = native.filter_grad(x, w, g, geom)
    else:
        interpret = implementation == _PALLAS_INTERPRET
        dx = pallas.input_grad(x, w, g, p, geom, p_static, input_grad, interpret=interpret)
        dw = pallas.filter_grad(x, w, g, geom, interpret=interpret)
    return dx.astype(x.dtype), dw.astype(w.dtype), jnp.zeros_like(p)


_adder_conv.defvjp(_adder_conv_fwd, _adder_conv_bwd)


def _static_p(p, dtype):
    """(traced-or-concrete p as an array, its value when known at trace time, else None)."""
    p = geometry.check_p(p)
    if isinstance(p, float):
        return jnp.asarray(p, dtype), p
    return jnp.asarray(p, dtype), None


def adder_conv(
    x,
    w,
    strides=(1, 1),
    padding="SAME",
    *,
    p=1.0,
    input_grad="hardtanh",
    filter_grad="full_precision",
    implementation=None,
    interpret=False,
):
    """Adder convolution: the negative l_p distance between every input patch and every filter.

    ``y[n, h, w, o] = -sum_{i, j, c} |xpad[n, h*s + i, w*s + j, c] - w[i, j, c, o]| ** p``,
    in the layout of `jax.lax.conv_general_dilated` with ``("NHWC", "HWIO", "NHWC")``.

    Args:
      x: input, (N, H, W, Cin), floating.
      w: filters, (kh, kw, Cin, Cout), floating.
      strides: an int or a pair of positive ints.
      padding: "SAME", "VALID" or explicit ``[(lo, hi), (lo, hi)]`` exactly as lax; padded
        zeros are inputs like any other (``|0 - w|`` contributes).
      p: the norm, in [1, 2]; 1 is the AdderNet of arXiv:1912.13200. May be a traced scalar
        (the l_p schedule of arXiv:2105.14202 changes it without recompiling).
      input_grad: "hardtanh", the input gradient ``sum_o g * clip(w - x, -1, 1)``, or "lp",
        ``sum_o g * sign(w - x) * |w - x| ** (p - 1)``.
      filter_grad: "full_precision", the paper's ``sum g * (x_patch - w)`` (eq. 5), or
        "sign", ``sum g * sign(x_patch - w)``, the true derivative of the l_1 forward: the
        rule the paper's ablation (Table 4) compares against. "sign" is implemented by the
        "xla" and "native" paths (by XLA operations on both); it holds an
        (N, Ho, Wo, Cin, Cout) tensor per filter tap.
      implementation: None (the best for the current backend: "pallas" on GPU and TPU,
        "native" on CPU where its extension was built, else "xla"), "xla" (XLA operations,
        any backend), "native" (the C++ kernels of `kernels/cpu/`, CPU) or "pallas" (the
        Triton kernels of `kernels/` on GPU, the Mosaic kernels of `kernels/adder_tpu.py` on
        TPU). A named implementation that cannot run here raises; it never falls back
        silently.
      interpret: with implementation="pallas", run the Triton kernels in Pallas interpret
        mode on any backend (slow; for testing them without a GPU).

    Returns:
      (N, Ho, Wo, Cout) with the dtype of ``x + w``. Its VJP gives the filter the
      full-precision gradient ``sum g * (x_patch - w)`` and the input the rule above.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 4, 4, 2)); w = jnp.zeros((3, 3, 2, 5))
      >>> adder_conv(x, w, padding="VALID").shape
      (1, 2, 2, 5)
      >>> float(adder_conv(x, w, padding="VALID")[0, 0, 0, 0])
      -18.0

    References:
      Chen et al., AdderNet: Do We Really Need Multiplications in Deep Learning?,
      https://arxiv.org/abs/1912.13200; Xu et al., https://arxiv.org/abs/2105.14202.
    """
    geometry.check_float_array("x", x)
    geometry.check_float_array("w", w)
    geom = geometry.conv_geometry(x.shape, w.shape, strides, padding)
    input_grad = geometry.check_choice("input_grad", input_grad, geometry.INPUT_GRADS)
    filter_grad = geometry.check_choice("filter_grad", filter_grad, geometry.FILTER_GRADS)
    implementation = _resolve_implementation(implementation, interpret)
    if filter_grad == "sign" and implementation not in ("xla", "native"):
        raise ValueError(
            "filter_grad='sign' is implemented by implementation='xla' and 'native' only, got "
            f"implementation={implementation.split('-')[0]!r}"
        )
    p, p_static = _static_p(p, geometry.compute_dtype(x.dtype, w.dtype))
    return _adder_conv(x, w, p, geom, p_static, input_grad, filter_grad, implementation)


def adder_dense(
    x,
    w,
    *,
    p=1.0,
    input_grad="hardtanh",
    filter_grad="full_precision",
    implementation=None,
    interpret=False,
):
    """Adder dense layer: ``y[..., o] = -sum_i |x[..., i] - w[i, o]| ** p``.

    A 1x1 adder convolution over a 1x1 image, with the same gradients and arguments as
    `adder_conv`.

    Args:
      x: input, (..., din), floating, at least rank 1.
      w: weights, (din, dout), floating.
      p, input_grad, filter_grad, implementation, interpret: as in `adder_conv`.

    Returns:
      (..., dout) with the dtype of ``x + w``.

    Example:
      >>> import jax.numpy as jnp
      >>> adder_dense(jnp.ones((2, 3)), jnp.zeros((3, 4))).tolist()[0]
      [-3.0, -3.0, -3.0, -3.0]
    """
    geometry.check_float_array("x", x)
    geometry.check_float_array("w", w)
    if w.ndim != 2:
        raise ValueError(f"w must be rank 2 (din, dout), got w.shape={tuple(w.shape)}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"feature mismatch: x.shape={tuple(x.shape)} must end in din={w.shape[0]} "
            f"(w.shape={tuple(w.shape)})"
        )
    batch = x.shape[:-1]
    rows = x.reshape(-1, 1, 1, x.shape[-1])
    y = adder_conv(
        rows,
        w[None, None],
        (1, 1),
        "VALID",
        p=p,
        input_grad=input_grad,
        filter_grad=filter_grad,
        implementation=implementation,
        interpret=interpret,
    )
    return y.reshape(*batch, w.shape[1])
