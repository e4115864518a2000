"""The classification trainer behind every program: `train_and_evaluate(config, workdir)`.

It composes the shared parts: `sharding` (the ("data", "fsdp") mesh: the global batch split
over both axes, the state replicated or split over "fsdp", so gradients and BatchNorm
statistics are those of the whole global batch on 1 or N devices), `model_state` (config ->
model -> train state), `classification` (the loss and the jitted steps), `loop` (steps,
logging, evaluation, checkpoints, signals) and `checkpointing` (orbax, with exact resume).
The l_p exponent and the learning rate are functions of the step; each epoch ends with an
evaluation (top-1 and top-5) and a checkpoint from which a restarted run resumes, data
iterator included.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np

from train import (
    checkpointing,
    classification,
    config_checks,
    data_sources,
    distillation,
    input_pipeline,
    loop,
    model_state,
    plots,
    reporting,
    saved_models,
    schedules,
    sharding,
)

__all__ = ["param_names", "train_and_evaluate"]

param_names = model_state.param_names  # where it was before model_state held it


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one.

    Args:
      config: a config of `train.configs` (validated first; `ConfigError` on bad values,
        `train.data_sources.DataError` on missing or corrupt data).
      workdir: where checkpoints, metrics.jsonl, TensorBoard events and plots go.

    Returns:
      The final evaluation: top1, top5, loss and count over the test split, and the step;
      when distilling, these are the student's and "teacher" holds the teacher's.

    Raises:
      loop.Interrupted: SIGTERM or SIGINT stopped the run after a checkpoint.
      loop.NonFiniteError: a non-finite loss or gradient stopped it.
    """
    workdir = pathlib.Path(workdir).absolute()
    config_checks.validate(config, device_count=jax.device_count())
    mesh = sharding.make_mesh(config.fsdp_size)
    opened = {
        split: data_sources.open_source(
            config.dataset, split, data_format=config.data_format, data_dir=config.data_dir
        )
        for split in data_sources.SPLITS
    }
    (train_source, info), (eval_source, _) = opened["train"], opened["test"]
    steps_per_epoch, total_steps = loop.step_counts(config, len(train_source))
    # Distillation is classification with a teacher: the same loop, another state and step.
    distilling = distillation.enabled(config)
    if distilling and config.distill == "kd":  # checked before anything is compiled
        # From its stored config only: the variables are read in init(), when no checkpoint
        # of this run already holds the teacher (a resume restores it with the rest).
        saved, teacher_checkpoint = saved_models.saved_config(config.teacher_workdir)
        distillation.check_teacher(saved, config)
    task = distillation if distilling else classification
    build = distillation.build if distilling else model_state.build
    built = build(config, info, steps_per_epoch=steps_per_epoch, mesh=mesh)
    lr_fn = schedules.learning_rate(config, steps_per_epoch)
    train_step = task.jit_train_step(config, info, built.shardings, mesh, lr_fn=lr_fn)
    eval_step = task.jit_eval_step(info, built.shardings, mesh)
    eval_batches = input_pipeline.config_eval_batches(config, eval_source)
    batch_sharding = sharding.batch_sharding(mesh)

    def p(step: int) -> np.float32:
        return np.float32(schedules.p_at_step(config, step, steps_per_epoch))

    if distilling:
        settings = distillation.Settings.from_config(config)
        names = distillation.param_names(built.abstract, settings)
    else:
        names = param_names(built.abstract.params)
    loop_task = loop.Task(
        step=lambda state, batch, step: train_step(
            state, sharding.global_batch(batch, batch_sharding), p(step)
        ),
        evaluate=lambda state, done: task.evaluate(
            eval_step, state, eval_batches, p(done - 1), mesh
        ),
        describe=task.describe,
        param_names=names,
    )

    is_chief = jax.process_index() == 0
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpointing.manager(
        checkpointing.checkpoint_dir(workdir), keep=config.keep_checkpoints
    )
    # The mesh in context: the Pallas path of the adder op splits its kernels over it.
    with jax.set_mesh(mesh):
        data_iterator = iter(input_pipeline.config_train_loader(config, train_source))
        checkpointing.check_resumable(mngr, config)

        def init():
            state = built.init(jax.random.key(config.seed))
            if distilling and config.distill == "kd":  # the step checked above
                _, teacher_variables, _ = saved_models.load_model(checkpoint=teacher_checkpoint)
                state = distillation.with_teacher(state, teacher_variables, built.shardings)
            return state

        state, start_step = checkpointing.restore_or_init(
            mngr,
            built.abstract,
            init,
            data_iterator=data_iterator,
            warn=reporting.warn,
            info=reporting.info,
        )
        final, state = loop.run_in_workdir(
            loop_task,
            state,
            config=config,
            workdir=workdir,
            start_step=start_step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            data_iterator=data_iterator,
            mngr=mngr,
        )
    if distilling:
        final = distillation.nested_result(final)
    if is_chief:
        (workdir / "results.json").write_text(json.dumps(final, indent=2) + "\n")
        if config.plots:
            plots.plot_curves(
                reporting.read_metrics(workdir / reporting.METRICS_FILENAME),
                workdir / "curves.png",
            )
            key = "adder_params" if config.adder else "cnn_params"
            params = jax.device_get(distillation.network(state).params)
            plots.plot_weight_histograms(**{key: params}, path=workdir / "weights.png")
    return final
