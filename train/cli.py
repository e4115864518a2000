"""What the program entry points share: flags, and bad input stopping with one line.

`python -m train.cifar` and its siblings differ only in their default config file.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from train import config_checks, data_sources

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

# Errors a user can fix from the command line: printed as one line, never a traceback.
USER_ERRORS = (config_checks.ConfigError, data_sources.DataError)


def define_flags(default_config: str) -> None:
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
    from train import train  # jax is imported only after the flags parsed

    result = exit_on_user_error(
        lambda: train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    )
    print(
        f"final test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
        f"({result['count']} images, step {result['step']})"
    )
