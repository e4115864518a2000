"""Distillation as a task of `train.trainer.run`: PKKD (a CNN teacher trained alongside, its
kernel feature maps aligned with the student's) or plain KD from a trained teacher
(`train/configs/pkkd_*.py`, docs/distillation.md).

It is classification with another state and step (`train.distillation`): the set-up is
`tasks.classification.setup_with`, plus the teacher. A KD teacher's stored config is
checked before anything is compiled and its variables are read only for a fresh state (a
resume restores them with the rest); the result nests the teacher's evaluation under
"teacher".
"""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from train import distillation, saved_models, trainer
from train.tasks import classification

__all__ = ["final_line", "setup", "validate"]

final_line = classification.final_line  # the student's


def validate(config: ml_collections.ConfigDict) -> None:
    classification.validate(config)


def setup(config: ml_collections.ConfigDict, mesh: Mesh) -> trainer.Setup:
    after_init = lambda state, built: state  # noqa: E731
    if config.distill == "kd":
        saved, teacher_checkpoint = saved_models.saved_config(config.teacher_workdir)
        distillation.check_teacher(saved, config)

        def after_init(state, built):
            _, variables, _ = saved_models.load_model(checkpoint=teacher_checkpoint)
            return distillation.with_teacher(state, variables, built.shardings)

    settings = distillation.Settings.from_config(config)
    return classification.setup_with(
        config,
        mesh,
        steps=distillation,
        build=distillation.build,
        param_names=lambda abstract: distillation.param_names(abstract, settings),
        after_init=after_init,
        result=distillation.nested_result,
        network=distillation.network,
    )
