"""The trainer behind every program: `train_and_evaluate(config, workdir)`.

A data-parallel step jitted over a device mesh ("data", "fsdp"): the global batch is
sharded over both axes, the train state replicated (or split over "fsdp"), so gradients and
BatchNorm statistics are those of the whole global batch on 1 or N devices. The l_p exponent
and the learning rate are functions of the step, p enters the step as an argument (one
compilation for every p), and each epoch ends with an evaluation (top-1 and top-5) and an
orbax checkpoint from which a restarted run resumes, data iterator included.
"""

from __future__ import annotations

import functools
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adderjax import models, optim
from train import (
    checkpointing,
    config_checks,
    data_sources,
    input_pipeline,
    plots,
    reporting,
    schedules,
)

__all__ = [
    "TrainState",
    "create_model",
    "create_train_state",
    "eval_step",
    "evaluate",
    "make_optimizer",
    "train_and_evaluate",
    "train_step",
]


class TrainState(train_state.TrainState):
    batch_stats: Any


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    return models.get_model(
        config.model,
        num_classes=num_classes,
        adder=config.adder,
        dtype=jnp.dtype(config.dtype),
        input_grad=config.input_grad,
        filter_grad=config.filter_grad,
        implementation=config.implementation,
        interpret=config.interpret,
    )


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
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov),
    )


def image_shape(config: ml_collections.ConfigDict, info: data_sources.DatasetInfo):
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


def _normalize(images: jax.Array, info: data_sources.DatasetInfo) -> jax.Array:
    # Per-channel statistics broadcast over (N, H, W, C) explicitly (rank promotion is an
    # error in the tests).
    mean = np.asarray(info.mean, np.float32).reshape(1, 1, 1, -1) * 255
    std = np.asarray(info.std, np.float32).reshape(1, 1, 1, -1) * 255
    return (images.astype(jnp.float32) - mean) / std


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    k = min(k, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def loss_and_grads(state: TrainState, batch, p, *, info, label_smoothing: float = 0.0):
    """The training loss of a batch in train mode and its gradients with respect to the params.

    Returns (loss, logits, batch_stats updates, grads).
    """
    images = _normalize(batch["image"], info)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            p=p,
            mutable=["batch_stats"],
        )
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, logits, updates, grads


def train_step(
    state: TrainState, batch, p, *, info, label_smoothing: float, lr_fn, skip_nonfinite=False
):
    """One SGD step on a global batch; returns the new state and the batch's metrics.

    The metrics say whether the loss and every gradient leaf were finite; with
    `skip_nonfinite` a step that was not leaves the state as it was (but for the step count).
    """
    labels = batch["label"]
    loss, logits, updates, grads = loss_and_grads(
        state, batch, p, info=info, label_smoothing=label_smoothing
    )
    new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    grad_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    finite = jnp.isfinite(loss) & jnp.all(grad_finite)
    if skip_nonfinite:
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        new_state = new_state.replace(step=state.step + 1)
    metrics = {
        "loss": loss,
        "top1": _topk_correct(logits, labels, 1).mean(),
        "learning_rate": lr_fn(state.step),
        "p": jnp.asarray(p, jnp.float32),
        "finite": finite,
        "grad_finite": grad_finite,
    }
    return new_state, metrics


def eval_step(state: TrainState, batch, p, *, info):
    """Sums over the valid rows of one batch: loss, top-1 and top-5 hits, count."""
    images = _normalize(batch["image"], info)
    labels, mask = batch["label"], batch["mask"]
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False, p=p
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": (loss * mask).sum(),
        "top1": (_topk_correct(logits, labels, 1) * mask).sum(),
        "top5": (_topk_correct(logits, labels, 5) * mask).sum(),
        "count": mask.sum(),
    }


def _global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's rows of the global batch, as global arrays with the batch sharding."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate(jitted_eval, state, batches, p, sharding) -> dict[str, float]:
    """Top-1, top-5 and mean loss over every evaluation record (padding rows masked)."""
    totals = None
    for batch in batches:
        sums = jitted_eval(state, _global(batch, sharding), p)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {
        "top1": float(totals["top1"]) / count,
        "top5": float(totals["top5"]) / count,
        "loss": float(totals["loss"]) / count,
        "count": int(totals["count"]),
    }


def fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """Splits a state array over "fsdp" along its largest axis that divides by `size`
    (replicated when none does, or when size is 1)."""
    axes = [i for i, n in enumerate(shape) if size > 1 and n % size == 0]
    if not axes:
        return P()
    spec = [None] * len(shape)
    spec[max(axes, key=lambda i: shape[i])] = "fsdp"
    return P(*spec)


class _Run:
    """What one call of `train_and_evaluate` builds: mesh, data, model, jitted steps."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
        devices = jax.devices()
        config_checks.validate(config, device_count=len(devices))
        self.config = config
        self.workdir = workdir
        # Auto axes: XLA partitions the step from the shardings (GSPMD); the adder op's
        # Pallas path puts its kernels in a shard_map over the same mesh. "fsdp" (size 1
        # unless config.fsdp_size > 1) also splits the state, as fully sharded data
        # parallelism does; the batch is split over both axes.
        grid = np.asarray(devices).reshape(-1, config.fsdp_size)
        self.mesh = Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
        self.batch_sharding = NamedSharding(self.mesh, P(("data", "fsdp")))
        self.replicated = NamedSharding(self.mesh, P())
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

        self.train_source, self.info = data_sources.open_source(
            config.dataset, "train", data_format=config.data_format, data_dir=config.data_dir
        )
        self.eval_source, _ = data_sources.open_source(
            config.dataset, "test", data_format=config.data_format, data_dir=config.data_dir
        )
        self.steps_per_epoch = len(self.train_source) // config.batch_size
        if self.steps_per_epoch == 0:
            raise config_checks.ConfigError(
                f"config.batch_size={config.batch_size} is larger than the "
                f"{len(self.train_source)} training examples of {config.dataset!r}"
            )
        full = config.num_epochs * self.steps_per_epoch
        self.total_steps = min(config.num_train_steps, full) if config.num_train_steps > 0 else full

        self.model = create_model(config, self.info.num_classes)
        self.lr_fn = schedules.learning_rate(config, self.steps_per_epoch)
        self.tx = make_optimizer(config, self.steps_per_epoch)
        self.shape = image_shape(config, self.info)
        init = functools.partial(create_train_state, model=self.model, shape=self.shape, tx=self.tx)
        self.abstract_state = jax.eval_shape(init, jax.random.key(0))
        state_sharding = jax.tree.map(
            lambda a: NamedSharding(self.mesh, fsdp_spec(a.shape, config.fsdp_size)),
            self.abstract_state,
        )
        self.init_state = jax.jit(init, out_shardings=state_sharding)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            state_sharding,
        )
        self.train_step = jax.jit(
            functools.partial(
                train_step,
                info=self.info,
                label_smoothing=config.label_smoothing,
                lr_fn=self.lr_fn,
                skip_nonfinite=config.skip_nonfinite,
            ),
            in_shardings=(state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(state_sharding, self.replicated),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            functools.partial(eval_step, info=self.info),
            in_shardings=(state_sharding, self.batch_sharding, self.replicated),
            out_shardings=self.replicated,
        )

        per_host = functools.partial(
            input_pipeline.local_batch_size, process_count=self.process_count
        )
        common = dict(
            augment=config.augment,
            image_size=config.image_size,
            process_index=self.process_index,
            process_count=self.process_count,
            worker_count=config.worker_count,
        )
        self.loader = input_pipeline.train_loader(
            self.train_source, batch_size=per_host(config.batch_size), seed=config.seed, **common
        )
        self.eval_batches = input_pipeline.eval_batches(
            self.eval_source,
            batch_size=per_host(config.eval_batch_size),
            max_batches=config.steps_per_eval,
            **common,
        )

    @functools.cached_property
    def param_names(self) -> list[str]:
        """Parameter paths in the order of `jax.tree.leaves` of the gradients."""
        leaves = jax.tree_util.tree_flatten_with_path(self.abstract_state.params)[0]
        return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]

    def p(self, step: int) -> np.float32:
        return np.float32(schedules.p_at_step(self.config, step, self.steps_per_epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one.

    Args:
      config: a config of `train.configs` (validated first; `ConfigError` on bad values,
        `train.data_sources.DataError` on missing or corrupt data).
      workdir: where checkpoints, metrics.jsonl, TensorBoard events and plots go.

    Returns:
      The final evaluation: top1, top5, loss and count over the test split, and the step.
    """
    workdir = pathlib.Path(workdir).absolute()
    run = _Run(config, workdir)
    is_chief = run.process_index == 0
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpointing.manager(
        checkpointing.checkpoint_dir(workdir), keep=config.keep_checkpoints
    )

    # The mesh in context: the Pallas path of the adder op splits its kernels over it.
    with jax.set_mesh(run.mesh):
        data_iter = iter(run.loader)
        _check_resumable(mngr, config)
        restored = checkpointing.restore_latest(
            mngr, run.abstract_state, data_iterator=data_iter, log=_warn
        )
        if restored is None:
            state = run.init_state(jax.random.key(config.seed))
            start_step = 0
        else:
            state, _, start_step = restored
            logging.info("resumed from %s at step %d", mngr.directory, start_step)

        writer = reporting.MetricWriter(workdir, enabled=is_chief, resume_step=start_step)
        bar = reporting.ProgressBar(
            run.total_steps,
            start_step,
            enabled=is_chief and config.progress_bar,
            log_every=config.log_every_steps,
        )
        try:
            final, state = _train_loop(run, state, start_step, data_iter, mngr, writer, bar)
        finally:
            bar.close()
            writer.close()
            mngr.close()
    if is_chief:
        (workdir / "results.json").write_text(json.dumps(final, indent=2) + "\n")
        if config.plots:
            _write_plots(run, workdir, jax.device_get(state.params))
    return final


# What a checkpoint must share with the config that resumes it: another model or dataset
# would either fail to restore or, worse, restore into something else.
RESUME_KEYS = ("model", "adder", "dataset", "image_size", "dtype")


def _warn(message: str) -> None:
    logging.warning("%s", message)
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_resumable(mngr, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir whose checkpoints were made by an incompatible config."""
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            saved = checkpointing.read_meta(mngr, step)["config"]
        except Exception:  # a damaged checkpoint: restore_latest reports it
            continue
        diffs = [
            f"{k}={saved.get(k)!r} there, {config[k]!r} here"
            for k in RESUME_KEYS
            if saved.get(k) != config[k]
        ]
        if diffs:
            raise config_checks.ConfigError(
                f"the checkpoints in {mngr.directory} were made by another config "
                f"({'; '.join(diffs)}): use another --workdir to start a new run"
            )
        return


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint; `signum` says which."""

    def __init__(self, signum: int, step: int, directory):
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint saved in {directory}: run the "
            f"same command to resume"
        )


class NonFiniteError(ValueError):
    """A non-finite loss or gradient stopped the run; the message is one line."""


class _StopSignals:
    """Records SIGTERM / SIGINT instead of dying, so the loop can save and stop.

    A second signal of the same kind acts as it would have without this (the handler is
    given back after the first one).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Window:
    """The device metrics of the steps since the last log, checked for finiteness."""

    def __init__(self, run: _Run):
        self.run = run
        self.items: list[tuple[int, Any]] = []  # (step done, metrics)
        self.skipped = 0

    def add(self, done: int, metrics) -> None:
        self.items.append((done, metrics))

    def check(self, last_good: int | None, directory) -> list[dict]:
        """Fetches the metrics; raises `NonFiniteError` at the first non-finite step unless
        the config skips those steps."""
        fetched = jax.device_get([m for _, m in self.items])
        self.items = list(zip([d for d, _ in self.items], fetched, strict=True))
        for done, m in self.items:
            if bool(m["finite"]):
                continue
            if self.run.config.skip_nonfinite:
                continue
            bad = [
                n for n, ok in zip(self.run.param_names, m["grad_finite"], strict=True) if not ok
            ]
            what = f"gradient of {bad[0]}" if bad else "loss"
            kept = f"step {last_good}" if last_good is not None else "none yet"
            raise NonFiniteError(
                f"non-finite {what} at step {done} (loss {float(m['loss'])}): stopped; the "
                f"last good checkpoint in {directory} is {kept} "
                f"(--config.skip_nonfinite=True skips such steps instead)"
            )
        return fetched

    def summary(self, last_good: int | None, directory) -> dict[str, float]:
        fetched = self.check(last_good, directory)
        skipped = sum(1 for m in fetched if not bool(m["finite"]))
        self.skipped += skipped
        keys = [k for k in fetched[0] if k not in ("finite", "grad_finite")]
        out = {k: float(np.mean([m[k] for m in fetched])) for k in keys}
        if self.run.config.skip_nonfinite:
            out["skipped_steps"] = float(self.skipped)
        self.items = []
        return out


def _train_loop(run: _Run, state, start_step, data_iter, mngr, writer, bar) -> dict:
    config = run.config
    final = None
    last_saved = start_step if start_step else None
    window = _Window(run)
    window_start, t0 = start_step, time.perf_counter()

    def save(done, ranked):
        nonlocal last_saved
        window.check(last_saved, mngr.directory)  # never checkpoint a non-finite state
        checkpointing.save(
            mngr, done, state, data_iterator=data_iter, config=config, metrics=ranked
        )
        last_saved = done

    with _StopSignals() as stop:
        for step in range(start_step, run.total_steps):
            batch = _global(next(data_iter), run.batch_sharding)
            state, metrics = run.train_step(state, batch, run.p(step))
            done = step + 1
            window.add(done, metrics)
            if step == start_step:  # keep the compilation out of the throughput
                jax.block_until_ready(state)
                window_start, t0 = done, time.perf_counter()
            last = done == run.total_steps
            if done % config.log_every_steps == 0 or last:
                summary = window.summary(last_saved, mngr.directory)
                elapsed = time.perf_counter() - t0
                if done > window_start:
                    summary["images_per_second"] = (
                        (done - window_start) * config.batch_size / elapsed
                    )
                writer.write(done, "train", summary)
                bar.update(done, **summary)
                window_start, t0 = done, time.perf_counter()
            epoch_end = done % run.steps_per_epoch == 0
            epoch = done // run.steps_per_epoch
            ranked = None
            if (epoch_end and epoch % config.eval_every_epochs == 0) or last:
                window.check(last_saved, mngr.directory)
                result = evaluate(
                    run.eval_step, state, run.eval_batches, run.p(step), run.batch_sharding
                )
                writer.write(done, "eval", {k: v for k, v in result.items() if k != "count"})
                bar.write(
                    f"step {done} epoch {done / run.steps_per_epoch:.2f}: eval top-1 "
                    f"{result['top1']:.4f} top-5 {result['top5']:.4f} loss {result['loss']:.4f}"
                )
                final = {**result, "step": done}
                ranked = {checkpointing.BEST_METRIC: result["top1"]}
            every = config.checkpoint_every_steps
            if (
                (epoch_end and epoch % config.checkpoint_every_epochs == 0)
                or last
                or (every > 0 and done % every == 0)
            ):
                save(done, ranked)
            if stop.signum is not None:
                if last_saved != done:
                    save(done, ranked)
                writer.flush()
                raise Interrupted(stop.signum, done, mngr.directory)
            if epoch_end or last:  # evaluation and saving stay out of the throughput
                writer.flush()
                window_start, t0 = done, time.perf_counter()
    if final is None:  # resumed at the end: evaluate the restored state
        result = evaluate(
            run.eval_step, state, run.eval_batches, run.p(run.total_steps - 1), run.batch_sharding
        )
        final = {**result, "step": run.total_steps}
    return final, state


def _write_plots(run: _Run, workdir: pathlib.Path, params) -> None:
    plots.plot_curves(reporting.read_metrics(workdir / "metrics.jsonl"), workdir / "curves.png")
    key = "adder_params" if run.config.adder else "cnn_params"
    plots.plot_weight_histograms(**{key: params}, path=workdir / "weights.png")
