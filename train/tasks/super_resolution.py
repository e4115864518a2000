"""Super-resolution as a task of `train.trainer.run`: VDSR or EDSR, AdderSR or CNN
(`train/configs/sr.py`, docs/super_resolution.md).

Its parts: `train.super_resolution` (model, optimizer, step, PSNR/SSIM evaluation),
`sr_images` (HR folders or tfds, random LR/HR patch pairs, evaluation sets) and `sr_metrics`.
Each evaluation gives PSNR and SSIM per test set with bicubic's beside them; checkpoints are
ranked by the mean PSNR.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from train import config_checks, loop, model_state, sharding, super_resolution, trainer
from train.data import sr_images

__all__ = ["final_line", "setup", "validate"]


def _specs(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def final_line(result: dict) -> str:
    return f"final evaluation (step {result['step']}): {super_resolution.describe(result)}"


def validate(config: ml_collections.ConfigDict) -> None:
    config_checks.validate_sr(config, device_count=jax.device_count())
    if len(_specs(config.train_data)) != 1:  # checked before any folder is read
        raise config_checks.ConfigError(
            f"config.train_data={config.train_data!r} is invalid: expected one folder or tfds:NAME"
        )


def setup(config: ml_collections.ConfigDict, mesh: Mesh) -> trainer.Setup:
    train_source = sr_images.open_hr(
        _specs(config.train_data)[0], "train", data_dir=config.data_dir
    )
    pairs = sr_images.SRPairs(train_source, config.scale)
    sets = sr_images.eval_sets(_specs(config.eval_data), config.scale, data_dir=config.data_dir)
    steps_per_epoch, total_steps = loop.step_counts(config, len(pairs) * config.repeat)
    built = super_resolution.build(config, steps_per_epoch=steps_per_epoch, mesh=mesh)
    lr_fn = super_resolution.learning_rate(config, steps_per_epoch)
    train_step = super_resolution.jit_train_step(config, built.shardings, mesh, lr_fn=lr_fn)
    predict = super_resolution.jit_predict(built.model)
    bicubic = super_resolution.bicubic_scores(sets, config.scale)
    batch_sharding = sharding.batch_sharding(mesh)
    one = np.float32(1.0)

    loop_task = loop.Task(
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

    def train_batches():
        return iter(
            sr_images.train_loader(
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

    return trainer.Setup(
        abstract=built.abstract,
        init=lambda: built.init(jax.random.key(config.seed)),
        loop_task=loop_task,
        train_batches=train_batches,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        resume_keys=super_resolution.RESUME_KEYS,
        missing={},
    )
