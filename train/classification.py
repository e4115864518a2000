"""The image-classification task: its loss, its train and eval steps, and its evaluation.

Steps are pure functions of (state, global batch, p), jitted over the mesh by
`jit_train_step` and `jit_eval_step`; `train.tasks.classification` hands them to the loop
(`train.loop`), `train.eval` uses the eval step alone.
The l_p exponent p enters as an argument, so every p of a schedule shares one compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from adderjax import shift
from train import model_state, sharding
from train.data import sources
from train.model_state import TrainState

__all__ = [
    "describe",
    "eval_step",
    "evaluate",
    "jit_eval_step",
    "jit_train_step",
    "loss_and_grads",
    "normalize",
    "topk_correct",
    "train_step",
]


def normalize(images, info: sources.DatasetInfo) -> jax.Array:
    """uint8 (N, H, W, C) images as the model sees them: ``(x / 255 - mean) / std``."""
    # Per-channel statistics broadcast over (N, H, W, C) explicitly (rank promotion is an
    # error in the tests).
    mean = np.asarray(info.mean, np.float32).reshape(1, 1, 1, -1) * 255
    std = np.asarray(info.std, np.float32).reshape(1, 1, 1, -1) * 255
    return (jnp.asarray(images).astype(jnp.float32) - mean) / std


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k largest logits of its row, else 0.0."""
    k = min(k, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def loss_and_grads(state: TrainState, batch, p, *, info, label_smoothing: float = 0.0, rngs=None):
    """The training loss of a batch in train mode and its gradients with respect to the params;
    ``rngs`` (e.g. ``{"shift": key}``, the shift layers' gradient quantisation) go to the
    model.

    Returns (loss, logits, batch_stats updates, grads).
    """
    images = normalize(batch["image"], info)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            p=p,
            mutable=["batch_stats"],
            rngs=rngs,
        )
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, logits, updates, grads


def train_step(
    state: TrainState,
    batch,
    p,
    *,
    info,
    label_smoothing: float,
    lr_fn,
    skip_nonfinite=False,
    shift_options: shift.ShiftOptions | None = None,
    seed: int = 0,
):
    """One SGD step on a global batch; returns the new state and the batch's metrics.

    The metrics say whether the loss and every gradient leaf were finite ("finite",
    "grad_finite", which `train.loop` checks); with `skip_nonfinite` a step that was not
    leaves the state as it was (but for the step count).

    Shift layers (`adderjax.shift`) quantise their output gradients with the key
    ``fold_in(key(seed), step)``, one per step, so a resumed run draws what an uninterrupted
    one does; after the update their latents are projected back into range
    (`adderjax.shift.project_latents` with ``shift_options``), as their in-place clips do.
    """
    labels = batch["label"]
    rngs = {"shift": jax.random.fold_in(jax.random.key(seed), state.step)}
    loss, logits, updates, grads = loss_and_grads(
        state, batch, p, info=info, label_smoothing=label_smoothing, rngs=rngs
    )
    new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    if shift_options is not None:
        new_state = new_state.replace(
            params=shift.project_latents(
                new_state.params,
                weight_bits=shift_options.weight_bits,
                sign_threshold=shift_options.sign_threshold,
            )
        )
    finite, grad_finite = model_state.finiteness([loss], grads)
    if skip_nonfinite:
        new_state = model_state.keep_if_finite(new_state, state, finite)
    metrics = {
        "loss": loss,
        "top1": topk_correct(logits, labels, 1).mean(),
        "learning_rate": lr_fn(state.step),
        "p": jnp.asarray(p, jnp.float32),
        "finite": finite,
        "grad_finite": grad_finite,
    }
    return new_state, metrics


def eval_step(state: TrainState, batch, p, *, info):
    """Sums over the valid rows of one batch: loss, top-1 and top-5 hits, count."""
    images = normalize(batch["image"], info)
    labels, mask = batch["label"], batch["mask"]
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False, p=p
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": (loss * mask).sum(),
        "top1": (topk_correct(logits, labels, 1) * mask).sum(),
        "top5": (topk_correct(logits, labels, 5) * mask).sum(),
        "count": mask.sum(),
    }


def jit_train_step(
    config, info, state_shardings, mesh: Mesh, *, lr_fn: Callable, step: Callable = None
) -> Callable:
    """`train_step` (or another task's `step` of the same arguments) jitted over `mesh`
    (`train.sharding.jit_train_step`): (state, global batch, p) -> (state, metrics).
    `lr_fn` (step -> learning rate) is only reported in the metrics."""
    if step is None:
        shifts = config.layer in ("shift", "shiftadd")
        options = model_state.shift_options(config) if shifts else None
        step = functools.partial(train_step, shift_options=options, seed=config.seed)
    step = functools.partial(
        step,
        info=info,
        label_smoothing=config.label_smoothing,
        lr_fn=lr_fn,
        skip_nonfinite=config.skip_nonfinite,
    )
    return sharding.jit_train_step(step, state_shardings, mesh)


def jit_eval_step(info, state_shardings, mesh: Mesh, *, step: Callable = None) -> Callable:
    """`eval_step` (or another task's `step`) jitted over `mesh`: (state, global batch, p) ->
    replicated sums."""
    step = functools.partial(step or eval_step, info=info)
    return sharding.jit_eval_step(step, state_shardings, mesh)


def evaluate(jitted_eval, state, batches: Iterable[dict], p, mesh: Mesh) -> dict[str, float]:
    """Every sum of the eval step (top-1, top-5, loss, ...) over every evaluation record,
    divided by the count of records (padding rows masked)."""
    batch_sharding = sharding.batch_sharding(mesh)
    totals = None
    for batch in batches:
        sums = jitted_eval(state, sharding.global_batch(batch, batch_sharding), p)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    means = {k: float(v) / count for k, v in totals.items() if k != "count"}
    return {**means, "count": int(totals["count"])}


def describe(result: dict[str, float]) -> str:
    """An evaluation in one line."""
    return f"top-1 {result['top1']:.4f} top-5 {result['top5']:.4f} loss {result['loss']:.4f}"
