"""The Triton kernels against `adderjax.reference`: compiled on a GPU, interpreted on CPU.

`TestAdderTriton` runs the kernels compiled (skipped without a GPU); `TestAdderTritonInterpret`
runs the same tests in Pallas interpret mode, which is what CI checks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from adderjax import reference

# (x shape, w shape, strides, pads): ragged channels (3, 10), stride 2, 1x1 and 7x7 kernels,
# odd and non-square maps, asymmetric and negative padding, a single-pixel output.
CASES = {
    "3x3_c3_o10": ((2, 9, 7, 3), (3, 3, 3, 10), (1, 1), ((1, 1), (1, 1))),
    "3x3_s2_c5_o6": ((2, 9, 7, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1))),
    "1x1_s2_c10_o3": ((3, 8, 5, 10), (1, 1, 10, 3), (2, 2), ((0, 0), (0, 0))),
    "1x1_c17_o20": ((2, 5, 6, 17), (1, 1, 17, 20), (1, 1), ((0, 0), (0, 0))),
    "7x7_s2_c3_o5": ((1, 11, 10, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3))),
    "2x3_s12_asym": ((2, 7, 9, 4), (2, 3, 4, 7), (1, 2), ((0, 1), (2, 0))),
    "3x3_negative_pad": ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((-1, 1), (1, -2))),
    "3x3_one_pixel": ((1, 3, 3, 2), (3, 3, 2, 3), (1, 1), ((0, 0), (0, 0))),
}
# (case, tiles) pairs: every case with small tiles, and the default tiles (one or two
# blocks at these sizes) on a few.
TILED = [(name, "small") for name in sorted(CASES)] + [
    (name, "default") for name in ("3x3_c3_o10", "7x7_s2_c3_o5", "1x1_c17_o20")
]
# Small tiles, so that every axis of every grid has several blocks and a ragged last one.
SMALL = {
    "forward": kernels.BlockSizes(block_m=16, block_c=2, block_o=4),
    "input_grad": kernels.BlockSizes(block_m=16, block_c=4, block_o=2),
    "filter_grad": kernels.BlockSizes(block_m=16, block_c=16, block_o=16, splits=3),
}


def _case(name, dtype=jnp.float32, seed=0):
    return _arrays(*CASES[name], dtype=dtype, seed=seed)


def _arrays(x_shape, w_shape, strides, pads, dtype=jnp.float32, seed=0):
    # numpy draws: jax.random compiles anew for every shape, seconds each on CPU.
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal(w_shape), dtype)
    y_shape = jax.eval_shape(
        lambda x, w: reference.adder_conv_forward(x, w, strides, pads), x, w
    ).shape
    g = jnp.asarray(rng.standard_normal(y_shape), dtype)
    return x, w, g, dict(strides=strides, pads=pads)


def _jit(fn, *args, **static):
    """fn(*arrays, **static) as one compiled call: eager interpret mode compiles every op."""
    return jax.jit(lambda *arrays: fn(*arrays, **static))(*args)


def _reference_forward(x, w, geo, p=1.0):
    return _jit(reference.adder_conv_forward, x, w, p=p, **_ref_geo(geo))


def _reference_backward(x, w, g, geo, p=1.0, input_grad="hardtanh"):
    return _jit(reference.adder_conv_backward, x, w, g, p=p, input_grad=input_grad, **_ref_geo(geo))


def _ref_geo(geo):
    return dict(strides=geo["strides"], padding=geo["pads"])


def _tol(dtype, reduction: int):
    """Absolute tolerance for a sum of `reduction` O(1) terms, by dtype (tokamax-style)."""
    eps = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float64: 1e-13}[dtype]
    return eps * math.sqrt(reduction) * 4


class TestAdderTriton:
    INTERPRET = False

    @pytest.fixture(autouse=True)
    def _needs_gpu(self):
        if not self.INTERPRET and jax.default_backend() != "gpu":
            pytest.skip("compiled Triton kernels need a GPU")

    def forward(self, x, w, p_value=None, **static):
        return jax.jit(
            lambda x, w, pv: kernels.forward(x, w, p_value=pv, interpret=self.INTERPRET, **static)
        )(x, w, p_value)

    def input_grad(self, x, w, g, p_value=None, **static):
        return jax.jit(
            lambda x, w, g, pv: kernels.input_grad(
                x, w, g, p_value=pv, interpret=self.INTERPRET, **static
            )
        )(x, w, g, p_value)

    def filter_grad(self, x, w, g, **static):
        return _jit(kernels.filter_grad, x, w, g, interpret=self.INTERPRET, **static)

    @pytest.mark.parametrize("name, tiles", TILED)
    def test_forward_matches_reference(self, name, tiles):
        x, w, _, geo = _case(name)
        bs = SMALL["forward"] if tiles == "small" else None
        y = self.forward(x, w, block_sizes=bs, **geo)
        k = math.prod(w.shape[:3])
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(
            y, _reference_forward(x, w, geo), rtol=1e-6, atol=_tol(jnp.float32, k) * k
        )

    @pytest.mark.parametrize("name", sorted(CASES))
    @pytest.mark.parametrize("mode", ["hardtanh", "lp"])
    def test_input_grad_matches_reference(self, name, mode):
        x, w, g, geo = _case(name)
        p = 1.5 if mode == "lp" else 1.0
        dx = self.input_grad(x, w, g, input_grad=mode, p=p, block_sizes=SMALL["input_grad"], **geo)
        expect, _ = _reference_backward(x, w, g, geo, p=p, input_grad=mode)
        reduction = math.prod(w.shape[:2]) * w.shape[3]
        assert dx.shape == x.shape and dx.dtype == jnp.float32
        np.testing.assert_allclose(dx, expect, rtol=1e-5, atol=_tol(jnp.float32, reduction))

    @pytest.mark.parametrize("name, tiles", TILED)
    def test_filter_grad_matches_reference(self, name, tiles):
        x, w, g, geo = _case(name)
        bs = SMALL["filter_grad"] if tiles == "small" else None
        dw = self.filter_grad(x, w, g, block_sizes=bs, **geo)
        _, expect = _reference_backward(x, w, g, geo)
        reduction = g.size // g.shape[-1]
        assert dw.shape == w.shape and dw.dtype == jnp.float32
        np.testing.assert_allclose(dw, expect, rtol=1e-5, atol=_tol(jnp.float32, reduction) * 4)

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_random_shapes_match_reference(self, data):
        kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
        strides = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
        pads = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in "hw")
        h = data.draw(st.integers(max(1, kh - sum(pads[0])), 9))
        wd = data.draw(st.integers(max(1, kw - sum(pads[1])), 9))
        cin, cout = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
        n = data.draw(st.integers(1, 3))
        x, w, g, geo = _arrays((n, h, wd, cin), (kh, kw, cin, cout), strides, pads, seed=h * wd)
        y = self.forward(x, w, block_sizes=SMALL["forward"], **geo)
        dx = self.input_grad(x, w, g, block_sizes=SMALL["input_grad"], **geo)
        dw = self.filter_grad(x, w, g, block_sizes=SMALL["filter_grad"], **geo)
        expect_dx, expect_dw = _reference_backward(x, w, g, geo)
        k = kh * kw * cin
        np.testing.assert_allclose(y, _reference_forward(x, w, geo), rtol=1e-6, atol=1e-5 * k)
        np.testing.assert_allclose(dx, expect_dx, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dw, expect_dw, rtol=1e-5, atol=1e-4 * math.sqrt(g.size))

    @pytest.mark.parametrize("p", [1.0, 2.0, 1.5, 1.25])
    def test_static_and_runtime_p_agree_with_reference(self, p):
        x, w, g, geo = _case("3x3_s2_c5_o6")
        expect_y = _reference_forward(x, w, geo, p=p)
        expect_dx, _ = _reference_backward(x, w, g, geo, p=p, input_grad="lp")
        runtime_p = jnp.float32(p)
        for y, dx in [
            (
                self.forward(x, w, p=p, **geo),
                self.input_grad(x, w, g, input_grad="lp", p=p, **geo),
            ),
            (
                self.forward(x, w, runtime_p, p=None, **geo),
                self.input_grad(x, w, g, runtime_p, input_grad="lp", p=None, **geo),
            ),
        ]:
            np.testing.assert_allclose(y, expect_y, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(dx, expect_dx, rtol=1e-5, atol=1e-4)

    def test_bfloat16_accumulates_in_float32(self):
        x, w, g, geo = _case("3x3_c3_o10", dtype=jnp.bfloat16)
        f32 = [a.astype(jnp.float32) for a in (x, w, g)]
        y = self.forward(x, w, **geo)
        dx = self.input_grad(x, w, g, **geo)
        dw = self.filter_grad(x, w, g, **geo)
        assert y.dtype == dx.dtype == dw.dtype == jnp.float32
        # The kernels see the same bf16 values as the float32 reference and multiply them
        # exactly: only the order of the float32 additions differs.
        np.testing.assert_allclose(y, _reference_forward(*f32[:2], geo), rtol=1e-5)
        expect_dx, expect_dw = _reference_backward(*f32, geo)
        np.testing.assert_allclose(dx, expect_dx, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dw, expect_dw, rtol=1e-5, atol=1e-3)

    def test_float64_stays_float64(self):
        with jax.enable_x64(True):
            x, w, g, geo = _case("3x3_s2_c5_o6", dtype=jnp.float64)
            y = self.forward(x, w, **geo)
            dx = self.input_grad(x, w, g, **geo)
            dw = self.filter_grad(x, w, g, **geo)
            assert y.dtype == dx.dtype == dw.dtype == jnp.float64
            expect_dx, expect_dw = _reference_backward(x, w, g, geo)
            np.testing.assert_allclose(y, _reference_forward(x, w, geo), rtol=1e-12)
            np.testing.assert_allclose(dx, expect_dx, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dw, expect_dw, rtol=1e-12, atol=1e-10)

    def test_filter_grad_is_deterministic(self):
        x, w, g, geo = _case("3x3_c3_o10")
        bs = kernels.BlockSizes(block_m=16, block_c=16, block_o=16, splits=5)
        run = jax.jit(
            lambda x, g: kernels.filter_grad(
                x, w, g, block_sizes=bs, interpret=self.INTERPRET, **geo
            )
        )
        np.testing.assert_array_equal(run(x, g), run(x, g))

    def test_split_count_changes_only_rounding(self):
        x, w, g, geo = _case("3x3_c3_o10")
        grads = [
            self.filter_grad(
                x,
                w,
                g,
                block_sizes=kernels.BlockSizes(block_m=16, block_c=16, block_o=16, splits=s),
                **geo,
            )  # fmt: skip
            for s in (1, 2, 7)
        ]
        for dw in grads[1:]:
            np.testing.assert_allclose(dw, grads[0], rtol=1e-5, atol=1e-4)


class TestAdderTritonInterpret(TestAdderTriton):
    INTERPRET = True


GEO = dict(strides=(1, 1), pads=((1, 1), (1, 1)))


@pytest.mark.parametrize(
    "kernel, args, kwargs, match",
    [
        ("forward", ("x0", "w"), GEO, r"x\.shape="),
        ("forward", ("x", "w2"), GEO, r"w\.shape="),
        ("forward", ("x", "w"), dict(GEO, p=None), r"p_value"),
        ("forward", ("x", "w"), dict(GEO, pads=((-3, 0), (0, 0))), r"no output pixels"),
        ("input_grad", ("x", "w", "x"), dict(GEO, pads=((0, 0), (0, 0))), r"g\.shape="),
        ("input_grad", ("x", "w", "x"), dict(GEO, input_grad="sign"), r"input_grad must be"),
        (
            "filter_grad",
            ("x", "w", "x"),
            dict(GEO, block_sizes=kernels.BlockSizes(block_m=8, block_c=16, block_o=16)),
            r"block size >= 16",
        ),
    ],
)
def test_bad_arguments_raise_one_clear_line(kernel, args, kwargs, match):
    arrays = dict(x=jnp.ones((2, 5, 5, 3)), x0=jnp.ones((5, 5, 3)), w=jnp.ones((3, 3, 3, 3)))
    arrays["w2"] = arrays["w"][:, :, :2]
    with pytest.raises(ValueError, match=match) as info:
        getattr(kernels, kernel)(*(arrays[a] for a in args), **kwargs)
    assert "\n" not in str(info.value)


def test_index_range_is_checked_before_it_can_overflow():
    x = jax.ShapeDtypeStruct((2**16, 64, 64, 8), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"past int32 indexing"):
        jax.eval_shape(
            lambda x, w: kernels.forward(x, w, strides=(1, 1), pads=((1, 1), (1, 1))), x, w
        )
