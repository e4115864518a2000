"""Checkpoint retention and contents, on a tiny state (the trainer tests cover resume)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from train import checkpointing


def test_keeps_the_newest_and_the_best(tmp_path):
    config = ml_collections.ConfigDict({"model": "lenet5_bn", "seed": 3})
    mngr = checkpointing.manager(tmp_path, keep=2)
    top1 = {1: 0.9, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.4}
    for step, acc in top1.items():
        state = {"w": jnp.full((3,), float(step))}
        metrics = {checkpointing.BEST_METRIC: acc}
        checkpointing.save(mngr, step, state, data_iterator=None, config=config, metrics=metrics)
    assert mngr.all_steps() == [1, 4, 5]  # the best (1) and the newest two
    assert mngr.best_step() == 1
    state, meta = checkpointing.restore(mngr, 4, {"w": jnp.zeros((3,))})
    np.testing.assert_array_equal(state["w"], [4.0, 4.0, 4.0])
    assert meta == {"config": {"model": "lenet5_bn", "seed": 3}, "metrics": {"eval_top1": 0.3}}
    assert checkpointing.config_from_meta(meta).seed == 3
    mngr.close()


def test_checkpoints_without_metrics_are_kept_as_newest(tmp_path):
    config = ml_collections.ConfigDict({"model": "x"})
    mngr = checkpointing.manager(tmp_path, keep=1)
    for step in (1, 2, 3):
        checkpointing.save(mngr, step, {"w": jnp.zeros(())}, data_iterator=None, config=config)
    assert mngr.all_steps() == [3]  # unranked checkpoints are not kept forever
    assert checkpointing.read_meta(mngr, 3)["metrics"] == {}
    mngr.close()


def test_config_of_an_older_checkpoint_gets_the_new_keys_defaults(tmp_path):
    """A checkpoint written before distillation existed still restores and resumes: its
    config lacks the distillation keys, which mean what their defaults mean."""
    from train.configs import mnist

    old = mnist.get_config().to_dict()
    for key in ("distill", "distill_features", "distill_layers", "teacher_workdir"):
        del old[key]
    config = checkpointing.config_from_meta({"config": old})
    assert (config.distill, config.model, config.dataset) == ("none", "lenet5_bn", "fashion_mnist")
    mngr = checkpointing.manager(tmp_path)
    stored = ml_collections.ConfigDict(old)
    checkpointing.save(mngr, 1, {"x": np.zeros(2)}, data_iterator=None, config=stored)
    checkpointing.check_resumable(mngr, mnist.get_config())  # the same run: no error
    mngr.close()


def test_a_checkpoint_from_before_the_layer_kinds_reads_as_layer(tmp_path):
    """Checkpoints written with ``adder: true / false`` read as ``layer: "adder" / "conv"``,
    so they evaluate and resume (and refuse another layer kind by its new name)."""
    from train import config_checks
    from train.configs import mnist

    for adder, layer in ((True, "adder"), (False, "conv")):
        old = mnist.get_config().to_dict()
        del old["layer"]
        old["adder"] = adder
        assert checkpointing.upgrade_meta({"config": old})["config"]["layer"] == layer
        mngr = checkpointing.manager(tmp_path / layer)
        stored = ml_collections.ConfigDict(old)
        checkpointing.save(mngr, 1, {"x": np.zeros(2)}, data_iterator=None, config=stored)
        config = checkpointing.config_from_meta(checkpointing.read_meta(mngr, 1))
        assert config.layer == layer and "adder" not in config
        now = mnist.get_config()
        now.layer = layer
        checkpointing.check_resumable(mngr, now)
        now.layer = "shiftadd"
        with pytest.raises(config_checks.ConfigError, match=f"layer='{layer}' there, 'shiftadd'"):
            checkpointing.check_resumable(mngr, now)
        mngr.close()
