"""The learning-rate and l_p schedules of the training programs, as functions of the step.

Both are plain functions of (config, step): a resumed run gets the same values as an
uninterrupted one, and p reaches the jitted step as an argument (one compilation for all p).
"""

from __future__ import annotations

import ml_collections
import optax


def step_epochs(config: ml_collections.ConfigDict) -> list[int]:
    """The epochs of ``lr_step_epochs`` ("80,120" -> [80, 120]; "" -> [])."""
    return [int(e) for e in config.get("lr_step_epochs", "").split(",") if e.strip()]


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup for `warmup_epochs`, then cosine decay to 0 at the last step, or with
    ``lr_schedule="step"`` the rate times ``lr_step_factor`` from each of ``lr_step_epochs``
    on (PyTorch's MultiStepLR, as ShiftAddNet's recipe)."""
    total = config.num_epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.get("lr_schedule", "cosine") == "step":
        factor = config.lr_step_factor
        boundaries = {
            (e - config.warmup_epochs) * steps_per_epoch: factor for e in step_epochs(config)
        }
        decay = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
    else:
        decay = optax.cosine_decay_schedule(config.learning_rate, max(total - warmup, 1))
    cosine = decay
    if warmup == 0:
        return cosine
    ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
    return optax.join_schedules([ramp, cosine], [warmup])


def p_at_epoch(config: ml_collections.ConfigDict, epoch: int) -> float:
    """The l_p exponent for a (0-based) epoch: linear from p_init to p_final over
    p_decay_epochs, then p_final (the journal AdderNet; p = 1 throughout is the CVPR one)."""
    if config.p_decay_epochs <= 0 or epoch >= config.p_decay_epochs:
        return float(config.p_final)
    frac = epoch / config.p_decay_epochs
    return float(config.p_init + (config.p_final - config.p_init) * frac)


def p_at_step(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> float:
    """p for the epoch that `step` (0-based) belongs to: p changes once per epoch."""
    return p_at_epoch(config, step // steps_per_epoch)
