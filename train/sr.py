r"""Trains a super-resolution network (VDSR or EDSR, AdderSR or CNN) and evaluates it.

    python -m train.sr --workdir=/tmp/edsr_x2 --config=train/configs/sr.py:edsr,2 \
        --config.train_data=/data/DIV2K_train_HR --config.eval_data=/data/Set5,/data/Set14

The same loop as classification (`train.loop`): checkpoints every epoch with exact resume
(run the command again), SIGTERM/SIGINT save and stop, a non-finite loss stops naming the
layer, metrics in ``metrics.jsonl`` and TensorBoard, one-line errors. Each evaluation gives
PSNR and SSIM per test set with bicubic's beside them; ``results.json`` holds the last.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags

from train import (
    checkpointing,
    cli,
    config_checks,
    loop,
    model_state,
    reporting,
    sharding,
    sr_data,
    super_resolution,
)

__all__ = ["train_and_evaluate"]


def _specs(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` (`train/configs/sr.py`) in `workdir`, resuming from its newest
    checkpoint; returns the last evaluation (with its "step").

    Raises:
      config_checks.ConfigError, train.data_sources.DataError: bad config or images.
      loop.Interrupted, loop.NonFiniteError: as `train.train.train_and_evaluate`.
    """
    workdir = pathlib.Path(workdir).absolute()
    config_checks.validate_sr(config, device_count=jax.device_count())
    mesh = sharding.make_mesh(config.fsdp_size)
    train_specs = _specs(config.train_data)
    if len(train_specs) != 1:  # checked before any folder is read
        raise config_checks.ConfigError(
            f"config.train_data={config.train_data!r} is invalid: expected one folder or tfds:NAME"
        )
    train_source = sr_data.open_hr(train_specs[0], "train", data_dir=config.data_dir)
    pairs = sr_data.SRPairs(train_source, config.scale)
    sets = sr_data.eval_sets(_specs(config.eval_data), config.scale, data_dir=config.data_dir)
    steps_per_epoch, total_steps = loop.step_counts(config, len(pairs) * config.repeat)
    built = super_resolution.build(config, steps_per_epoch=steps_per_epoch, mesh=mesh)
    lr_fn = super_resolution.learning_rate(config, steps_per_epoch)
    train_step = super_resolution.jit_train_step(config, built.shardings, mesh, lr_fn=lr_fn)
    predict = super_resolution.jit_predict(built.model)
    bicubic = super_resolution.bicubic_scores(sets, config.scale)
    batch_sharding = sharding.batch_sharding(mesh)
    one = np.float32(1.0)

    task = loop.Task(
        step=lambda state, batch, step: train_step(
            state, sharding.global_batch(batch, batch_sharding), one
        ),
        evaluate=lambda state, done: super_resolution.evaluate(
            predict, state, sets, config.scale, bicubic
        ),
        describe=super_resolution.describe,
        best_metric=super_resolution.BEST_METRIC,
        param_names=model_state.param_names(built.abstract.params),
    )

    is_chief = jax.process_index() == 0
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpointing.manager(
        checkpointing.checkpoint_dir(workdir),
        keep=config.keep_checkpoints,
        best_metric=checkpointing.metric_name(super_resolution.BEST_METRIC),
    )
    with jax.set_mesh(mesh):
        data_iterator = iter(
            sr_data.train_loader(
                pairs,
                batch_size=config.batch_size // jax.process_count(),
                patch_size=config.patch_size,
                repeat=config.repeat,
                seed=config.seed,
                augment=config.augment,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                worker_count=config.worker_count,
            )
        )
        checkpointing.check_resumable(mngr, config, keys=super_resolution.RESUME_KEYS, missing={})
        state, start_step = checkpointing.restore_or_init(
            mngr,
            built.abstract,
            lambda: built.init(jax.random.key(config.seed)),
            data_iterator=data_iterator,
            warn=reporting.warn,
            info=reporting.info,
        )
        final, state = loop.run_in_workdir(
            task,
            state,
            config=config,
            workdir=workdir,
            start_step=start_step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            data_iterator=data_iterator,
            mngr=mngr,
        )
    if is_chief:
        (workdir / "results.json").write_text(json.dumps(final, indent=2) + "\n")
    return final


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_logs()
    cli.exit_on_user_error(cli.initialize_distributed)
    try:
        result = cli.exit_on_user_error(
            lambda: train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
        )
    except loop.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    except loop.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    print(f"final evaluation (step {result['step']}): {super_resolution.describe(result)}")


if __name__ == "__main__":
    cli.define_flags("sr.py")
    app.run(main)
