"""adderjax.ops: forward and both AdderNet gradients of every path against the reference."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import adderjax
from adderjax import reference

EPS = {jnp.float32: 1.2e-7, jnp.bfloat16: 7.9e-3, jnp.float64: 2.3e-16}


def tolerance(dtype, reduction: int) -> float:
    """Per-dtype tolerance, scaled by sqrt of the reduction length (as tokamax's tests)."""
    return 4 * EPS[dtype] * math.sqrt(reduction)


def assert_close(actual, expected, dtype, reduction, what):
    actual = np.asarray(jnp.asarray(actual, jnp.float64 if dtype == jnp.float64 else jnp.float32))
    expected = np.asarray(expected)
    tol = tolerance(dtype, reduction)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def check_against_reference(
    x_shape, w_shape, strides, padding, p, input_grad, dtype=jnp.float32, seed=0, **op_kwargs
):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    w = jnp.asarray(rng.normal(size=w_shape), dtype)
    ref_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
    xr, wr = x.astype(ref_dtype), w.astype(ref_dtype)

    fn = lambda a, b: adderjax.adder_conv(
        a, b, strides, padding, p=p, input_grad=input_grad, **op_kwargs
    )
    # One compiled program per shape: eagerly, every op of the scan compiles on its own.
    y, vjp = jax.vjp(jax.jit(fn), x, w)
    assert y.dtype == dtype
    g = jnp.asarray(rng.normal(size=y.shape), dtype)
    dx, dw = vjp(g)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype

    y_ref = jax.jit(lambda a, b: reference.adder_conv_forward(a, b, strides, padding, p=p))(xr, wr)
    dx_ref, dw_ref = jax.jit(
        lambda a, b, c: reference.adder_conv_backward(
            a, b, c, strides, padding, p=p, input_grad=input_grad
        )
    )(xr, wr, g.astype(ref_dtype))
    k = w_shape[0] * w_shape[1] * w_shape[2]
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, k, "forward")
    # dx sums over (taps hitting the pixel) * cout terms, dw over N * Ho * Wo terms.
    assert_close(dx, dx_ref, dtype, w_shape[0] * w_shape[1] * w_shape[3], "input gradient")
    assert_close(dw, dw_ref, dtype, math.prod(y.shape[:3]), "filter gradient")


# The paths that run here, other than the Pallas kernels (tested in interpret mode below):
# on CPU "native" (where it was built) and "xla".
PATHS = [i for i in adderjax.available_implementations() if i != "pallas"]

CASES = [
    # x shape, w shape, strides, padding
    ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), "SAME"),
    ((2, 8, 8, 4), (3, 3, 4, 6), (2, 2), "SAME"),
    ((1, 9, 7, 3), (3, 3, 3, 10), (2, 2), "VALID"),  # batch 1, odd sizes, ragged channels
    ((2, 6, 6, 10), (1, 1, 10, 3), (2, 2), "VALID"),  # 1x1 stride-2 shortcut
    ((2, 5, 5, 1), (3, 3, 1, 4), (1, 1), ((1, 1), (1, 1))),  # Cin = 1, explicit symmetric
    ((1, 7, 6, 3), (2, 3, 3, 5), (2, 1), ((2, 0), (0, 3))),  # asymmetric everything
    ((1, 8, 8, 2), (3, 3, 2, 3), (3, 3), ((-1, 1), (1, -1))),  # negative padding crops, as lax
    ((2, 4, 4, 9), (3, 3, 9, 11), (1, 1), "SAME"),  # several channel chunks both ways
    ((1, 3, 3, 2), (3, 3, 2, 2), (1, 1), "VALID"),  # a single output pixel
    ((2, 7, 7, 5), (7, 7, 5, 2), (1, 1), "SAME"),  # kernel as large as the input
]


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
@pytest.mark.parametrize("p,input_grad", [(1.0, "hardtanh"), (1.5, "lp"), (2.0, "lp")])
def test_matches_reference(x_shape, w_shape, strides, padding, p, input_grad, implementation):
    check_against_reference(
        x_shape, w_shape, strides, padding, p, input_grad, implementation=implementation
    )


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES[:4])
def test_bfloat16_matches_reference(x_shape, w_shape, strides, padding, implementation):
    check_against_reference(
        x_shape,
        w_shape,
        strides,
        padding,
        1.0,
        "hardtanh",
        jnp.bfloat16,
        implementation=implementation,
    )


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("p,input_grad", [(1.0, "hardtanh"), (1.0, "lp"), (1.25, "lp")])
def test_float64_matches_reference(p, input_grad, implementation):
    with jax.enable_x64(True):
        check_against_reference(
            (2, 6, 6, 3),
            (3, 3, 3, 4),
            (2, 2),
            "SAME",
            p,
            input_grad,
            jnp.float64,
            implementation=implementation,
        )


@pytest.mark.parametrize("implementation", PATHS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_shapes_match_reference(data, implementation):
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    sh, sw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    padding = data.draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.tuples(
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
            ),
        )
    )
    lo_h = 0 if isinstance(padding, str) else sum(padding[0])
    lo_w = 0 if isinstance(padding, str) else sum(padding[1])
    h = data.draw(st.integers(max(1, kh - lo_h), 9))
    w = data.draw(st.integers(max(1, kw - lo_w), 9))
    x_shape = (data.draw(st.integers(1, 2)), h, w, data.draw(st.integers(1, 6)))
    w_shape = (kh, kw, x_shape[3], data.draw(st.integers(1, 7)))
    p, input_grad = data.draw(st.sampled_from([(1.0, "hardtanh"), (1.0, "lp"), (1.7, "lp")]))
    check_against_reference(
        x_shape,
        w_shape,
        (sh, sw),
        padding,
        p,
        input_grad,
        seed=h * w,
        implementation=implementation,
    )


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 1), (1, 1)), ((0, 2), (2, 1))])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 3)])
def test_output_shape_matches_lax_conv(padding, strides):
    x, w = jnp.ones((2, 9, 8, 3)), jnp.ones((3, 2, 3, 5))
    expected = lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    ).shape
    assert adderjax.adder_conv(x, w, strides, padding).shape == expected


def test_padded_zeros_count_as_inputs():
    x, w = jnp.zeros((1, 1, 1, 1)), jnp.full((3, 3, 1, 1), 2.0)
    # Every one of the 9 taps sees a zero (8 padded, 1 real): -9 * |0 - 2|.
    assert float(adderjax.adder_conv(x, w, padding="SAME")[0, 0, 0, 0]) == -18.0


def test_traced_p_does_not_recompile_and_is_correct():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    f = jax.jit(lambda x, w, p: adderjax.adder_conv(x, w, p=p, input_grad="lp"))
    for p in (2.0, 1.6, 1.0):
        y = f(x, w, jnp.float32(p))
        expected = reference.adder_conv_forward(x, w, p=p)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)
    assert f._cache_size() == 1


def test_train_step_does_not_recompile_when_p_changes():
    """The l_p schedule: one compiled step for every p, and p really changes the update."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(4, 6, 6, 2)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
    params = {"adder": jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)}

    def loss_fn(params, p):
        y = adderjax.adder_conv(x, params["adder"], p=p, input_grad="lp")
        return jnp.mean((y / 18 - target) ** 2)

    @jax.jit
    def train_step(params, p):
        loss, grads = jax.value_and_grad(loss_fn)(params, p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, params, grads), loss

    losses = []
    for p in jnp.linspace(2.0, 1.0, 5):
        params, loss = train_step(params, p)
        losses.append(float(loss))
    assert train_step._cache_size() == 1
    assert len(set(losses)) == len(losses)


def test_p_gets_no_gradient():
    x, w = jnp.ones((1, 3, 3, 1)), jnp.zeros((3, 3, 1, 1))
    dp = jax.grad(lambda p: adderjax.adder_conv(x, w, p=p).sum())(jnp.float32(1.5))
    assert float(dp) == 0.0


def test_vmap_over_an_extra_axis():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 2, 5, 5, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    y = jax.vmap(lambda a: adderjax.adder_conv(a, w))(x)
    expected = jnp.stack([reference.adder_conv_forward(a, w) for a in x])
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    g = jax.grad(lambda a: jax.vmap(lambda b: adderjax.adder_conv(b, w))(a).sum())(x)
    expected_g = jnp.stack(
        [reference.adder_conv_backward(a, w, jnp.ones((2, 5, 5, 4)))[0] for a in x]
    )
    np.testing.assert_allclose(g, expected_g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("p,input_grad", [(1.0, "hardtanh"), (1.5, "lp")])
def test_dense_matches_reference(x_shape, p, input_grad):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    fn = lambda a, b: adderjax.adder_dense(a, b, p=p, input_grad=input_grad)
    y, vjp = jax.vjp(fn, x, w)
    assert y.shape == x_shape[:-1] + (4,)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    dx, dw = vjp(g)
    np.testing.assert_allclose(y, reference.adder_dense_forward(x, w, p=p), rtol=1e-5)
    dx_ref, dw_ref = reference.adder_dense_backward(x, w, g, p=p, input_grad=input_grad)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


X, W = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x=jnp.ones((5, 5, 3))), r"x must be rank 4.*x.shape=\(5, 5, 3\)"),
        (dict(w=jnp.ones((3, 3, 4))), r"w must be rank 4"),
        (dict(w=jnp.ones((3, 3, 2, 4))), r"channel mismatch.*3 input channels.*expects 2"),
        (dict(w=jnp.ones((7, 3, 3, 4)), padding="VALID"), r"kernel larger than the padded input"),
        (dict(strides=(0, 1)), r"strides must be a pair of positive ints"),
        (dict(strides=(-1, 1)), r"strides must be a pair of positive ints"),
        (dict(strides="2"), r"strides must be"),
        (dict(padding="FULL"), r"padding must be 'SAME', 'VALID'.*'FULL'"),
        (dict(padding=[(1, 1)]), r"padding must be"),
        (dict(padding=[(1, 1), (1.5, 1)]), r"padding must be"),
        (dict(p=0.5), r"p must be in \[1, 2\], got 0.5"),
        (dict(p=2.5), r"p must be in \[1, 2\]"),
        (dict(p=jnp.ones(2)), r"p must be a float in \[1, 2\] or a scalar"),
        (dict(input_grad="sign"), r"input_grad must be 'hardtanh' or 'lp', got 'sign'"),
        (
            dict(implementation="cuda"),
            r"implementation must be 'xla' or 'pallas' or 'native' or None",
        ),
        (dict(filter_grad="exact"), r"filter_grad must be 'full_precision' or 'sign'"),
        (
            dict(filter_grad="sign", implementation="pallas", interpret=True),
            r"filter_grad='sign' is implemented by implementation='xla' and 'native' only",
        ),
        (dict(x=jnp.ones((2, 5, 5, 3), jnp.int32)), r"x must have a floating dtype"),
        (dict(w=np.ones((3, 3, 3, 4), np.int8)), r"w must have a floating dtype"),
        (dict(x=[[1.0]]), r"x must be an array"),
    ],
)
def test_bad_arguments_raise_one_clear_line(kwargs, match):
    args = dict(x=X, w=W, strides=(1, 1), padding="SAME")
    args.update(kwargs)
    x, w = args.pop("x"), args.pop("w")
    with pytest.raises(ValueError, match=match) as info:
        adderjax.adder_conv(x, w, args.pop("strides"), args.pop("padding"), **args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "x,w,match",
    [
        (jnp.ones((2, 3)), jnp.ones((3,)), r"w must be rank 2"),
        (jnp.ones((2, 3)), jnp.ones((4, 5)), r"feature mismatch.*din=4"),
        (jnp.ones(()), jnp.ones((1, 5)), r"feature mismatch"),
    ],
)
def test_dense_bad_arguments(x, w, match):
    with pytest.raises(ValueError, match=match):
        adderjax.adder_dense(x, w)


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding",
    [
        ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), "SAME"),
        ((2, 8, 7, 4), (5, 5, 4, 6), (1, 1), [(2, 1), (0, 3)]),
        ((3, 1, 1, 7), (1, 1, 7, 4), (1, 1), "VALID"),
    ],
)
def test_sign_filter_grad_is_the_true_gradient_of_the_l1_forward(
    x_shape, w_shape, strides, padding
):
    """filter_grad="sign" (the paper's ablation) == the reference's rule == autodiff of the plain
    forward at p = 1; the input gradient keeps its own rule."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=x_shape))
        w = jnp.asarray(rng.normal(size=w_shape))

        def grads(fn, **kw):
            loss = lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, **kw)))
            # Jitted: one compilation, not one per primitive of the reference's loops.
            return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

        dx, dw = grads(adderjax.adder_conv, filter_grad="sign", implementation="xla")
        dx_ref, dw_ref = grads(reference.adder_conv, filter_grad="sign")
        _, dw_true = grads(reference.adder_conv_forward)
        dx_fp, dw_fp = grads(adderjax.adder_conv, implementation="xla")
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_true, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(dx, dx_fp)  # the input gradient is untouched
    assert np.abs(dw - dw_fp).max() > 0.1  # and the two filter rules really differ


def test_sign_filter_grad_of_dense_layers():
    rng = np.random.default_rng(1)
    x, w = jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.normal(size=(7, 3)))
    loss = lambda fn: jax.grad(lambda w: jnp.sum(jnp.cos(fn(x, w))))(w)
    got = loss(lambda x, w: adderjax.adder_dense(x, w, filter_grad="sign"))
    want = loss(lambda x, w: reference.adder_dense_forward(x, w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pallas_off_gpu_raises_instead_of_falling_back():
    if "pallas" in adderjax.available_implementations():
        pytest.skip("Pallas runs here; the kernel tests cover it")
    with pytest.raises(ValueError, match=r"implementation='pallas' is not available.*interpret"):
        adderjax.adder_conv(X, W, implementation="pallas")


def test_default_implementation_is_pallas_on_gpu_native_on_cpu():
    if jax.default_backend() == "gpu":
        expected = "pallas"
    elif jax.default_backend() == "cpu" and adderjax.native.available():
        expected = "native"
    else:
        expected = "xla"
    assert adderjax.default_implementation() == expected
    assert expected in adderjax.available_implementations()
    assert _pallas_calls(lambda x, w: adderjax.adder_conv(x, w), X, W) == (
        ["adder_forward"] if expected == "pallas" else []
    )
    hlo = jax.jit(lambda x, w: adderjax.adder_conv(x, w)).lower(X, W).as_text()
    assert ("adderjax_forward_" in hlo) == (expected == "native")


def test_unavailable_implementations_say_why_in_one_line():
    missing = adderjax.unavailable_implementations()
    assert set(missing) | set(adderjax.available_implementations()) == {"xla", "pallas", "native"}
    assert not set(missing) & set(adderjax.available_implementations())
    for name, reason in missing.items():
        assert reason and "\n" not in reason
        with pytest.raises(ValueError, match=rf"implementation='{name}' is not available: ") as e:
            adderjax.adder_conv(X, W, implementation=name)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(interpret=True), r"interpret=True .* needs implementation='pallas', got .*None"),
        (dict(implementation="xla", interpret=True), r"needs implementation='pallas'"),
        (dict(implementation="pallas", interpret=1), r"interpret must be a bool"),
    ],
)
def test_interpret_needs_pallas(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        adderjax.adder_conv(X, W, **kwargs)
    assert "\n" not in str(info.value)


def _pallas_calls(fn, *args) -> list[str]:
    """Names of the Pallas kernels in fn's jaxpr, nested jaxprs included."""
    names = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                names.append(eqn.params["name"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return sorted(names)


PALLAS = dict(implementation="pallas", interpret=True)


def test_pallas_runs_the_kernels_not_the_xla_path():
    def fb(x, w):
        y, vjp = jax.vjp(lambda a, b: adderjax.adder_conv(a, b, (2, 2), **PALLAS), x, w)
        return y, vjp(y)

    expected = ["adder_filter_grad", "adder_forward"]
    expected += [f"adder_input_grad_phase{ph}" for ph in range(4)]
    assert _pallas_calls(fb, X, W) == sorted(expected)
    xla_fb = lambda x, w: jax.vjp(lambda a, b: adderjax.adder_conv(a, b, (2, 2)), x, w)
    assert _pallas_calls(xla_fb, X, W) == []


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, p, input_grad",
    [
        ((2, 7, 6, 3), (3, 3, 3, 10), (1, 1), "SAME", 1.0, "hardtanh"),
        ((2, 9, 8, 5), (3, 3, 5, 6), (2, 2), "SAME", 1.5, "lp"),
        ((3, 6, 6, 10), (1, 1, 10, 3), (2, 2), "VALID", 2.0, "lp"),
    ],
)
def test_pallas_interpret_matches_reference(x_shape, w_shape, strides, padding, p, input_grad):
    check_against_reference(x_shape, w_shape, strides, padding, p, input_grad, **PALLAS)


def test_pallas_traced_p_matches_xla_path():
    """One compiled step for the whole l_p schedule: p is an argument, not a constant."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)

    def value_and_grad(**kw):
        def loss(x, w, p):
            y = adderjax.adder_conv(x, w, (2, 2), p=p, input_grad="lp", **kw)
            return jnp.sum(jnp.sin(y))

        return jax.jit(jax.value_and_grad(loss, (0, 1)))

    pallas, xla = value_and_grad(**PALLAS), value_and_grad()
    for p in (1.0, 1.5, 2.0):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
            pallas(x, w, jnp.float32(p)),
            xla(x, w, jnp.float32(p)),
        )
    assert pallas._cache_size() == 1


def test_pallas_dense_matches_xla_path():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 20)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(20, 7)), jnp.float32)

    def fb(**kw):
        y, vjp = jax.vjp(lambda a, b: adderjax.adder_dense(a, b, **kw), x, w)
        return y, vjp(jnp.ones_like(y))

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4),
        jax.jit(lambda: fb(**PALLAS))(),
        jax.jit(fb)(),
    )


def test_docstring_examples_run():
    import doctest

    from adderjax import ops

    result = doctest.testmod(ops)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_forward_and_vjp_lower_for_accelerators(platform):
    """The XLA path (and its platform-dependent filter gradient) lowers for TPU and CUDA."""
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))

    def f(x, w, p):
        fn = lambda a, b: adderjax.adder_conv(
            a, b, (2, 2), "SAME", p=p, input_grad="lp", implementation="xla"
        )
        y, vjp = jax.vjp(fn, x, w)
        return y, *vjp(y)

    text = jax.jit(f).trace(x, w, jnp.float32(1.5)).lower(lowering_platforms=(platform,)).as_text()
    assert "stablehlo.while" in text and "stablehlo.convolution" in text


_FUZZ_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=5),
    st.sampled_from(["SAME", "VALID", "hardtanh", "lp", "xla", "pallas", "native"]),
    st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    st.lists(st.tuples(st.integers(-2, 2), st.integers(-2, 2)), max_size=3),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x_shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
    w_shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
    dtype=st.sampled_from([np.float32, np.int32, np.float16, np.complex64, np.bool_]),
    strides=_FUZZ_VALUES,
    padding=_FUZZ_VALUES,
    p=_FUZZ_VALUES,
    input_grad=_FUZZ_VALUES,
    implementation=_FUZZ_VALUES,
)
def test_random_arguments_give_a_clear_error_or_the_reference(
    x_shape, w_shape, dtype, strides, padding, p, input_grad, implementation
):
    """Arbitrary arguments: one clear ValueError line, or the reference's answer."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(dtype)
    w = rng.normal(size=w_shape).astype(dtype)
    try:
        y = adderjax.adder_conv(
            x, w, strides, padding, p=p, input_grad=input_grad, implementation=implementation
        )
    except ValueError as e:
        assert "\n" not in str(e), str(e)
        return
    expected = reference.adder_conv(x, w, strides, padding, p=p)
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(expected, np.float32), rtol=1e-4, atol=1e-3
    )
