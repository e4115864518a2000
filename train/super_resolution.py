"""The super-resolution task: its model and state, its L1 train step, its PSNR/SSIM evaluation.

`train.sr` composes it with the shared loop (`train.loop`), mesh (`train.sharding`) and
checkpoints (`train.checkpointing`); `train.upscale` uses `load` and `super_resolve`.

* The state is `train.model_state.TrainState` (params, BN statistics of the adder layers,
  Adam's moments), built as every task's (`model_state.place`).
* A step: the L1 distance between the network's output and the HR patch, in [0, 255]
  units (EDSR's loss), one Adam step.
* The evaluation super-resolves each test image whole (the network is fully
  convolutional), rounds it to uint8 and scores it by the protocol of `train.sr_metrics`:
  PSNR and SSIM on the Y channel with ``scale`` border pixels cropped, bicubic beside it.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from adderjax import sr_models
from train import checkpointing, config_checks, model_state, saved_models, sharding, sr_metrics
from train.configs import sr as sr_config
from train.model_state import TrainState

__all__ = [
    "BEST_METRIC",
    "RESUME_KEYS",
    "bicubic_scores",
    "build",
    "create_model",
    "describe",
    "evaluate",
    "jit_predict",
    "jit_train_step",
    "load",
    "make_optimizer",
    "score",
    "super_resolve",
    "train_step",
]

# The evaluation metric that ranks checkpoints: the first evaluation set's PSNR.
BEST_METRIC = "psnr"
# What a checkpoint must share with the config that resumes it (the network's structure).
RESUME_KEYS = (
    "model",
    "scale",
    "layer",
    "self_shortcut",
    "power_activation",
    "features",
    "num_blocks",
    "depth",
    "dtype",
    "rgb_range",
    "res_scale",
)


def create_model(config: ml_collections.ConfigDict):
    kwargs = dict(
        scale=config.scale,
        features=config.features,
        self_shortcut=config.self_shortcut,
        power_activation=config.power_activation,
        **model_state.AdderOptions.from_config(config).kwargs(),
    )
    if config.model == "edsr":
        kwargs.update(
            num_blocks=config.num_blocks, res_scale=config.res_scale, rgb_range=config.rgb_range
        )
    else:
        kwargs.update(depth=config.depth)
    return sr_models.get_sr_model(config.model, **kwargs)


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """EDSR's schedule: `learning_rate` halved every `lr_decay_epochs` epochs."""
    return optax.exponential_decay(
        config.learning_rate,
        transition_steps=config.lr_decay_epochs * steps_per_epoch,
        decay_rate=0.5,
        staircase=True,
    )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    return optax.adam(
        learning_rate(config, steps_per_epoch), b1=config.b1, b2=config.b2, eps=config.eps
    )


def build(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int = 1, mesh: Mesh | None = None
) -> model_state.ModelState:
    """The SR model, Adam and the train state of `config`, nothing computed yet (as
    `train.model_state.build`)."""
    model = create_model(config)
    tx = make_optimizer(config, steps_per_epoch)
    shape = (config.patch_size, config.patch_size, 3)
    init = functools.partial(model_state.create_train_state, model=model, shape=shape, tx=tx)
    return model_state.ModelState(model, tx, shape, *model_state.place(init, mesh))


def _variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def train_step(state: TrainState, batch, p, *, lr_fn: Callable, skip_nonfinite: bool = False):
    """One Adam step on the L1 loss of a global batch {"lr", "hr"} (uint8); `p` is unused
    (the adder layers stay at p = 1), there for the shared step signature."""
    del p
    lr_images = batch["lr"].astype(jnp.float32)
    hr_images = batch["hr"].astype(jnp.float32)

    def loss_fn(params):
        sr, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            lr_images,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(jnp.abs(sr - hr_images)), (sr, updates)

    (loss, (sr, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    finite, grad_finite = model_state.finiteness([loss], grads)
    if skip_nonfinite:
        new_state = model_state.keep_if_finite(new_state, state, finite)
    mse = jnp.mean((jnp.clip(sr, 0, 255) - hr_images) ** 2)
    metrics = {
        "loss": loss,
        # RGB, whole patches, unrounded: a training signal, not the protocol's number.
        "psnr": 10 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10)),
        "learning_rate": lr_fn(state.step),
        "finite": finite,
        "grad_finite": grad_finite,
    }
    return new_state, metrics


def jit_train_step(config, state_shardings, mesh: Mesh, *, lr_fn: Callable) -> Callable:
    """`train_step` jitted over `mesh`: (state, global batch, p) -> (state, metrics)."""
    step = functools.partial(train_step, lr_fn=lr_fn, skip_nonfinite=config.skip_nonfinite)
    return sharding.jit_train_step(step, state_shardings, mesh)


def jit_predict(model) -> Callable:
    """(variables, uint8 or float LR images (N, h, w, 3)) -> float SR images, jitted (one
    compilation per image size)."""
    return jax.jit(
        lambda variables, lr: model.apply(variables, jnp.asarray(lr, jnp.float32), train=False)
    )


def super_resolve(predict: Callable, variables, lr_image: np.ndarray) -> np.ndarray:
    """One uint8 (h, w, 3) image super-resolved whole, rounded to uint8."""
    return sr_metrics.quantize(jax.device_get(predict(variables, lr_image[None]))[0])


def score(images: Sequence[np.ndarray], references: Sequence[np.ndarray], scale: int):
    """(mean PSNR, mean SSIM) of uint8 images against their HR references (Y channel,
    `scale` border pixels cropped)."""
    pairs = list(zip(references, images, strict=True))
    psnrs = [sr_metrics.psnr(r, x, crop_border=scale) for r, x in pairs]
    ssims = [sr_metrics.ssim(r, x, crop_border=scale) for r, x in pairs]
    return float(np.mean(psnrs)), float(np.mean(ssims))


def bicubic_scores(sets, scale: int) -> dict[str, float]:
    """Bicubic upsampling's "{set}_bicubic_psnr" and "{set}_bicubic_ssim"."""
    out = {}
    for s in sets:
        out[f"{s.name}_bicubic_psnr"], out[f"{s.name}_bicubic_ssim"] = score(s.bicubic, s.hr, scale)
    return out


def evaluate(predict: Callable, state: TrainState, sets, scale: int, bicubic: dict):
    """PSNR and SSIM per evaluation set ("{set}_psnr", "{set}_ssim"), bicubic's beside them
    (`bicubic`, from `bicubic_scores`), and the first set's as "psnr" and "ssim"."""
    variables = _variables(state)
    out = {}
    for s in sets:
        sr = [super_resolve(predict, variables, lr) for lr in s.lr]
        out[f"{s.name}_psnr"], out[f"{s.name}_ssim"] = score(sr, s.hr, scale)
    first = sets[0].name
    return {"psnr": out[f"{first}_psnr"], "ssim": out[f"{first}_ssim"], **out, **bicubic}


def describe(result: dict[str, float]) -> str:
    """An evaluation in one line: each set's PSNR / SSIM, and bicubic's."""
    names = [k[: -len("_bicubic_psnr")] for k in result if k.endswith("_bicubic_psnr")]
    parts = [
        f"{n} {result[f'{n}_psnr']:.2f} dB / {result[f'{n}_ssim']:.4f} "
        f"(bicubic {result[f'{n}_bicubic_psnr']:.2f} / {result[f'{n}_bicubic_ssim']:.4f})"
        for n in names
    ]
    return "; ".join(parts)


def load(workdir: str | pathlib.Path, *, step: int | None = None):
    """(model, variables, config, step) of an SR run's checkpoint (the newest by default).

    Raises:
      config_checks.ConfigError: the workdir has no checkpoint (or not that step), or is not
        a super-resolution run's.
    """
    with saved_models.open_checkpoint(workdir, step=step) as (mngr, step):
        meta = checkpointing.read_meta(mngr, step)
        if "scale" not in meta["config"]:
            raise config_checks.ConfigError(
                f"the checkpoints in {mngr.directory} are not of a super-resolution run"
            )
        config = checkpointing.config_from_meta(meta, sr_config.get_config())
        built = build(config)
        state, _ = checkpointing.restore(mngr, step, built.abstract)
    return built.model, _variables(state), config, step
