"""Saved runs as models: the Flax model, its variables and its config from a checkpoint.

Works for any workdir of the training programs and of `python -m train.convert_torch`::

    from train import saved_models
    model, variables, config = saved_models.load_model("runs/lenet-adder")
    logits = model.apply(variables, images, train=False)  # images normalised as for training

A distillation run's checkpoints hold two networks: the student by default, the teacher
with ``network="teacher"``.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from typing import Any

from train import checkpointing, config_checks, distillation, model_state
from train.data import sources

__all__ = ["load_model", "open_checkpoint", "restore_network", "saved_config"]


def _locate(workdir, checkpoint: str | None) -> tuple[pathlib.Path, int | None]:
    """(checkpoint directory, step or None for newest/best)."""
    if (workdir is None) == (checkpoint is None):
        raise config_checks.ConfigError("give exactly one of --workdir and --checkpoint")
    if workdir is not None:
        return checkpointing.checkpoint_dir(workdir), None
    path = pathlib.Path(checkpoint).absolute()
    if not path.name.isdigit():
        raise config_checks.ConfigError(
            f"--checkpoint={checkpoint} is not a checkpoint: expected WORKDIR/checkpoints/STEP"
        )
    return path.parent, int(path.name)


def load_model(
    workdir: str | None = None,
    checkpoint: str | None = None,
    *,
    best: bool = False,
    network: str = "student",
) -> tuple[Any, dict, Any]:
    """(model, variables, config) of a saved checkpoint, to call as the model zoo's models are.

    ``model.apply(variables, images, train=False)`` gives logits for images normalised as the
    config's dataset is: ``(x / 255 - mean) / std`` with `train.data.sources.DATASETS`' mean
    and std. No data is read. Of a distillation run, ``network`` picks the "student" (the
    AdderNet) or the "teacher" (the CNN); the config returned is that network's.

    Example (a workdir of `python -m train.convert_torch` or of a training run)::

        model, variables, config = load_model("/tmp/r20")
        logits = model.apply(variables, images, train=False)
    """
    with open_checkpoint(workdir, checkpoint, best=best) as (mngr, step):
        config = _stored_config(mngr, step)
        model, state, _, config = restore_network(
            mngr, step, config, sources.DATASETS[config.dataset], network=network
        )
    return model, {"params": state.params, "batch_stats": state.batch_stats}, config


def saved_config(
    workdir: str | None = None, checkpoint: str | None = None, *, best: bool = False
) -> tuple[Any, pathlib.Path]:
    """(config, checkpoint path) of a saved checkpoint, read from its metadata without its
    arrays; the path (WORKDIR/checkpoints/STEP) names that step for `load_model` later, even
    if the run saves a newer one meanwhile."""
    with open_checkpoint(workdir, checkpoint, best=best) as (mngr, step):
        return _stored_config(mngr, step), checkpointing.step_dir(mngr, step)


def _stored_config(mngr, step: int):
    return checkpointing.config_from_meta(checkpointing.read_meta(mngr, step))


def restore_network(mngr, step: int, config, info, *, network: str = "student", mesh=None):
    """(model, train state, its shardings or None, its config) of one network of checkpoint
    `step`, whose stored config is `config`: the run's only network, or a distillation run's
    student or teacher (`train.distillation.NETWORKS`)."""
    if network not in distillation.NETWORKS:
        raise config_checks.ConfigError(
            f"network={network!r} is not one of {', '.join(distillation.NETWORKS)}"
        )
    if not distillation.enabled(config):
        if network != "student":
            raise config_checks.ConfigError(
                f"network={network!r}: checkpoint {step} in {mngr.directory} did not distil; "
                f"it holds one network"
            )
        built = model_state.build(config, info, mesh=mesh)
        state, _ = checkpointing.restore(mngr, step, built.abstract)
        return built.model, state, built.shardings, config
    built = distillation.build(config, info, mesh=mesh)
    state, _ = checkpointing.restore(mngr, step, built.abstract)
    shardings = None if built.shardings is None else getattr(built.shardings, network)
    if network == "student":
        return built.model, state.student, shardings, config
    teacher = distillation.teacher_config(config)
    return model_state.create_model(teacher, info.num_classes), state.teacher, shardings, teacher


def _open(directory: pathlib.Path, step: int | None, best: bool):
    """(read-only manager, step): the given step, else the best or the newest."""
    if not directory.is_dir():
        raise config_checks.ConfigError(f"no checkpoints in {directory}")
    mngr = checkpointing.manager(directory, read_only=True)
    steps = list(mngr.all_steps())
    if step is None:
        step = mngr.best_step() if best else mngr.latest_step()
    if not steps or step not in steps:
        mngr.close()
        where = f"{directory} (steps there: {steps})" if steps else f"{directory}: it has none"
        raise config_checks.ConfigError(
            f"no checkpoint{'' if step is None else f' {step}'} in {where}"
        )
    return mngr, step


@contextlib.contextmanager
def open_checkpoint(
    workdir: str | pathlib.Path | None = None,
    checkpoint: str | None = None,
    *,
    best: bool = False,
    step: int | None = None,
) -> Iterator[tuple[Any, int]]:
    """``with open_checkpoint(...) as (mngr, step):`` a read-only checkpoint manager and the
    step of ``--workdir`` (its newest, its best with `best`, or `step`) or of
    ``--checkpoint`` (WORKDIR/checkpoints/STEP); the manager is closed on leaving, by an
    error too.

    Raises:
      config_checks.ConfigError: no such workdir, checkpoint or step.
    """
    directory, at = _locate(workdir, checkpoint)
    if step is not None and checkpoint is not None:
        raise config_checks.ConfigError("give a step with --workdir, not with --checkpoint")
    mngr, step = _open(directory, at if step is None else step, best)
    try:
        yield mngr, step
    finally:
        mngr.close()
