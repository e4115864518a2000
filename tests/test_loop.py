"""`train.loop.run` with tasks that are not classification: cadence, ranking, the guard.

The tasks here are what a distillation or super-resolution task would give the loop: their
own state (a dict, not a TrainState), step, evaluation and ranking metric. Nothing of
`train.classification` is used.
"""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from train import checkpointing, loop, reporting
from train.configs import default
from train.data import pipeline, sources

STEPS_PER_EPOCH = 4


def _config(**overrides):
    config = default.get_config()
    config.batch_size = 2
    config.log_every_steps = 2
    config.update(overrides)
    return config


def _data():
    images = np.zeros((2 * STEPS_PER_EPOCH, 2, 2, 1), np.uint8)
    source = sources.ArraySource(images, np.arange(2 * STEPS_PER_EPOCH) % 2)
    return iter(pipeline.train_loader(source, batch_size=2, seed=0, augment="none"))


class CountingTask:
    """State {"w": x}: each step adds the batch size; evaluation scores w itself."""

    def __init__(self, bad_step=None):
        self.evaluated = []
        self.bad_step = bad_step

    def step(self, state, batch, step):
        new = {"w": state["w"] + len(batch["label"])}
        finite = step != self.bad_step
        return new, {"loss": jnp.float32(step), "finite": jnp.asarray(finite),
                     "grad_finite": jnp.asarray([finite])}  # fmt: skip

    def evaluate(self, state, done):
        self.evaluated.append(done)
        # Peaks at step 4: a ranking metric that is not the newest step's.
        return {"psnr": float(-abs(done - 4)), "count": 1}

    def task(self):
        return loop.Task(
            step=self.step,
            evaluate=self.evaluate,
            describe=lambda r: f"psnr {r['psnr']:.1f}",
            best_metric="psnr",
            param_names=["w"],
        )


def _run(config, task, workdir, total_steps):
    mngr = checkpointing.manager(
        workdir / "checkpoints", keep=1, best_metric=checkpointing.metric_name("psnr")
    )
    writer = reporting.MetricWriter(workdir)
    bar = reporting.ProgressBar(total_steps, 0, enabled=False, log_every=2)
    try:
        return loop.run(
            task.task(),
            {"w": jnp.zeros(())},
            config=config,
            start_step=0,
            total_steps=total_steps,
            steps_per_epoch=STEPS_PER_EPOCH,
            data_iterator=_data(),
            mngr=mngr,
            writer=writer,
            bar=bar,
        )
    finally:
        writer.close()
        mngr.close()


def test_cadence_and_ranking_of_another_task(tmp_path):
    task = CountingTask()
    final, state = _run(_config(eval_every_epochs=1), task, tmp_path, 3 * STEPS_PER_EPOCH)
    assert float(state["w"]) == 2 * 3 * STEPS_PER_EPOCH
    assert task.evaluated == [4, 8, 12]  # every epoch
    assert final == {"psnr": -8.0, "count": 1, "step": 12}
    mngr = checkpointing.manager(
        tmp_path / "checkpoints",
        read_only=True,
        best_metric=checkpointing.metric_name("psnr"),
    )
    # keep=1: the newest, plus the best by the task's own metric.
    assert mngr.all_steps() == [4, 12] and mngr.best_step() == 4
    assert checkpointing.read_meta(mngr, 4)["metrics"] == {"eval_psnr": 0.0}
    logged = [json.loads(line) for line in open(tmp_path / reporting.METRICS_FILENAME)]
    assert [m["step"] for m in logged if m["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [m["step"] for m in logged if m["split"] == "eval"] == [4, 8, 12]


def test_a_non_finite_step_stops_before_anything_is_kept(tmp_path):
    task = CountingTask(bad_step=5)  # the 6th step, in the second epoch
    with pytest.raises(loop.NonFiniteError) as info:
        _run(_config(), task, tmp_path, 3 * STEPS_PER_EPOCH)
    message = str(info.value)
    assert "non-finite gradient of w at step 6" in message and "is step 4" in message
    assert task.evaluated == [4]  # the state of step 8 was never evaluated nor saved
    mngr = checkpointing.manager(tmp_path / "checkpoints", read_only=True)
    assert mngr.all_steps() == [4]


def test_step_counts():
    config = ml_collections.ConfigDict(_config(num_epochs=3, num_train_steps=-1).to_dict())
    assert loop.step_counts(config, 9) == (4, 12)
    config.num_train_steps = 5
    assert loop.step_counts(config, 9) == (4, 5)
    with pytest.raises(Exception, match="larger than the 1 training examples"):
        loop.step_counts(config, 1)
