"""The training tasks of `train.trainer.run`: each a module with `validate(config)` and
`setup(config, mesh) -> trainer.Setup`.

`classification` (the image classifiers of `adderjax.models`), `distillation` (PKKD and
plain KD: a classifier taught by a CNN) and `super_resolution` (AdderSR's VDSR and EDSR).
A new task is one more module here (docs/training.md#adding-a-task).
"""

from __future__ import annotations

import ml_collections

from train import distillation as distillation_steps
from train.tasks import classification, distillation, super_resolution

__all__ = ["classification", "distillation", "for_config", "super_resolution"]


def for_config(config: ml_collections.ConfigDict):
    """The task of a classification config: distillation when it names a teacher."""
    return distillation if distillation_steps.enabled(config) else classification
