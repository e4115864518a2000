"""The phase-flat layout: offsets address the right pixels, and merge is split's transpose."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import layout as layout_lib

CASES = [
    ((2, 7, 9, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 7, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 11, 10, 2), (7, 7), (2, 3), ((3, 2), (3, 3))),
    ((2, 8, 8, 1), (1, 1), (2, 2), ((0, 0), (0, 0))),
    ((2, 8, 8, 2), (3, 3), (1, 1), ((-1, 1), (1, -2))),
]


@pytest.mark.parametrize("x_shape, kernel_hw, strides, pads", CASES)
def test_tap_offsets_address_the_padded_input(x_shape, kernel_hw, strides, pads):
    lay = layout_lib.make_layout(x_shape, kernel_hw, strides, pads)
    x = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape) + 1
    xpad = np.asarray(
        jax.lax.pad(jnp.asarray(x), 0.0, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    )
    rows = lay.rows + lay.max_offset
    xph = np.asarray(layout_lib.split_input(jnp.asarray(x), lay, rows, x_shape[-1] + 1))
    (sh, sw), (hq, wq) = strides, lay.phase_hw
    for t in range(lay.num_taps):
        i, j = divmod(t, kernel_hw[1])
        for n in range(x_shape[0]):
            for ho in range(lay.out_hw[0]):
                for wo in range(lay.out_hw[1]):
                    m = (n * hq + ho) * wq + wo
                    got = xph[lay.tap_phase(t), m + lay.tap_offset(t)]
                    np.testing.assert_array_equal(got[:-1], xpad[n, ho * sh + i, wo * sw + j])
                    assert got[-1] == 0  # the padded channel


@pytest.mark.parametrize("x_shape, kernel_hw, strides, pads", CASES)
def test_merge_is_the_transpose_of_split(x_shape, kernel_hw, strides, pads):
    lay = layout_lib.make_layout(x_shape, kernel_hw, strides, pads)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    rows, channels = lay.rows + 5, x_shape[-1] + 2
    y = jnp.asarray(rng.standard_normal((lay.num_phases, rows, channels)), jnp.float32)
    split = lambda x: layout_lib.split_input(x, lay, rows, channels)
    _, vjp = jax.vjp(split, x)
    np.testing.assert_allclose(
        vjp(y)[0], layout_lib.merge_input(y, lay, x_shape[-1]), rtol=1e-6, atol=1e-6
    )


def test_spread_and_gather_output_round_trip():
    lay = layout_lib.make_layout((2, 9, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1)))
    g = jnp.asarray(np.random.default_rng(0).standard_normal((2, *lay.out_hw, 5)), jnp.float32)
    spread = layout_lib.spread_output(g, lay, lay.rows + 3, 8, front=4)
    assert spread.shape == (4 + lay.rows + 3, 8)
    np.testing.assert_array_equal(layout_lib.gather_output(spread[4:], lay, 5), g)
    # Everything off the real output pixels is zero.
    assert float(jnp.abs(spread).sum()) == pytest.approx(float(jnp.abs(g).sum()), rel=1e-6)


def test_phase_taps_partition_the_taps():
    lay = layout_lib.make_layout((1, 9, 9, 1), (3, 3), (2, 2), ((1, 1), (1, 1)))
    taps = [lay.phase_taps(ph) for ph in range(lay.num_phases)]
    assert taps == [(0, 2, 6, 8), (1, 7), (3, 5), (4,)]
    assert sorted(t for ts in taps for t in ts) == list(range(9))


@pytest.mark.parametrize(
    "x_shape, w_shape, p, p_value, pads, message",
    [
        ((8, 8, 3), (3, 3, 3, 4), 1.0, None, ((1, 1), (1, 1)), "x must be rank 4"),
        ((1, 8, 8, 3), (3, 3, 2, 4), 1.0, None, ((1, 1), (1, 1)), r"w must be \(kh, kw, 3, cout\)"),
        ((1, 8, 8, 3), (3, 3, 3, 4), None, None, ((1, 1), (1, 1)), "needs p_value"),
        ((1, 2, 2, 3), (3, 3, 3, 4), 1.0, None, ((0, 0), (0, 0)), "no output pixels"),
    ],
)
def test_checked_layout_names_what_is_wrong(x_shape, w_shape, p, p_value, pads, message):
    x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
    with pytest.raises(ValueError, match=message):
        layout_lib.checked_layout(x, w, (1, 1), pads, p, p_value)


def test_checked_layout_is_make_layout_for_good_arguments():
    x, w = jnp.zeros((2, 9, 7, 3)), jnp.zeros((3, 3, 3, 4))
    got = layout_lib.checked_layout(x, w, (2, 1), ((1, 1), (0, 2)), None, jnp.float32(1.5))
    assert got == layout_lib.make_layout(x.shape, (3, 3), (2, 1), ((1, 1), (0, 2)))
