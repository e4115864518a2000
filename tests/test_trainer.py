"""`train.trainer.run` with a task built from the parts in a few lines: the run every task
gets (workdir, checkpoints, exact resume, results.json, the resume policy)."""

import json
import logging
import pathlib
import shutil

import datafiles
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpointing, config_checks, loop, tasks, trainer
from train.configs import default
from train.data import pipeline, sources


class CountingTask:
    """A task module's three functions: state {"w"}, each step adds the batch's label sum;
    evaluation reports w (a toy, in the shape of `train.tasks.classification`)."""

    def validate(self, config):
        if config.batch_size != 2:
            raise config_checks.ConfigError(f"config.batch_size={config.batch_size}: expected 2")

    def setup(self, config, mesh):
        images = np.zeros((8, 2, 2, 1), np.uint8)
        source = sources.ArraySource(images, np.arange(8) % 3)
        steps_per_epoch, total_steps = loop.step_counts(config, len(source))
        abstract = {"w": jax.ShapeDtypeStruct((), jnp.float32)}
        task = loop.Task(
            step=lambda state, batch, step: (
                {"w": state["w"] + np.sum(batch["label"])},
                {"loss": jnp.float32(step)},
            ),
            evaluate=lambda state, done: {"w": float(state["w"]), "count": 1},
            describe=lambda result: f"w {result['w']:.0f}",
            best_metric="w",
        )
        return trainer.Setup(
            abstract=abstract,
            init=lambda: {"w": jnp.zeros((), jnp.float32)},
            loop_task=task,
            train_batches=lambda: iter(
                pipeline.train_loader(source, batch_size=2, seed=config.seed, augment="none")
            ),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            resume_keys=("seed",),
            result=lambda final: {**final, "task": "counting"},
        )

    def final_line(self, result):
        return f"w {result['w']:.0f}"


def _config(**overrides):
    config = default.get_config()
    config.update(batch_size=2, log_every_steps=2, progress_bar=False, plots=False)
    config.update(overrides)
    return config


def test_a_task_from_the_parts_runs_resumes_and_writes_its_result(tmp_path):
    straight = trainer.run(_config(num_train_steps=8), tmp_path / "a", CountingTask())
    assert straight["task"] == "counting" and straight["step"] == 8
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == straight
    trainer.run(_config(num_train_steps=4), tmp_path / "b", CountingTask())
    resumed = trainer.run(_config(num_train_steps=8), tmp_path / "b", CountingTask())
    assert resumed == straight  # the data iterator resumed with the state
    # The task's resume keys: another seed is another run.
    with pytest.raises(config_checks.ConfigError, match="seed=0 there, 1 here"):
        trainer.run(_config(num_train_steps=9, seed=1), tmp_path / "b", CountingTask())


def test_the_task_validates_before_anything_is_written(tmp_path):
    with pytest.raises(config_checks.ConfigError, match="batch_size=4"):
        trainer.run(_config(batch_size=4), tmp_path / "w", CountingTask())
    assert not (tmp_path / "w").exists()


OLD_WORKDIR = pathlib.Path(__file__).parent / "data" / "workdir_before_trainer"


def test_a_workdir_from_before_the_trainer_resumes(tmp_path, monkeypatch, caplog):
    """tests/data/workdir_before_trainer: one LeNet-5-BN step written by `train.train` of
    44397ff (before `train.trainer` and `train.tasks`; 32 idx images of datafiles in ./idx,
    batch 16, the XLA path): the classification task resumes it at step 1 and takes step 2.
    (The data iterator's checkpoint names its files, so the data sits where it sat.)"""
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "w"
    shutil.copytree(OLD_WORKDIR, workdir)
    config = datafiles.small_config(
        datafiles.write_idx_dir("idx", num_train=32, num_test=8),
        num_train_steps=2,
        keep_checkpoints=1,
        worker_count=0,
        implementation="xla",
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        result = trainer.run(config, workdir, tasks.classification)
    assert f"resumed from {workdir / 'checkpoints'} at step 1" in caplog.text
    assert result["step"] == 2 and result["count"] == 8
    logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [m["step"] for m in logged if m["split"] == "train"] == [1, 2]  # 1: the old run's


def test_a_workdir_resumed_over_other_data_is_refused_not_set_aside(tmp_path, monkeypatch):
    """The old workdir read ./idx; given the same files elsewhere, the data iterator cannot
    resume (grain compares the sources): one line naming both, the checkpoint left whole."""
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "w"
    shutil.copytree(OLD_WORKDIR, workdir)
    config = datafiles.small_config(
        datafiles.write_idx_dir(tmp_path / "elsewhere", num_train=32, num_test=8),
        num_train_steps=2,
        keep_checkpoints=1,
        worker_count=0,
        implementation="xla",
    )
    with pytest.raises(checkpointing.CheckpointError) as info:
        trainer.run(config, workdir, tasks.classification)
    message = str(info.value)
    assert "was written reading data ArraySource('train from idx/train-images" in message
    assert "elsewhere/train-images" in message and "\n" not in message
    assert (workdir / "checkpoints" / "1").is_dir()
    assert not list((workdir / "checkpoints").glob("damaged-*"))
