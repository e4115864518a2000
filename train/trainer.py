"""One training run for every task: `run(config, workdir, task)`.

A task (`train.tasks`: classification, distillation, super-resolution) validates its config
and, given the mesh, returns a `Setup`: its state (abstract and how to make a fresh one),
its `loop.Task`, its training batches and what a resume must match. This module owns what
every run does the same way: the ("data", "fsdp") mesh in context (`sharding`), the orbax
manager and the resume policy (`checkpointing`: exact resume, data iterator included), the
loop (`loop.run_in_workdir`: steps, logs, evaluations, checkpoints, signals) and
``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import ml_collections
from jax.sharding import Mesh

from train import checkpointing, loop, reporting, sharding

__all__ = ["Setup", "TaskModule", "run"]


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a task gives the run.

    Attributes:
      abstract: the state's abstract tree with shardings (the checkpoints' restore target).
      init: () -> a fresh state, when no checkpoint of the run exists yet.
      loop_task: steps, evaluation, its one-line description, the metric ranking checkpoints.
      train_batches: () -> the iterator of this host's training batches (made inside the
        mesh; checkpointed with the state when it can be).
      steps_per_epoch, total_steps: the run's length.
      resume_keys, missing: the config keys a resumed run must match, and what a key absent
        from an older checkpoint meant (`checkpointing.check_resumable`; None: its default).
      result: the final evaluation -> what the run returns and writes to results.json.
      finish: (workdir, state) -> None, run by the chief after results.json (plots).
    """

    abstract: Any
    init: Callable[[], Any]
    loop_task: loop.Task
    train_batches: Callable[[], Iterator]
    steps_per_epoch: int
    total_steps: int
    resume_keys: Sequence[str] = checkpointing.RESUME_KEYS
    missing: dict | None = None
    result: Callable[[dict], dict] = lambda final: final
    finish: Callable[[pathlib.Path, Any], None] | None = None


class TaskModule(Protocol):
    """A task: a module of `train.tasks` (or anything with these functions)."""

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """Raises `config_checks.ConfigError` naming a bad key, before anything is read."""

    def setup(self, config: ml_collections.ConfigDict, mesh: Mesh) -> Setup:
        """Opens the data and builds the state and steps on `mesh`."""

    def final_line(self, result: dict) -> str:
        """The program's last line for the run's result."""


def run(config: ml_collections.ConfigDict, workdir, task: TaskModule) -> dict[str, float]:
    """Trains `config` as `task` in `workdir`, resuming from its newest checkpoint if any.

    Returns the final evaluation (with its "step"), as `task`'s `Setup.result` gives it.

    Raises:
      config_checks.ConfigError, sources.DataError, checkpointing.CheckpointError: bad
        config, data or workdir (checked before anything is compiled where they can be).
      loop.Interrupted: SIGTERM or SIGINT stopped the run after a checkpoint.
      loop.NonFiniteError: a non-finite loss or gradient stopped it.
    """
    workdir = pathlib.Path(workdir).absolute()
    task.validate(config)
    mesh = sharding.make_mesh(config.fsdp_size)
    setup = task.setup(config, mesh)
    is_chief = jax.process_index() == 0
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpointing.manager(
        checkpointing.checkpoint_dir(workdir),
        keep=config.keep_checkpoints,
        best_metric=checkpointing.metric_name(setup.loop_task.best_metric),
    )
    # The mesh in context: the op's kernels (Pallas, native) split their calls over it.
    with jax.set_mesh(mesh):
        data_iterator = setup.train_batches()
        checkpointing.check_resumable(
            mngr, config, keys=tuple(setup.resume_keys), missing=setup.missing
        )
        state, start_step = checkpointing.restore_or_init(
            mngr,
            setup.abstract,
            setup.init,
            data_iterator=data_iterator,
            warn=reporting.warn,
            info=reporting.info,
        )
        final, state = loop.run_in_workdir(
            setup.loop_task,
            state,
            config=config,
            workdir=workdir,
            start_step=start_step,
            total_steps=setup.total_steps,
            steps_per_epoch=setup.steps_per_epoch,
            data_iterator=data_iterator,
            mngr=mngr,
        )
    final = setup.result(final)
    if is_chief:
        (workdir / "results.json").write_text(json.dumps(final, indent=2) + "\n")
        if setup.finish is not None:
            setup.finish(workdir, state)
    return final
