"""`adderjax.layer_core`: what the linen and NNX adder layers share."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from adderjax import layer_core
from adderjax import nn as adder_nn


def test_padding_forms_are_canonicalized():
    canon = layer_core.canonicalize_padding
    assert canon("same") == "SAME"
    assert canon("VALID") == "VALID"
    assert canon(1) == ((1, 1), (1, 1))
    assert canon(np.int64(2)) == ((2, 2), (2, 2))
    assert canon([1, 2]) == ((1, 1), (2, 2))
    assert canon([(1, 0), [0, 2]]) == ((1, 0), (0, 2))
    assert canon(((1, 1), 3)) == ((1, 1), (3, 3))
    # The same forms as flax.linen.Conv, which this layer replaces.
    x = jax.ShapeDtypeStruct((1, 7, 9, 2), jnp.float32)
    for padding in ["SAME", "VALID", 2, [1, 2], [(1, 0), (0, 2)], ((1, 1), 3)]:
        kwargs = {"features": 3, "kernel_size": (3, 2), "strides": (2, 1), "padding": padding}
        flax_out = jax.eval_shape(nn.Conv(**kwargs).init_with_output, jax.random.key(0), x)[0]
        ours = jax.eval_shape(adder_nn.AdderConv(**kwargs).init_with_output, jax.random.key(0), x)
        assert ours[0].shape == flax_out.shape, padding
