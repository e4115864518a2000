"""What the program entry points share: flags, and bad input stopping with one line.

`python -m train.cifar` and its siblings differ only in their default config file.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train import checkpointing, config_checks, data_sources

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

# Errors a user can fix from the command line: printed as one line, never a traceback.
USER_ERRORS = (config_checks.ConfigError, data_sources.DataError, checkpointing.CheckpointError)


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


def exit_on_user_error(fn):
    """Runs fn(); a `USER_ERRORS` exception becomes `error: ...` on stderr and exit 2."""
    try:
        return fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def train_main(argv) -> None:
    """The `main` of the training programs (absl.app calls it after parsing flags)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_logs()
    exit_on_user_error(initialize_distributed)
    # Imported here, not at the top: grain's worker processes re-import the program's main
    # module (train.mnist, ...), and the trainer is seconds of imports they do not need.
    from train import loop, train

    try:
        result = exit_on_user_error(
            lambda: train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
        )
    except loop.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's convention for death by a signal
    except loop.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    print(
        f"final test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
        f"({result['count']} images, step {result['step']})"
    )
