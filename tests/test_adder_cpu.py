"""kernels.adder_cpu: the native CPU kernels against the reference, per instruction set."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adderjax import reference
from kernels import adder_cpu

pytestmark = pytest.mark.skipif(
    not adder_cpu.available(), reason=str(adder_cpu.unavailable_reason())
)

ISAS = adder_cpu.supported_isas()

CASES = [
    # x shape, w shape, strides, pads
    ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),
    ((1, 9, 7, 3), (3, 3, 3, 10), (2, 2), ((0, 0), (0, 0))),
    ((2, 6, 6, 10), (1, 1, 10, 3), (2, 2), ((0, 0), (0, 0))),  # input phases no tap reaches
    ((1, 7, 6, 3), (2, 3, 3, 5), (2, 1), ((2, 0), (0, 3))),  # asymmetric everything
    ((1, 8, 8, 2), (3, 3, 2, 3), (3, 3), ((-1, 1), (1, -1))),  # negative padding crops
    ((2, 5, 5, 16), (3, 3, 16, 32), (1, 1), ((1, 1), (1, 1))),  # 256-bit tiles in AVX-512
    ((1, 5, 5, 48), (3, 3, 48, 70), (1, 1), ((1, 1), (1, 1))),  # 512-bit, a ragged block
    ((2, 7, 7, 37), (7, 7, 37, 2), (1, 1), ((3, 3), (3, 3))),  # kernel as large as the input
    ((3, 1, 1, 37), (1, 1, 37, 19), (1, 1), ((0, 0), (0, 0))),  # a dense layer
]
FORWARD_RULES = [(1.0, "min"), (1.0, "abs"), (2.0, "min"), (1.5, "min")]
INPUT_GRAD_RULES = [(1.0, "hardtanh"), (1.0, "lp"), (2.0, "lp"), (1.5, "lp")]


def random(shape, dtype, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def check(x_shape, w_shape, strides, pads, dtype, isa, seed=0):
    """Every forward and input-gradient rule, and the filter gradient's correlation, against
    the float64 reference."""
    x, w = random(x_shape, dtype, seed), random(w_shape, dtype, seed + 1)
    x64, w64 = x.astype(jnp.float64), w.astype(jnp.float64)
    # float64: the kernels' own rounding; float32: the min identity's, which grows with
    # |x| + |w| (docs/cpu_kernel.md#precision), against outputs of size ~ the reduction.
    tol = 1e-12 if dtype == jnp.float64 else 2e-6
    for p, formula in FORWARD_RULES:
        y = adder_cpu.forward(x, w, strides=strides, pads=pads, p=p, formula=formula, isa=isa)
        want = reference.adder_conv_forward(x64, w64, strides, pads, p=p)
        assert y.dtype == dtype and y.shape == want.shape
        scale = float(jnp.max(jnp.abs(want)))
        err = float(jnp.max(jnp.abs(y - want))) / scale
        assert err < tol, f"forward p={p} {formula}: relative error {err:.2e}"
    g = random(want.shape, dtype, seed + 2)
    for p, rule in INPUT_GRAD_RULES:
        dx = adder_cpu.input_grad(
            x, w, g, strides=strides, pads=pads, input_grad=rule, p=p, isa=isa
        )
        want, _ = reference.adder_conv_backward(
            x64, w64, g.astype(jnp.float64), strides, pads, p=p, input_grad=rule
        )
        assert dx.dtype == dtype and dx.shape == x.shape
        # Terms of either sign can cancel (one pixel, a few taps): the floor is a term's size.
        scale = max(float(jnp.max(jnp.abs(want))), float(jnp.max(jnp.abs(g))))
        err = float(jnp.max(jnp.abs(dx - want))) / scale
        assert err < tol, f"input_grad {rule} p={p}: relative error {err:.2e}"
    # The full-precision filter gradient is corr - w * sum g (eq. 5): the kernel's corr.
    corr = adder_cpu.filter_corr(x, g, kernel_hw=w_shape[:2], strides=strides, pads=pads, isa=isa)
    _, dw = reference.adder_conv_backward(x64, w64, g.astype(jnp.float64), strides, pads)
    want = dw + w64 * jnp.sum(g.astype(jnp.float64), axis=(0, 1, 2))[None, None, None]
    assert corr.dtype == dtype and corr.shape == w.shape
    scale = max(float(jnp.max(jnp.abs(want))), float(jnp.max(jnp.abs(x)) * jnp.max(jnp.abs(g))))
    err = float(jnp.max(jnp.abs(corr - want))) / scale
    assert err < tol, f"filter_corr: relative error {err:.2e}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_shape,w_shape,strides,pads", CASES)
def test_float64_matches_reference(x_shape, w_shape, strides, pads, isa):
    with jax.enable_x64(True):
        check(x_shape, w_shape, strides, pads, jnp.float64, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_shape,w_shape,strides,pads", CASES)
def test_float32_matches_reference(x_shape, w_shape, strides, pads, isa):
    with jax.enable_x64(True):  # the reference in float64
        check(x_shape, w_shape, strides, pads, jnp.float32, isa)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_shapes_match_reference(data):
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    pads = tuple(tuple(data.draw(st.integers(-1, 2)) for _ in range(2)) for _ in range(2))
    h = data.draw(st.integers(max(1, kh - pads[0][0] - pads[0][1], 1 - min(0, sum(pads[0]))), 9))
    w = data.draw(st.integers(max(1, kw - pads[1][0] - pads[1][1], 1 - min(0, sum(pads[1]))), 9))
    if h + sum(pads[0]) < kh or w + sum(pads[1]) < kw:
        return
    c, o = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    x_shape, w_shape = (data.draw(st.integers(1, 3)), h, w, c), (kh, kw, c, o)
    dtype = data.draw(st.sampled_from([jnp.float32, jnp.float64]))
    isa = data.draw(st.sampled_from(ISAS))
    with jax.enable_x64(True):
        check(x_shape, w_shape, (sh, sw), pads, dtype, isa, seed=h * w)


def test_results_are_bitwise_the_same_for_any_thread_count(tmp_path):
    """The work split depends on the shapes only: one thread and all threads agree bit for bit."""
    script = textwrap.dedent(
        """
        import sys
        import jax, jax.numpy as jnp, numpy as np
        from kernels import adder_cpu
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(16, 12, 12, 24)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 24, 40)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(16, 6, 6, 40)), jnp.float32)
        kw = dict(strides=(2, 2), pads=((1, 1), (1, 1)))
        f = jax.jit(lambda x, w: adder_cpu.forward(x, w, **kw))
        d = jax.jit(lambda x, w, g: adder_cpu.input_grad(x, w, g, **kw))
        c = jax.jit(lambda x, g: adder_cpu.filter_corr(x, g, kernel_hw=(3, 3), **kw))
        # Filters over 2 MiB: forward items run groups of output-channel blocks.
        x2 = jnp.asarray(rng.normal(size=(3, 5, 5, 256)), jnp.float32)
        w2 = jnp.asarray(rng.normal(size=(3, 3, 256, 256)), jnp.float32)
        f2 = jax.jit(lambda x, w: adder_cpu.forward(x, w, strides=(1, 1), pads=((1, 1), (1, 1))))
        run = lambda: [np.asarray(v) for v in (f(x, w), d(x, w, g), c(x, g), f2(x2, w2))]
        a, b = run(), run()
        assert all(np.array_equal(u, v) for u, v in zip(a, b)), "run to run"
        np.savez(sys.argv[1], y=a[0], dx=a[1], corr=a[2], y2=a[3])
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    outs = []
    for cpus in (None, "0"):
        out = tmp_path / f"cpus_{cpus}.npz"
        cmd = [sys.executable, "-c", script, str(out)]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]  # XLA sizes its pool by the usable CPUs
        subprocess.run(cmd, check=True, env=env)
        outs.append(np.load(out))
    for key in ("y", "dx", "corr", "y2"):
        assert np.array_equal(outs[0][key], outs[1][key]), key


def test_the_compiled_program_calls_the_kernels():
    x, w = random((1, 6, 6, 3), jnp.float32, 0), random((3, 3, 3, 4), jnp.float32, 1)
    g = random((1, 4, 4, 4), jnp.float32, 2)
    kw = dict(strides=(1, 1), pads=((0, 0), (0, 0)))
    text = (
        jax.jit(
            lambda x, w, g: (
                adder_cpu.forward(x, w, **kw),
                adder_cpu.input_grad(x, w, g, **kw),
                adder_cpu.filter_corr(x, g, kernel_hw=(3, 3), **kw),
            )
        )
        .lower(x, w, g)
        .as_text()
    )
    for kernel in ("forward", "input_grad", "filter_corr"):
        assert f"adderjax_{kernel}_{adder_cpu.isa()}" in text


def test_vmap_runs_each_element():
    x, w = random((3, 2, 6, 6, 5), jnp.float32, 0), random((3, 3, 5, 4), jnp.float32, 1)
    kw = dict(strides=(1, 1), pads=((1, 1), (1, 1)))
    got = jax.vmap(lambda x: adder_cpu.forward(x, w, **kw))(x)
    want = jnp.stack([adder_cpu.forward(xi, w, **kw) for xi in x])
    np.testing.assert_array_equal(got, want)


def test_empty_inputs_give_empty_or_zero_outputs():
    kw = dict(strides=(1, 1), pads=((0, 0), (0, 0)))
    y = adder_cpu.forward(jnp.ones((0, 4, 4, 2)), jnp.ones((3, 3, 2, 5)), **kw)
    assert y.shape == (0, 2, 2, 5)
    y = adder_cpu.forward(jnp.ones((1, 4, 4, 0)), jnp.ones((3, 3, 0, 5)), **kw)
    np.testing.assert_array_equal(y, np.zeros((1, 2, 2, 5)))
    corr = adder_cpu.filter_corr(
        jnp.ones((0, 4, 4, 2)), jnp.ones((0, 2, 2, 5)), kernel_hw=(3, 3), **kw
    )
    np.testing.assert_array_equal(corr, np.zeros((3, 3, 2, 5)))


def test_isa_environment_variable_picks_the_build(monkeypatch):
    monkeypatch.setenv(adder_cpu.ISA_ENV, ISAS[-1])
    assert adder_cpu.isa() == ISAS[-1]
    monkeypatch.setenv(adder_cpu.ISA_ENV, "sse2")
    assert not adder_cpu.available()
    with pytest.raises(ValueError, match=r"ADDERJAX_CPU_ISA='sse2' is not one of"):
        adder_cpu.isa()


def test_a_bad_tiles_variable_is_named(monkeypatch):
    monkeypatch.setenv(adder_cpu.TILES_ENV, "256")
    assert not adder_cpu.available()
    with pytest.raises(ValueError, match=r"ADDERJAX_CPU_TILES='256' is not one of"):
        adder_cpu.isa()


@pytest.mark.skipif("avx512" not in ISAS, reason="only the AVX-512 build has two tile widths")
def test_both_tile_widths_give_the_same_bits(tmp_path):
    """256- and 512-bit tiles (chosen per CPU by their speed) compute the same sums: the
    choice never changes a result."""
    script = textwrap.dedent(
        """
        import sys
        import jax.numpy as jnp, numpy as np
        from kernels import adder_cpu
        rng = np.random.default_rng(0)
        out = {}
        for c, o, s in ((16, 16, 1), (16, 32, 2), (32, 24, 1), (30, 7, 1)):
            x = jnp.asarray(rng.normal(size=(3, 9, 9, c)), jnp.float32)
            w = jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32)
            kw = dict(strides=(s, s), pads=((1, 1), (1, 1)), isa="avx512")
            y = adder_cpu.forward(x, w, **kw)
            g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
            out[f"y{c}_{o}"] = np.asarray(y)
            out[f"y15{c}_{o}"] = np.asarray(adder_cpu.forward(x, w, p=1.5, **kw))
            out[f"dx{c}_{o}"] = np.asarray(adder_cpu.input_grad(x, w, g, **kw))
            lp = adder_cpu.input_grad(x, w, g, input_grad="lp", p=1.5, **kw)
            out[f"lp{c}_{o}"] = np.asarray(lp)
            out[f"n{c}_{o}"] = np.array([adder_cpu.narrow_tiles("avx512", False, o),
                                         adder_cpu.narrow_tiles("avx512", True, c)])
        np.savez(sys.argv[1], **out)
        """
    )
    outs = {}
    for tiles in ("wide", "narrow"):
        env = dict(os.environ, PYTHONPATH=os.getcwd(), **{adder_cpu.TILES_ENV: tiles})
        path = tmp_path / f"{tiles}.npz"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
        outs[tiles] = np.load(path)
    for key in outs["wide"].files:
        if key.startswith("n"):  # the widths themselves: as the variable says
            assert not outs["wide"][key].any() and outs["narrow"][key].all(), key
        else:
            np.testing.assert_array_equal(outs["wide"][key], outs["narrow"][key], err_msg=key)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda x, w, g: adder_cpu.forward(x[0], w, strides=(1, 1), pads=((0, 0),) * 2),
            r"x must be \(N, H, W, C\)",
        ),
        (
            lambda x, w, g: adder_cpu.forward(
                x, w.astype(jnp.float16), strides=(1, 1), pads=((0, 0),) * 2
            ),
            r"x and w must share",
        ),
        (
            lambda x, w, g: adder_cpu.forward(x, w, strides=(0, 1), pads=((0, 0),) * 2),
            r"strides must be two positive ints",
        ),
        (
            lambda x, w, g: adder_cpu.forward(
                x, w, strides=(1, 1), pads=((0, 0),) * 2, formula="max"
            ),
            r"formula must be one of",
        ),
        (
            lambda x, w, g: adder_cpu.forward(x, w, strides=(1, 1), pads=((0, 0),) * 2, isa="neon"),
            r"isa must be one of this CPU's",
        ),
        (
            lambda x, w, g: adder_cpu.input_grad(
                x, w, g[:, :1], strides=(1, 1), pads=((0, 0),) * 2
            ),
            r"g must be \(1, 2, 2, 4\)",
        ),
        (
            lambda x, w, g: adder_cpu.input_grad(
                x, w, g, strides=(1, 1), pads=((0, 0),) * 2, input_grad="sign"
            ),
            r"input_grad must be",
        ),
        (
            lambda x, w, g: adder_cpu.filter_corr(
                x, g[:, :, :1], kernel_hw=(3, 3), strides=(1, 1), pads=((0, 0),) * 2
            ),
            r"g must be \(1, 2, 2, 4\)",
        ),
        (
            lambda x, w, g: adder_cpu.filter_corr(
                x, g, kernel_hw=(3, 0), strides=(1, 1), pads=((0, 0),) * 2
            ),
            r"kernel_hw must be two positive ints",
        ),
    ],
)
def test_bad_arguments_raise_one_clear_line(call, match):
    x, w = jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 4))
    g = jnp.ones((1, 2, 2, 4))
    with pytest.raises(ValueError, match=match) as info:
        call(x, w, g)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("isa", ISAS)
def test_large_outputs_written_with_streaming_stores_are_right(isa):
    # A 1x1 layer whose 16.8 MB output passes kStreamBytes (non-temporal stores, huge pages):
    # against the exact |x - w| form of the same kernels, and, on a slice, the reference.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 64, 64, 32)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(1, 1, 32, 256)), jnp.float32)
    kw = dict(strides=(1, 1), pads=((0, 0), (0, 0)), isa=isa)
    y = adder_cpu.forward(x, w, **kw)
    exact = adder_cpu.forward(x, w, formula="abs", **kw)
    assert float(jnp.max(jnp.abs(y - exact))) < 1e-4 * float(jnp.max(jnp.abs(exact)))
    with jax.enable_x64(True):
        want = reference.adder_conv(
            x[:1, :4].astype(jnp.float64), w.astype(jnp.float64), (1, 1), ((0, 0), (0, 0))
        )
    np.testing.assert_allclose(np.asarray(exact[:1, :4]), np.asarray(want), rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_filters_larger_than_l2_run_in_groups_and_are_right(isa):
    # 3x3 256->256 filters (2.4 MB) over 64 images of 2x2: one band an image would have each
    # item run every block of output channels; their filters pass kGroupFilterBytes, so items
    # run groups of blocks, numbered group-major. Against float64 |x - w| sums in numpy.
    x, w = random((64, 2, 2, 256), jnp.float32, 4), random((3, 3, 256, 256), jnp.float32, 5)
    y = adder_cpu.forward(x, w, strides=(1, 1), pads=((1, 1), (1, 1)), isa=isa)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 9 * 256)  # (pixels, (i, j, c))
    wf = np.asarray(w, np.float64).reshape(9 * 256, 256)
    want = np.stack([-np.abs(patches - wf[:, o]).sum(1) for o in range(256)], axis=-1)
    got = np.asarray(y).reshape(-1, 256)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err < 1e-5, f"relative error {err:.2e}"  # 2304-term float32 sums: 2.3e-6 seen
