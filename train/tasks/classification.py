"""Classification as a task of `train.trainer.run`: a model of `adderjax.models` on an
image dataset (`train/configs/{mnist,cifar10,cifar100,imagenet}.py`).

Its parts: `model_state` (config -> model -> train state), `train.classification` (the loss
and the jitted steps), `sources` and `pipeline` (the data). The l_p exponent and
the learning rate are functions of the step; each evaluation gives top-1 and top-5, and
checkpoints are ranked by top-1. `setup_with` is the same set-up for another state and step
(distillation's).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from train import (
    classification,
    config_checks,
    loop,
    model_state,
    plots,
    reporting,
    schedules,
    sharding,
    trainer,
)
from train.data import pipeline, sources

__all__ = ["final_line", "setup", "setup_with", "validate"]


def validate(config: ml_collections.ConfigDict) -> None:
    config_checks.validate(config, device_count=jax.device_count())


def final_line(result: dict) -> str:
    return (
        f"final test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
        f"({result['count']} images, step {result['step']})"
    )


def setup(config: ml_collections.ConfigDict, mesh: Mesh) -> trainer.Setup:
    return setup_with(
        config,
        mesh,
        steps=classification,
        build=model_state.build,
        param_names=lambda abstract: model_state.param_names(abstract.params),
    )


def setup_with(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    steps: ModuleType,
    build: Callable,
    param_names: Callable[[Any], list[str]],
    after_init: Callable[[Any, Any], Any] = lambda state, built: state,
    result: Callable[[dict], dict] = lambda final: final,
    network: Callable[[Any], Any] = lambda state: state,
) -> trainer.Setup:
    """The classification set-up for a state made by `build` (as `model_state.build`) and
    stepped by `steps` (a module with `jit_train_step`, `jit_eval_step`, `evaluate` and
    `describe`, as `train.classification`).

    `after_init(state, built)` completes a fresh state (not a restored one), `result` maps
    the final evaluation, and `network(state)` is the classifier whose weights are plotted.
    """
    opened = {
        split: sources.open_source(
            config.dataset, split, data_format=config.data_format, data_dir=config.data_dir
        )
        for split in sources.SPLITS
    }
    (train_source, info), (eval_source, _) = opened["train"], opened["test"]
    steps_per_epoch, total_steps = loop.step_counts(config, len(train_source))
    built = build(config, info, steps_per_epoch=steps_per_epoch, mesh=mesh)
    lr_fn = schedules.learning_rate(config, steps_per_epoch)
    train_step = steps.jit_train_step(config, info, built.shardings, mesh, lr_fn=lr_fn)
    eval_step = steps.jit_eval_step(info, built.shardings, mesh)
    eval_batches = pipeline.config_eval_batches(config, eval_source)
    batch_sharding = sharding.batch_sharding(mesh)

    def p(step: int) -> np.float32:
        return np.float32(schedules.p_at_step(config, step, steps_per_epoch))

    loop_task = loop.Task(
        step=lambda state, batch, step: train_step(
            state, sharding.global_batch(batch, batch_sharding), p(step)
        ),
        evaluate=lambda state, done: steps.evaluate(
            eval_step, state, eval_batches, p(done - 1), mesh
        ),
        describe=steps.describe,
        param_names=param_names(built.abstract),
    )

    def finish(workdir: pathlib.Path, state) -> None:
        if not config.plots:
            return
        plots.plot_curves(
            reporting.read_metrics(workdir / reporting.METRICS_FILENAME), workdir / "curves.png"
        )
        # The histograms of the paper's Figure 4: adder filters or conv filters (a DeepShift
        # network has neither; ShiftAddNet's adder filters are drawn).
        key = {"adder": "adder_params", "shiftadd": "adder_params", "conv": "cnn_params"}
        if config.layer in key:
            params = jax.device_get(network(state).params)
            plots.plot_weight_histograms(
                **{key[config.layer]: params}, path=workdir / "weights.png"
            )

    return trainer.Setup(
        abstract=built.abstract,
        init=lambda: after_init(built.init(jax.random.key(config.seed)), built),
        loop_task=loop_task,
        train_batches=lambda: iter(pipeline.config_train_loader(config, train_source)),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        result=result,
        finish=finish,
    )
