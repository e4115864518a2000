"""`train.sharding`: the mesh, and global batches from each host's rows."""

import jax
import numpy as np
import pytest

from train import sharding


def test_mesh_axes_and_bad_fsdp_size():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "fsdp") and mesh.shape["fsdp"] == 1
    with pytest.raises(ValueError, match="fsdp_size=3 does not divide"):
        sharding.make_mesh(3, devices=jax.devices() * 2)


def test_global_batch_keeps_the_rows():
    mesh = sharding.make_mesh()
    host = {"image": np.arange(8, dtype=np.uint8).reshape(4, 2), "label": np.arange(4)}
    out = sharding.global_batch(host, sharding.batch_sharding(mesh))
    for k, v in host.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].sharding == sharding.batch_sharding(mesh)
