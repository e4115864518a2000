"""From a config to a model and its train state: the one step every program shares.

Training, `train.eval`, `train.analyze`, `train.saved_models` and `train.convert_torch` all
build the model, the optimizer and the (abstract, sharded) train state of a config here, so
a checkpoint written by one restores in every other.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax.training import train_state
from jax.sharding import Mesh

from adderjax import models, optim, shift
from train import schedules, sharding
from train.data import sources

__all__ = [
    "AdderOptions",
    "ModelState",
    "TrainState",
    "build",
    "create_model",
    "create_train_state",
    "finiteness",
    "image_shape",
    "keep_if_finite",
    "make_optimizer",
    "named_leaves",
    "param_names",
    "place",
    "shift_options",
]


class TrainState(train_state.TrainState):
    batch_stats: Any


@dataclasses.dataclass(frozen=True)
class AdderOptions:
    """The adder layers' options of a config, one value for every task's models
    (`adderjax.models`, `adderjax.sr_models`); `config_checks` checks the same keys."""

    layer: str
    dtype: Any
    input_grad: str
    filter_grad: str
    implementation: str | None
    interpret: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> AdderOptions:
        return cls(
            layer=config.layer,
            dtype=jnp.dtype(config.dtype),
            input_grad=config.input_grad,
            filter_grad=config.filter_grad,
            implementation=config.implementation,
            interpret=config.interpret,
        )

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of a model's constructor."""
        return dataclasses.asdict(self)


def shift_options(config: ml_collections.ConfigDict) -> shift.ShiftOptions:
    """The shift layers' options of a classification config (its ``shift_*`` keys)."""
    return shift.ShiftOptions(
        kind=config.shift_kind,
        weight_bits=config.weight_bits,
        sign_threshold=config.sign_threshold,
        quant_bits=config.shift_quant_bits,
        frozen=config.shift_frozen,
    )


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    return models.get_model(
        config.model,
        num_classes=num_classes,
        shift_options=shift_options(config),
        **AdderOptions.from_config(config).kwargs(),
    )


def named_leaves(tree) -> dict[str, Any]:
    """{"layer/kernel": leaf} of a parameter (or any) tree, in the order of
    `jax.tree.leaves` (the order of a step's per-leaf metrics)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def param_names(params) -> list[str]:
    """Parameter paths ("layer/kernel") in the order of `jax.tree.leaves` of the params."""
    return list(named_leaves(params))


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The reference optimizer (`adderjax.optim.adder_sgd`), or plain SGD with the same
    momentum and weight decay when `adaptive_lr` is off (the paper's ablation)."""
    lr = schedules.learning_rate(config, steps_per_epoch)
    if config.adaptive_lr:
        return optim.adder_sgd(
            lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            eta=config.eta,
        )
    return optax.chain(
        optim.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov),
    )


def image_shape(config: ml_collections.ConfigDict, info: sources.DatasetInfo):
    """(H, W, C) of the model's input: the dataset's, or image_size for ImageNet."""
    return info.image_shape or (config.image_size, config.image_size, 3)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    shape: tuple[int, int, int],
    tx: optax.GradientTransformation,
) -> TrainState:
    variables = model.init(rng, jnp.zeros((1, *shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )


class ModelState(NamedTuple):
    """What `build` returns.

    Attributes:
      model: the Flax model of the config.
      tx: its optimizer.
      shape: the (H, W, C) of its input.
      init: rng -> a fresh `TrainState` (jitted onto `shardings` when a mesh was given).
      abstract: the state's structure, shapes and dtypes (and shardings), for restoring.
      shardings: the state's shardings, or None without a mesh.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    shape: tuple[int, int, int]
    init: Callable[[jax.Array], TrainState]
    abstract: Any
    shardings: Any


def build(
    config: ml_collections.ConfigDict,
    info: sources.DatasetInfo,
    *,
    steps_per_epoch: int = 1,
    mesh: Mesh | None = None,
) -> ModelState:
    """The model, optimizer and train state of `config`, nothing computed yet.

    `steps_per_epoch` only shapes the learning-rate schedule (not the state's structure), so
    the default 1 is right for everything but training. With a `mesh` the state is
    replicated, or split over its "fsdp" axis (`train.sharding.state_shardings`).
    """
    model = create_model(config, info.num_classes)
    tx = make_optimizer(config, steps_per_epoch)
    shape = image_shape(config, info)
    init = functools.partial(create_train_state, model=model, shape=shape, tx=tx)
    return ModelState(model, tx, shape, *place(init, mesh))


def place(init: Callable[[jax.Array], Any], mesh: Mesh | None):
    """(init, abstract state, shardings) of a state made by ``init(rng)``: with a mesh,
    ``init`` jitted to lay the state out as `train.sharding.state_shardings` and the
    abstract state carrying those shardings; without one, as they are and None."""
    abstract = jax.eval_shape(init, jax.random.key(0))
    if mesh is None:
        return init, abstract, None
    shardings = sharding.state_shardings(abstract, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return jax.jit(init, out_shardings=shardings), abstract, shardings


def finiteness(losses, grads) -> tuple[jax.Array, jax.Array]:
    """(whether every loss and gradient is finite, one bool per gradient leaf): what a
    task's step reports as "finite" and "grad_finite" for `train.loop`."""
    grad_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    finite = jnp.all(grad_finite)
    for loss in losses:
        finite = finite & jnp.all(jnp.isfinite(loss))
    return finite, grad_finite


def keep_if_finite(new_state: TrainState, state: TrainState, finite) -> TrainState:
    """`new_state` after a finite step; otherwise `state` with its step count advanced
    (``skip_nonfinite``: the step is skipped, not repeated)."""
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    return kept.replace(step=state.step + 1)
