"""The distillation task: an AdderNet student learning from a CNN teacher of the same network.

``--config.distill=pkkd`` trains both from scratch in one jitted step (PKKD's progressive
teacher, at the same stage of training as its student); ``--config.distill=kd`` distils from
a finished CNN (``--config.teacher_workdir``), frozen. The student's loss is

    cross-entropy + kd_weight * KD(logits, T) + feature_weight * mean_l ||A_l k_s,l - k_t,l||^2

over the distilled layers l (`adderjax.models.STAGE_OUTPUTS` by default) with the maps k of
``distill_features`` ("kernel": `adderjax.distill`'s Laplacian and Gaussian kernel maps;
"plain": the layers' standardised outputs; "none": logits only) and A_l a 1x1 alignment
trained with the student and used only in training. The teacher learns from the labels
alone. State, checkpoints and exact resume hold all three (`DistillState`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct, traverse_util
from flax.training import train_state
from jax.sharding import Mesh

from adderjax import distill, models
from train import classification, config_checks, model_state, schedules
from train.data import sources
from train.model_state import TrainState

__all__ = [
    "NETWORKS",
    "DistillState",
    "Settings",
    "build",
    "check_teacher",
    "describe",
    "enabled",
    "eval_step",
    "evaluate",
    "jit_eval_step",
    "jit_train_step",
    "layer_paths",
    "network",
    "nested_result",
    "param_names",
    "teacher_config",
    "train_step",
    "with_teacher",
]

NETWORKS = ("student", "teacher")


@struct.dataclass
class DistillState:
    """Student, teacher and the alignments of the distilled layers, trained as one state."""

    student: TrainState
    teacher: TrainState
    align: train_state.TrainState


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` distils (configs older than distillation do not)."""
    return config.get("distill", "none") != "none"


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's config: the student's with ``layer="conv"`` (the CNN of its network)."""
    teacher = ml_collections.ConfigDict(config.to_dict())
    teacher.layer = "conv"
    return teacher


def layer_paths(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The distilled layers: ``distill_layers`` (comma-separated), else the model's stage
    outputs; none when ``distill_features`` is "none"."""
    if config.distill_features == "none":
        return ()
    given = tuple(p.strip() for p in config.distill_layers.split(",") if p.strip())
    return given or models.STAGE_OUTPUTS.get(config.model, ())


@dataclasses.dataclass(frozen=True)
class Settings:
    """The loss's settings, read from a config."""

    progressive: bool
    features: str
    layers: tuple[str, ...]
    kd_weight: float
    temperature: float
    feature_weight: float
    sigma_a: float
    sigma_c: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Settings:
        return cls(
            progressive=config.distill == "pkkd",
            features=config.distill_features,
            layers=layer_paths(config),
            kd_weight=float(config.kd_weight),
            temperature=float(config.kd_temperature),
            feature_weight=float(config.feature_weight),
            sigma_a=float(config.sigma_a),
            sigma_c=float(config.sigma_c),
        )


def _layer_channels(config, student_params, teacher_params) -> dict[str, int]:
    """Output channels of each distilled layer, checked to be a layer in both networks."""
    flat_s = traverse_util.flatten_dict(student_params, sep="/")
    flat_t = traverse_util.flatten_dict(teacher_params, sep="/")
    layers = {
        "/".join(k.split("/")[:-1]) for k in flat_s if k.rsplit("/", 1)[-1] in ("adder", "kernel")
    }
    channels = {}
    for path in layer_paths(config):
        name = next((f"{path}/{n}" for n in ("adder", "kernel") if f"{path}/{n}" in flat_s), None)
        if name is None or f"{path}/kernel" not in flat_t:
            raise config_checks.ConfigError(
                f"config.distill_layers: {config.model} has no conv, dense or adder layer "
                f"{path!r} (its layers: {', '.join(sorted(layers))})"
            )
        channels[path] = int(flat_s[name].shape[-1])
    return channels


def _align_state(channels: dict[str, int], tx) -> train_state.TrainState:
    params = traverse_util.unflatten_dict(
        {k: distill.identity_alignment(c) for k, c in channels.items()}, sep="/"
    )
    return train_state.TrainState.create(apply_fn=None, params=params, tx=tx)


def build(
    config: ml_collections.ConfigDict,
    info: sources.DatasetInfo,
    *,
    steps_per_epoch: int = 1,
    mesh: Mesh | None = None,
) -> model_state.ModelState:
    """`train.model_state.build` for a distilling config: the state is a `DistillState`.

    ``model`` and ``tx`` are the student's; the alignments get SGD with the student's
    learning-rate schedule and momentum, without weight decay. The teacher is initialised
    randomly (`with_teacher` puts a finished one in for ``distill="kd"``).

    Raises:
      config_checks.ConfigError: a distilled layer that is not a conv, dense or adder layer
        of the model.
    """
    student = model_state.build(config, info, steps_per_epoch=steps_per_epoch)
    teacher = model_state.build(teacher_config(config), info, steps_per_epoch=steps_per_epoch)
    channels = _layer_channels(config, student.abstract.params, teacher.abstract.params)
    align_tx = optax.sgd(
        schedules.learning_rate(config, steps_per_epoch), momentum=config.momentum or None
    )

    def init(rng: jax.Array) -> DistillState:
        rs, rt = jax.random.split(rng)
        return DistillState(
            student=student.init(rs),
            teacher=teacher.init(rt),
            align=_align_state(channels, align_tx),
        )

    placed = model_state.place(init, mesh)
    return model_state.ModelState(student.model, student.tx, student.shape, *placed)


def check_teacher(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
    """Refuses a finished run (of config ``saved``) as ``config``'s teacher unless it is the
    CNN of the student's model and dataset.

    Raises:
      config_checks.ConfigError: naming the key that differs.
    """
    for key, want in (("model", config.model), ("dataset", config.dataset), ("layer", "conv")):
        if saved.get(key) != want:
            raise config_checks.ConfigError(
                f"config.teacher_workdir={config.teacher_workdir}: the teacher must be the "
                f"CNN (layer='conv') of model {config.model!r} on {config.dataset!r}; that run "
                f"has {key}={saved.get(key)!r}"
            )


def with_teacher(state: DistillState, variables: dict, shardings=None) -> DistillState:
    """`state` with a finished CNN's ``variables`` (params, batch_stats) as its teacher
    (``distill="kd"``; `check_teacher` first), laid out as ``shardings.teacher``."""
    teacher = state.teacher.replace(
        params=variables["params"], batch_stats=variables["batch_stats"]
    )
    if shardings is not None:
        teacher = jax.device_put(teacher, shardings.teacher)
    return state.replace(teacher=teacher)


def network(state: DistillState | TrainState, which: str = "student") -> TrainState:
    """The student's or the teacher's train state (a plain `TrainState` is the student)."""
    if which not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {which!r}")
    if isinstance(state, DistillState):
        return getattr(state, which)
    if which == "teacher":
        raise ValueError("network='teacher': this checkpoint has no teacher (it did not distil)")
    return state


def param_names(abstract: DistillState, settings: Settings) -> list[str]:
    """A name per "grad_finite" entry of `train_step`'s metrics."""
    names = model_state.param_names
    out = [f"student/{n}" for n in names(abstract.student.params)]
    out += [f"align/{n}" for n in names(abstract.align.params)]
    if settings.progressive:
        out += [f"teacher/{n}" for n in names(abstract.teacher.params)]
    return out


def _maps(taps, settings: Settings, layers) -> dict[str, jax.Array]:
    return {
        k: distill.feature_map(
            taps[k], settings.features, sigma_a=settings.sigma_a, sigma_c=settings.sigma_c
        )
        for k in layers
    }


def _teacher_forward(teacher: TrainState, images, targets, settings: Settings):
    """(new teacher, loss, logits, maps, grads or None): a training step of a progressive
    teacher (labels only), or a frozen teacher's eval-mode forward."""

    def loss_fn(params):
        with distill.capture(settings.layers) as taps:
            logits, updates = teacher.apply_fn(
                {"params": params, "batch_stats": teacher.batch_stats},
                images,
                train=settings.progressive,
                mutable=["batch_stats"],
            )
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates, _maps(taps, settings, settings.layers))

    if not settings.progressive:
        loss, (logits, _, maps) = loss_fn(teacher.params)
        return teacher, loss, logits, maps, None
    (loss, (logits, updates, maps)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        teacher.params
    )
    new = teacher.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    return new, loss, logits, maps, grads


def train_step(
    state: DistillState,
    batch,
    p,
    *,
    info,
    settings: Settings,
    label_smoothing: float,
    lr_fn,
    skip_nonfinite=False,
):
    """One step of student, alignments and (progressive) teacher on a global batch.

    Metrics: the student's total "loss" and its "ce", "kd" and "feature" parts, its "top1",
    the teacher's "teacher_loss" and "teacher_top1", and the finiteness flags of
    `train.classification.train_step` over every gradient.
    """
    images = classification.normalize(batch["image"], info)
    labels = batch["label"]
    num_classes = info.num_classes
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    teacher, t_loss, t_logits, t_maps, t_grads = _teacher_forward(
        state.teacher, images, targets, settings
    )
    student = state.student

    def loss_fn(trainable):
        params, align = trainable
        with distill.capture(settings.layers) as taps:
            logits, updates = student.apply_fn(
                {"params": params, "batch_stats": student.batch_stats},
                images,
                train=True,
                p=p,
                mutable=["batch_stats"],
            )
        ce = optax.softmax_cross_entropy(logits, targets).mean()
        kd = distill.kd_loss(logits, t_logits, temperature=settings.temperature)
        flat_align = traverse_util.flatten_dict(align, sep="/")
        s_maps = _maps(taps, settings, settings.layers)
        per_layer = [
            distill.feature_loss(distill.align(s_maps[k], flat_align[k]), t_maps[k])
            for k in settings.layers
        ]
        feature = jnp.mean(jnp.stack(per_layer)) if per_layer else jnp.zeros(())
        loss = ce + settings.kd_weight * kd + settings.feature_weight * feature
        return loss, (logits, updates, {"ce": ce, "kd": kd, "feature": feature})

    (loss, (logits, updates, parts)), (s_grads, a_grads) = jax.value_and_grad(
        loss_fn, has_aux=True
    )((student.params, state.align.params))
    new_state = DistillState(
        student=student.apply_gradients(grads=s_grads, batch_stats=updates["batch_stats"]),
        teacher=teacher,
        align=state.align.apply_gradients(grads=a_grads),
    )
    grads = [s_grads, a_grads] + ([t_grads] if t_grads is not None else [])
    finite, grad_finite = model_state.finiteness([loss, t_loss], grads)
    if skip_nonfinite:
        keep = model_state.keep_if_finite
        new_state = DistillState(
            student=keep(new_state.student, state.student, finite),
            # A progressive teacher's step counts its updates; a frozen one's stays.
            teacher=keep(new_state.teacher, state.teacher, finite).replace(
                step=new_state.teacher.step
            ),
            align=keep(new_state.align, state.align, finite),
        )
    metrics = {
        "loss": loss,
        **parts,
        "top1": classification.topk_correct(logits, labels, 1).mean(),
        "teacher_loss": t_loss,
        "teacher_top1": classification.topk_correct(t_logits, labels, 1).mean(),
        "learning_rate": lr_fn(state.student.step),
        "p": jnp.asarray(p, jnp.float32),
        "finite": finite,
        "grad_finite": grad_finite,
    }
    return new_state, metrics


def eval_step(state: DistillState, batch, p, *, info):
    """`train.classification.eval_step`'s sums for the student, and the teacher's prefixed
    "teacher_"."""
    student = classification.eval_step(state.student, batch, p, info=info)
    teacher = classification.eval_step(state.teacher, batch, p, info=info)
    return {**student, **{f"teacher_{k}": v for k, v in teacher.items() if k != "count"}}


def jit_train_step(config, info, state_shardings, mesh: Mesh, *, lr_fn: Callable) -> Callable:
    """`train_step` jitted over `mesh`, as `train.classification.jit_train_step`."""
    step = functools.partial(train_step, settings=Settings.from_config(config))
    return classification.jit_train_step(
        config, info, state_shardings, mesh, lr_fn=lr_fn, step=step
    )


def jit_eval_step(info, state_shardings, mesh: Mesh) -> Callable:
    """`eval_step` jitted over `mesh`: (state, global batch, p) -> replicated sums."""
    return classification.jit_eval_step(info, state_shardings, mesh, step=eval_step)


evaluate = classification.evaluate


def describe(result: dict[str, float]) -> str:
    """An evaluation of student and teacher in one line."""
    return (
        f"{classification.describe(result)} | teacher top-1 {result['teacher_top1']:.4f} "
        f"top-5 {result['teacher_top5']:.4f}"
    )


def nested_result(result: dict) -> dict:
    """The student's metrics at the top, the teacher's under "teacher" (results.json)."""
    out = {k: v for k, v in result.items() if not k.startswith("teacher_")}
    out["teacher"] = {
        k[len("teacher_") :]: v for k, v in result.items() if k.startswith("teacher_")
    }
    return out
