"""The classification task's runs in-process: exact resume, the l_p schedule, checkpoints,
configs."""

import json

import datafiles
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train import checkpointing, classification, config_checks, sharding, tasks, trainer


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    # 64 training images: 4 steps of 16 per epoch; 20 test images: 3 eval batches of 8.
    return datafiles.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=64, num_test=20)


def _final_params(workdir):
    mngr = checkpointing.manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mngr.close()
    return step, restored["state"]


@pytest.mark.parametrize(
    "layer",
    [
        {},
        # The shift layers' gradient quantisation draws from a key of the step: resumed, the
        # same draws; the latents' projection after each update.
        pytest.param({"layer": "shiftadd"}, marks=pytest.mark.slow),
    ],
    ids=["adder", "shiftadd"],
)
def test_resume_continues_exactly(idx_dir, tmp_path, layer):
    """A run stopped after step 3 (mid-epoch) and restarted ends with the same parameters,
    batch statistics and optimizer state as an uninterrupted run: data order included."""
    straight = trainer.run(
        datafiles.small_config(idx_dir, num_train_steps=6, **layer),
        tmp_path / "a",
        tasks.classification,
    )
    first = trainer.run(
        datafiles.small_config(idx_dir, num_train_steps=3, **layer),
        tmp_path / "b",
        tasks.classification,
    )
    assert first["step"] == 3
    assert checkpointing.manager(tmp_path / "b" / "checkpoints").all_steps() == [3]
    resumed = trainer.run(
        datafiles.small_config(idx_dir, num_train_steps=6, **layer),
        tmp_path / "b",
        tasks.classification,
    )
    assert resumed["step"] == straight["step"] == 6
    step_a, state_a = _final_params(tmp_path / "a")
    step_b, state_b = _final_params(tmp_path / "b")
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    assert resumed["top1"] == straight["top1"]
    # Each step is in the metrics once, though run b wrote them in two goes.
    steps = [
        m["step"]
        for m in map(json.loads, open(tmp_path / "b" / "metrics.jsonl"))
        if m["split"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_at_the_end_does_nothing_new(idx_dir, tmp_path):
    config = datafiles.small_config(idx_dir, num_train_steps=2)
    first = trainer.run(config, tmp_path, tasks.classification)
    again = trainer.run(config, tmp_path, tasks.classification)
    assert again == first


def test_lp_schedule_reaches_the_step_without_recompiling(idx_dir, tmp_path, monkeypatch):
    traces = []
    original = classification.train_step

    def counting_step(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(classification, "train_step", counting_step)
    # 32 images, batch 16: 2 steps per epoch; p = 2 -> 1 over 2 epochs, then 1.
    data = datafiles.write_idx_dir(tmp_path / "data", num_train=32, num_test=8)
    config = datafiles.small_config(data, p_init=2.0, p_final=1.0, p_decay_epochs=2)
    trainer.run(config, tmp_path / "w", tasks.classification)
    logged = [m for m in map(json.loads, open(tmp_path / "w" / "metrics.jsonl"))]
    p_by_step = {m["step"]: m["p"] for m in logged if m["split"] == "train"}
    assert p_by_step == {1: 2.0, 2: 2.0, 3: 1.5, 4: 1.5, 5: 1.0, 6: 1.0}
    assert len(traces) == 1


def test_checkpoints_keep_latest_and_best(idx_dir, tmp_path):
    config = datafiles.small_config(idx_dir, num_epochs=5, keep_checkpoints=2)
    trainer.run(config, tmp_path, tasks.classification)
    mngr = checkpointing.manager(tmp_path / "checkpoints", read_only=True)
    steps = mngr.all_steps()
    assert steps[-2:] == [16, 20]
    assert mngr.best_step() in steps
    assert len(steps) <= 3
    meta = checkpointing.read_meta(mngr, 20)
    assert meta["config"]["model"] == "lenet5_bn"
    assert 0 <= meta["metrics"][checkpointing.BEST_METRIC] <= 1


def test_outputs_written(idx_dir, tmp_path):
    config = datafiles.small_config(idx_dir, num_train_steps=4, plots=True)
    trainer.run(config, tmp_path, tasks.classification)
    for name in ("curves.png", "weights.png", "results.json", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 4


def test_cnn_and_no_adaptive_lr_run(idx_dir, tmp_path):
    # The CNN of the same architecture and the run without the adaptive learning rate.
    for name, overrides in (("cnn", {"layer": "conv"}), ("noadaptive", {"adaptive_lr": False})):
        result = trainer.run(
            datafiles.small_config(idx_dir, num_train_steps=2, **overrides),
            tmp_path / name,
            tasks.classification,
        )
        assert np.isfinite(result["loss"])


def test_batch_larger_than_the_dataset(idx_dir, tmp_path):
    with pytest.raises(config_checks.ConfigError, match="larger than the 64 training examples"):
        trainer.run(datafiles.small_config(idx_dir, batch_size=128), tmp_path, tasks.classification)


def test_fsdp_spec_splits_the_largest_divisible_axis():
    P = jax.sharding.PartitionSpec
    assert sharding.fsdp_spec((3, 3, 16, 32), 4) == P(None, None, None, "fsdp")
    assert sharding.fsdp_spec((64, 10), 4) == P("fsdp", None)
    assert sharding.fsdp_spec((10,), 4) == P()  # nothing divides: replicated
    assert sharding.fsdp_spec((), 4) == P()
    assert sharding.fsdp_spec((3, 3, 16, 32), 1) == P()
