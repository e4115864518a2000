"""What the programs share: flags, their `main` (`program`), bad input stopping with one line.

Every `python -m train.X` runs `absl.app.run(main)` with a `main` made by `program` (or by
`train_program`, for the training programs: `train.cifar` and its siblings differ only in
their default config file, `train.sr` in its task).
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train import checkpointing, config_checks
from train.data import sources

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

# Errors a user can fix from the command line: printed as one line, never a traceback.
USER_ERRORS = (config_checks.ConfigError, sources.DataError, checkpointing.CheckpointError)


def quiet_logs() -> None:
    """Library logs (orbax's and JAX's INFO lines) off unless asked for, called first in
    every program's main: the programs print their own progress, results and one-line
    warnings. ``--verbosity=0`` (absl's flag) shows INFO logs, ``--verbosity=1`` debug ones;
    without it only warnings are logged (absl.app would otherwise raise it to INFO)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        # orbax warns at every checkpoint saved between evaluations (it has no metric to
        # rank it by); the loop means it (`train.loop.run`), so it is not news.
        logging.get_absl_logger().addFilter(
            lambda record: "Requested `tracked_metric`" not in record.getMessage()
        )


def define_distributed_flags() -> None:
    """Multi-host flags; each defaults to its JAX_* environment variable."""
    flags.DEFINE_string(
        "coordinator_address",
        os.environ.get("JAX_COORDINATOR_ADDRESS"),
        "host:port of process 0, for a multi-host run (env JAX_COORDINATOR_ADDRESS).",
    )
    flags.DEFINE_integer(
        "num_processes",
        _env_int("JAX_NUM_PROCESSES"),
        "Number of processes of a multi-host run (env JAX_NUM_PROCESSES).",
    )
    flags.DEFINE_integer(
        "process_id", _env_int("JAX_PROCESS_ID"), "This process's id (env JAX_PROCESS_ID)."
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() and let it detect the cluster (TPU VM slices, "
        "SLURM, Open MPI); not needed when --coordinator_address is given.",
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def initialize_distributed() -> None:
    """Joins a multi-host run when the flags (or environment) describe one."""
    f = flags.FLAGS
    if f.coordinator_address is None and not f.distributed:
        return
    if f.coordinator_address is not None and (f.num_processes is None or f.process_id is None):
        raise config_checks.ConfigError(
            f"--coordinator_address={f.coordinator_address} needs --num_processes and "
            f"--process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    # CPU processes need a collectives backend to talk to each other (GPU and TPU have theirs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f.coordinator_address,
        num_processes=f.num_processes,
        process_id=f.process_id,
    )


def define_flags(default_config: str) -> None:
    define_distributed_flags()
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
    config_flags.DEFINE_config_file(
        "config",
        str(CONFIGS / default_config),
        "Training config file (train/configs/*.py); override keys with --config.KEY=VALUE.",
        lock_config=True,
    )
    flags.mark_flags_as_required(["workdir"])


def exit_on_user_error(fn, errors: tuple[type[BaseException], ...] = ()):
    """Runs fn(); a `USER_ERRORS` (or `errors`) exception becomes `error: ...` on stderr and
    exit 2."""
    try:
        return fn()
    except USER_ERRORS + tuple(errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def program(
    run: Callable[[list[str]], str],
    *,
    args: int = 0,
    usage: str | None = None,
    distributed: bool = False,
    errors: tuple[type[BaseException], ...] = (),
) -> Callable[[list[str]], None]:
    """The `main` of a program for `absl.app.run`, every program's one way to run.

    It refuses other than `args` positional arguments (printing `usage`), turns library logs
    down (`quiet_logs`), joins a multi-host run when `distributed` (the flags of
    `define_distributed_flags`), then prints what ``run(positional arguments)`` returns.
    Errors a user can fix (`USER_ERRORS` and `errors`) print one line and exit 2; a training
    run stopped by a non-finite loss exits 3, one stopped by SIGTERM/SIGINT 128 + the signal
    (the shell's convention for death by a signal).
    """

    def main(argv: list[str]) -> None:
        if len(argv) != args + 1:
            raise app.UsageError(usage or f"unexpected arguments: {' '.join(argv[1:])}")
        quiet_logs()
        if distributed:
            exit_on_user_error(initialize_distributed)
        # Imported here: grain's worker processes re-import the program's main module
        # (train.mnist, ...), and the trainer is seconds of imports they do not need.
        from train import loop

        try:
            line = exit_on_user_error(lambda: run(argv[1:]), errors)
        except loop.Interrupted as e:
            print(str(e), file=sys.stderr)
            sys.exit(128 + e.signum)
        except loop.NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(3)
        print(line)

    return main


def train_program(task_name: str | None = None) -> Callable[[list[str]], None]:
    """The `main` of a training program: `train.trainer.run` of ``--config`` in
    ``--workdir`` (flags of `define_flags`) as the task `train.tasks.<task_name>`, or, with
    None, the classification task its config asks for (`train.tasks.for_config`)."""

    def run(_) -> str:
        from train import tasks, trainer

        config = flags.FLAGS.config
        task = tasks.for_config(config) if task_name is None else getattr(tasks, task_name)
        result = trainer.run(config, flags.FLAGS.workdir, task)
        return task.final_line(result)

    return program(run, distributed=True)
