"""adderjax.resize: MATLAB's contributions, and the JAX path equal to the NumPy one.

The values themselves are checked against PIL in tests/test_sr_metrics.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adderjax import resize


@pytest.mark.parametrize(("length", "scale"), [(12, 2.0), (12, 0.5), (9, 1 / 3), (8, 4.0)])
def test_contributions_are_normalised_and_in_range(length, scale):
    out = resize.output_size(length, scale)
    weights, indices = resize.contributions(length, out, scale)
    assert weights.shape == indices.shape and weights.shape[0] == out
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert indices.min() >= 0 and indices.max() < length
    # The kernel's width: 4 taps upscaling, 4 / scale (+ MATLAB's 2 spare, trimmed) shrinking.
    assert weights.shape[1] <= int(np.ceil(4 / min(scale, 1.0))) + 2


def test_output_size_survives_the_rounding_of_one_third():
    assert resize.output_size(255, 1 / 3) == 85 and resize.output_size(10, 1 / 3) == 4


def test_jax_path_equals_numpy_and_jits():
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 9, 12, 3))
    want = resize.resize_axes(x, (27, 36), (3.0, 3.0))
    got = jax.jit(lambda x: resize.resize_axes(x, (27, 36), (3.0, 3.0)))(jnp.asarray(x))
    assert got.dtype == jnp.float32 and got.shape == (2, 27, 36, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_bad_lengths_and_scales():
    with pytest.raises(ValueError, match="cannot resize a length of 0"):
        resize.contributions(0, 4, 2.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        resize.contributions(4, 4, 0.0)
