"""Validation of a training config before anything is built: one clear line per mistake."""

from __future__ import annotations

import math
import numbers
import pathlib

import ml_collections

from adderjax import distill, geometry, models, optim, shift, sr_models
from train import schedules
from train.configs import default
from train.configs import sr as sr_config
from train.data import pipeline, sources

__all__ = ["DISTILL_MODES", "ConfigError", "validate", "validate_sr"]

DTYPES = ("float32", "bfloat16")
# "none": classification alone; "pkkd": a CNN teacher trained alongside the AdderNet;
# "kd": a finished CNN teacher (`train.distillation`).
DISTILL_MODES = ("none", "pkkd", "kd")


class ConfigError(ValueError):
    """A config value that the programs cannot run with; the message is one line."""


def _bad(key: str, value, expected: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r} is invalid: expected {expected}")


def _number(config, key: str, *, integer: bool = False):
    value = config[key]
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _bad(key, value, "an integer" if integer else "a number")
    if not math.isfinite(value):
        raise _bad(key, value, "a finite number")
    return value


def _at_least(config, key: str, low, *, integer: bool = False) -> None:
    value = _number(config, key, integer=integer)
    if not value >= low:
        raise _bad(key, value, f"{'an integer' if integer else 'a number'} >= {low}")


def _one_of(config, key: str, choices) -> None:
    if config[key] not in choices:
        raise _bad(key, config[key], f"one of {', '.join(map(repr, choices))}")


def validate(config: ml_collections.ConfigDict, *, device_count: int) -> None:
    """Raises `ConfigError` naming the first bad key, its value and what was expected.

    Args:
      config: a config of `train.configs`.
      device_count: the number of devices the global batch is split over.
    """
    missing = sorted(set(default.get_config().keys()) - set(config.keys()))
    if missing:
        raise ConfigError(
            f"config is missing {', '.join(missing)}: start a config file from "
            f"train/configs/default.py"
        )
    _one_of(config, "model", sorted(models.MODELS))
    _one_of(config, "dataset", sorted(sources.DATASETS))
    _one_of(config, "data_format", sources.DATA_FORMATS)
    readable = sources.formats_for(config.dataset)
    if config.data_format not in readable:
        expected = " or ".join(map(repr, readable))
        raise _bad("data_format", config.data_format, f"{expected} for {config.dataset!r}")
    _one_of(config, "augment", pipeline.AUGMENTATIONS)
    _one_of(config, "layer", models.LAYERS)
    _check_layers(config)
    _check_shift(config)
    _check_run(config, device_count, batch_keys=("batch_size", "eval_batch_size"))
    _at_least(config, "warmup_epochs", 0, integer=True)
    if config.warmup_epochs >= config.num_epochs:
        raise _bad("warmup_epochs", config.warmup_epochs, f"< num_epochs={config.num_epochs}")
    _at_least(config, "image_size", 8, integer=True)
    _number(config, "steps_per_eval", integer=True)
    if not isinstance(config.plots, bool):
        raise _bad("plots", config.plots, "True or False")

    # The optimizer's own checks (`adderjax.optim`), reported as config keys.
    try:
        optim.check_sgd_arguments(
            config.learning_rate,
            config.momentum,
            config.nesterov,
            config.weight_decay,
            config.eta,
        )
    except optim.InvalidArgumentError as e:
        raise _bad(e.name, e.value, e.expected) from None
    _check_lr_schedule(config)
    if not isinstance(config.adaptive_lr, bool):
        raise _bad("adaptive_lr", config.adaptive_lr, "True or False")
    smoothing = _number(config, "label_smoothing")
    if not 0 <= smoothing < 1:
        raise _bad("label_smoothing", smoothing, "a number in [0, 1)")

    _check_distillation(config)

    for key in ("p_init", "p_final"):
        p = _number(config, key)
        if not 1 <= p <= 2:
            raise _bad(key, p, "a number in [1, 2]")
    _at_least(config, "p_decay_epochs", 0, integer=True)


def _bool(config, key: str) -> None:
    if not isinstance(config[key], bool):
        raise _bad(key, config[key], "True or False")


def _check_layers(config: ml_collections.ConfigDict) -> None:
    """The adder layers' options, shared by every task."""
    _one_of(config, "dtype", DTYPES)
    _one_of(config, "input_grad", geometry.INPUT_GRADS)
    _one_of(config, "filter_grad", geometry.FILTER_GRADS)
    _one_of(config, "implementation", (None, *geometry.IMPLEMENTATIONS))
    _bool(config, "interpret")
    if config.interpret and config.implementation != "pallas":
        raise _bad("interpret", True, "False unless implementation='pallas'")
    if config.filter_grad == "sign" and config.implementation == "pallas":
        raise _bad("filter_grad", "sign", "'full_precision' with implementation='pallas'")


def _check_lr_schedule(config: ml_collections.ConfigDict) -> None:
    _one_of(config, "lr_schedule", ("cosine", "step"))
    epochs = config.lr_step_epochs
    expected = f"comma-separated increasing epochs in [{config.warmup_epochs + 1}, num_epochs)"
    if not isinstance(epochs, str):
        raise _bad("lr_step_epochs", epochs, expected)
    try:
        values = schedules.step_epochs(config)
    except ValueError:
        raise _bad("lr_step_epochs", epochs, expected) from None
    bounds_ok = all(config.warmup_epochs < e < config.num_epochs for e in values)
    if values != sorted(set(values)) or not bounds_ok:
        raise _bad("lr_step_epochs", epochs, expected)
    if config.lr_schedule == "step" and not values:
        raise _bad("lr_step_epochs", epochs, "at least one epoch with lr_schedule='step'")
    factor = _number(config, "lr_step_factor")
    if not 0 < factor <= 1:
        raise _bad("lr_step_factor", factor, "a number in (0, 1]")


def _check_shift(config: ml_collections.ConfigDict) -> None:
    """The shift layers' options (`adderjax.shift.ShiftOptions`), as config keys."""
    _one_of(config, "shift_kind", shift.KINDS)
    _at_least(config, "weight_bits", 2, integer=True)
    threshold = config.sign_threshold
    if threshold is not None:
        if _number(config, "sign_threshold") < 0:
            raise _bad("sign_threshold", threshold, "None or a number >= 0")
        if config.shift_kind != "ps":
            raise _bad("sign_threshold", threshold, "None with shift_kind='q'")
    _at_least(config, "shift_quant_bits", 0, integer=True)
    _bool(config, "shift_frozen")
    if config.shift_frozen:
        if config.layer not in ("shift", "shiftadd"):
            raise _bad("shift_frozen", True, f"False with layer={config.layer!r} (no shift layers)")
        if config.shift_kind != "ps":
            raise _bad("shift_frozen", True, "False with shift_kind='q' (frozen layers are PS)")
        if config.shift_quant_bits < 2:
            raise _bad("shift_quant_bits", config.shift_quant_bits, "2 or more with shift_frozen")


def _check_run(config: ml_collections.ConfigDict, device_count: int, *, batch_keys) -> None:
    """What `train.loop` and the data loaders read, shared by every task."""
    _at_least(config, "num_epochs", 1, integer=True)
    for key in batch_keys:
        _at_least(config, key, 1, integer=True)
        if config[key] % device_count:
            raise _bad(key, config[key], f"a multiple of the device count {device_count}")
    for key in ("eval_every_epochs", "checkpoint_every_epochs", "log_every_steps"):
        _at_least(config, key, 1, integer=True)
    _at_least(config, "keep_checkpoints", 1, integer=True)
    _at_least(config, "checkpoint_every_steps", 0, integer=True)
    _bool(config, "skip_nonfinite")
    _at_least(config, "worker_count", 0, integer=True)
    _at_least(config, "fsdp_size", 1, integer=True)
    if device_count % config.fsdp_size:
        raise _bad("fsdp_size", config.fsdp_size, f"a divisor of the device count {device_count}")
    _number(config, "num_train_steps", integer=True)
    seed = _number(config, "seed", integer=True)
    if not 0 <= seed < 2**32:
        raise _bad("seed", seed, "an integer in [0, 2**32)")
    _bool(config, "progress_bar")
    if config.data_dir is not None and not isinstance(config.data_dir, str):
        raise _bad("data_dir", config.data_dir, "a directory path or None")


def validate_sr(config: ml_collections.ConfigDict, *, device_count: int) -> None:
    """`validate` for a super-resolution config (`train/configs/sr.py`)."""
    missing = sorted(set(sr_config.get_config().keys()) - set(config.keys()))
    if missing:
        raise ConfigError(
            f"config is missing {', '.join(missing)}: start a config file from train/configs/sr.py"
        )
    _one_of(config, "model", sorted(sr_models.SR_MODELS))
    _one_of(config, "scale", sr_models.SCALES)
    _one_of(config, "layer", sr_models.SR_LAYERS)
    _check_layers(config)
    for key in ("self_shortcut", "power_activation", "augment"):
        _bool(config, key)
    _at_least(config, "features", 1, integer=True)
    _at_least(config, "num_blocks", 1, integer=True)
    _at_least(config, "depth", 3, integer=True)
    for key in ("res_scale", "rgb_range"):
        if key == "res_scale" and config[key] is None:
            continue  # the model's default
        if not _number(config, key) > 0:
            raise _bad(key, config[key], "a number > 0")
    _check_run(config, device_count, batch_keys=("batch_size",))
    for key in ("train_data", "eval_data"):
        if not isinstance(config[key], str) or not config[key].strip(","):
            raise _bad(
                key, config[key], "comma-separated image folders or tfds:NAME (e.g. tfds:div2k)"
            )
    _at_least(config, "patch_size", 4, integer=True)
    _at_least(config, "repeat", 1, integer=True)
    _at_least(config, "lr_decay_epochs", 1, integer=True)
    if not _number(config, "learning_rate") > 0:
        raise _bad("learning_rate", config.learning_rate, "a number > 0")
    for key in ("b1", "b2"):
        if not 0 <= _number(config, key) < 1:
            raise _bad(key, config[key], "a number in [0, 1)")
    if not _number(config, "eps") > 0:
        raise _bad("eps", config.eps, "a number > 0")


def _check_distillation(config: ml_collections.ConfigDict) -> None:
    _one_of(config, "distill", DISTILL_MODES)
    _one_of(config, "distill_features", distill.FEATURES)
    if not isinstance(config.distill_layers, str):
        raise _bad("distill_layers", config.distill_layers, "comma-separated layer paths")
    for key in ("kd_weight", "feature_weight"):
        _at_least(config, key, 0)
    for key in ("kd_temperature", "sigma_a", "sigma_c"):
        if not _number(config, key) > 0:
            raise _bad(key, config[key], "a number > 0")
    workdir = config.teacher_workdir
    if config.distill != "kd":
        if workdir is not None:
            raise _bad(
                "teacher_workdir", workdir, f"None unless distill='kd' (distill={config.distill!r})"
            )
        if config.distill == "none":
            return
    if config.layer != "adder":
        raise _bad(
            "layer",
            config.layer,
            f"'adder' with distill={config.distill!r} (the student is the AdderNet)",
        )
    if config.distill == "kd":
        if not isinstance(workdir, str):
            raise _bad(
                "teacher_workdir", workdir, "the workdir of a finished CNN run with distill='kd'"
            )
        if not (pathlib.Path(workdir) / "checkpoints").is_dir():
            raise _bad(
                "teacher_workdir",
                workdir,
                "the workdir of a finished CNN run (it has no checkpoints/)",
            )
