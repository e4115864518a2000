"""`train.model_state`: a config's model, optimizer and (abstract, sharded) train state."""

import jax
import numpy as np

from train import model_state, sharding
from train.configs import mnist
from train.data import sources


def test_build_without_and_with_a_mesh():
    config = mnist.get_config()
    info = sources.DATASETS[config.dataset]
    plain = model_state.build(config, info)
    assert plain.shape == (28, 28, 1) and plain.shardings is None
    state = plain.init(jax.random.key(0))
    # The abstract state is the state's structure, shapes and dtypes: a restore target.
    assert jax.tree.structure(state) == jax.tree.structure(plain.abstract)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain.abstract), strict=True):
        assert np.shape(a) == b.shape and jax.numpy.result_type(a) == b.dtype
    assert "adder" in state.params["conv2"]

    mesh = sharding.make_mesh()
    sharded = model_state.build(config, info, mesh=mesh)
    leaves = jax.tree.leaves(sharded.abstract)
    assert all(leaf.sharding.mesh.shape == mesh.shape for leaf in leaves)
    on_mesh = sharded.init(jax.random.key(0))
    for a, b in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(state), strict=True):
        # The same initialisation (jitted: to float rounding), placed on the mesh.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_image_shape_of_a_variable_size_dataset():
    config = mnist.get_config()
    config.image_size = 64
    imagenet = sources.DATASETS["imagenet2012"]
    assert model_state.image_shape(config, imagenet) == (64, 64, 3)
