"""The training loop every task shares: steps, logs, evaluations, checkpoints, signals.

A task (`train.tasks`: classification, distillation, super-resolution; `train.trainer`
runs it) gives the loop a `Task`: how to take a step, how to evaluate, which evaluation
metric ranks checkpoints.
The loop owns the cadence (``log_every_steps``, ``eval_every_epochs``,
``checkpoint_every_epochs``, ``checkpoint_every_steps`` of the config), stops cleanly on
SIGTERM/SIGINT after saving, and refuses to evaluate or checkpoint a state reached through a
non-finite loss or gradient (unless the config skips such steps).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from train import checkpointing, config_checks, reporting

__all__ = [
    "Interrupted",
    "MetricWindow",
    "NonFiniteError",
    "StopSignals",
    "Task",
    "run",
    "run_in_workdir",
    "step_counts",
]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a task gives the loop.

    Attributes:
      step: (state, this host's batch, 0-based step) -> (new state, metrics on device).
        Metrics may hold "finite" (a bool) and "grad_finite" (one bool per gradient leaf);
        the others are averaged over each logging window.
      evaluate: (state, steps done) -> {metric: float}.
      describe: an evaluation in one line, for the progress output.
      best_metric: the evaluation metric (higher is better) that ranks checkpoints.
      param_names: a name per "grad_finite" entry, for the non-finite error.
    """

    step: Callable[[Any, dict, int], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict[str, float]]
    describe: Callable[[dict[str, float]], str]
    best_metric: str = "top1"
    param_names: Sequence[str] = ()


def step_counts(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run over `num_examples` training examples."""
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        data = repr(config.dataset) if "dataset" in config else "the training data"
        raise config_checks.ConfigError(
            f"config.batch_size={config.batch_size} is larger than the {num_examples} "
            f"training examples of {data}"
        )
    full = config.num_epochs * steps_per_epoch
    total = min(config.num_train_steps, full) if config.num_train_steps > 0 else full
    return steps_per_epoch, total


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


class StopSignals:
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


class MetricWindow:
    """The device metrics of the steps since the last log, checked for finiteness."""

    def __init__(self, param_names: Sequence[str], *, skip_nonfinite: bool, directory):
        self.param_names = list(param_names)
        self.skip_nonfinite = skip_nonfinite
        self.directory = directory
        self.items: list[tuple[int, Any]] = []  # (steps done, metrics)
        self.skipped = 0

    def add(self, done: int, metrics) -> None:
        self.items.append((done, metrics))

    def check(self, last_good: int | None) -> list[dict]:
        """Fetches the metrics; raises `NonFiniteError` at the first non-finite step unless
        those steps are skipped. `last_good` is the newest checkpoint's step."""
        fetched = jax.device_get([m for _, m in self.items])
        self.items = list(zip([d for d, _ in self.items], fetched, strict=True))
        for done, m in self.items:
            if bool(m.get("finite", True)) or self.skip_nonfinite:
                continue
            ok = m.get("grad_finite", ())
            bad = [n for n, good in zip(self.param_names, ok, strict=False) if not good]
            what = f"gradient of {bad[0]}" if bad else "loss"
            kept = f"step {last_good}" if last_good is not None else "none yet"
            raise NonFiniteError(
                f"non-finite {what} at step {done} (loss {float(m['loss'])}): stopped; the "
                f"last good checkpoint in {self.directory} is {kept} "
                f"(--config.skip_nonfinite=True skips such steps instead)"
            )
        return fetched

    def summary(self, last_good: int | None) -> dict[str, float]:
        """The window's means (and the skipped-step count), emptying it."""
        fetched = self.check(last_good)
        self.skipped += sum(1 for m in fetched if not bool(m.get("finite", True)))
        keys = [k for k in fetched[0] if k not in ("finite", "grad_finite")]
        out = {k: float(np.mean([m[k] for m in fetched])) for k in keys}
        if self.skip_nonfinite:
            out["skipped_steps"] = float(self.skipped)
        self.items = []
        return out


class Throughput:
    """Training examples per second since the last `restart`."""

    def __init__(self, batch_size: int, step: int):
        self.batch_size = batch_size
        self.restart(step)

    def restart(self, step: int) -> None:
        self.step, self.start = step, time.perf_counter()

    def rate(self, done: int) -> dict[str, float]:
        """{"images_per_second": ...} over the steps since the restart (empty if none),
        restarting the count."""
        elapsed = time.perf_counter() - self.start
        out = {}
        if done > self.step:
            out["images_per_second"] = (done - self.step) * self.batch_size / elapsed
        self.restart(done)
        return out


def run(
    task: Task,
    state: Any,
    *,
    config: ml_collections.ConfigDict,
    start_step: int,
    total_steps: int,
    steps_per_epoch: int,
    data_iterator: Iterator[dict],
    mngr,
    writer: reporting.MetricWriter,
    bar: reporting.ProgressBar,
) -> tuple[dict[str, float], Any]:
    """Trains from `start_step` to `total_steps`; returns (the last evaluation with its
    "step", the final state).

    Raises:
      Interrupted: SIGTERM or SIGINT arrived; a checkpoint of the last step was saved.
      NonFiniteError: a step was not finite (and the config does not skip such steps).
    """
    final = None
    last_saved = start_step if start_step else None
    window = MetricWindow(
        task.param_names, skip_nonfinite=config.skip_nonfinite, directory=mngr.directory
    )
    throughput = Throughput(config.batch_size, start_step)
    every = config.checkpoint_every_steps
    with StopSignals() as stop:
        for step in range(start_step, total_steps):
            state, metrics = task.step(state, next(data_iterator), step)
            done = step + 1
            window.add(done, metrics)
            epoch, epoch_end = done // steps_per_epoch, done % steps_per_epoch == 0
            last = done == total_steps
            evaluating = (epoch_end and epoch % config.eval_every_epochs == 0) or last
            saving = (
                (epoch_end and epoch % config.checkpoint_every_epochs == 0)
                or last
                or (every > 0 and done % every == 0)
            )
            if step == start_step:  # keep the compilation out of the throughput
                jax.block_until_ready(state)
                throughput.restart(done)
            if done % config.log_every_steps == 0 or last:
                summary = {**window.summary(last_saved), **throughput.rate(done)}
                writer.write(done, "train", summary)
                bar.update(done, **summary)
            ranked = None
            signum = stop.signum  # read once: a signal that comes later stops the next step
            saving = saving or signum is not None
            if evaluating or saving:
                window.check(last_saved)  # never evaluate or keep a non-finite state
            if evaluating:
                result = task.evaluate(state, done)
                writer.write(done, "eval", {k: v for k, v in result.items() if k != "count"})
                bar.write(
                    f"step {done} epoch {done / steps_per_epoch:.2f}: eval {task.describe(result)}"
                )
                final = {**result, "step": done}
                ranked = {checkpointing.metric_name(task.best_metric): result[task.best_metric]}
            if saving:
                checkpointing.save(
                    mngr,
                    done,
                    state,
                    data_iterator=data_iterator,
                    config=config,
                    metrics=ranked,
                    steps_per_epoch=steps_per_epoch,
                )
                last_saved = done
            if evaluating or saving:
                writer.flush()
                throughput.restart(done)  # evaluation and saving stay out of the throughput
            if signum is not None:
                raise Interrupted(signum, done, mngr.directory)
    if final is None:  # resumed at the end: evaluate the restored state
        final = {**task.evaluate(state, total_steps), "step": total_steps}
    return final, state


def run_in_workdir(
    task: Task,
    state: Any,
    *,
    config: ml_collections.ConfigDict,
    workdir,
    start_step: int,
    total_steps: int,
    steps_per_epoch: int,
    data_iterator: Iterator[dict],
    mngr,
) -> tuple[dict[str, float], Any]:
    """`run` with `workdir`'s metric writer and the progress bar (on the chief process only);
    they and `mngr` are closed when it ends, however it ends."""
    is_chief = jax.process_index() == 0
    writer = reporting.MetricWriter(workdir, enabled=is_chief, resume_step=start_step)
    bar = reporting.ProgressBar(
        total_steps,
        start_step,
        enabled=is_chief and config.progress_bar,
        log_every=config.log_every_steps,
    )
    try:
        return run(
            task,
            state,
            config=config,
            start_step=start_step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            data_iterator=data_iterator,
            mngr=mngr,
            writer=writer,
            bar=bar,
        )
    finally:
        bar.close()
        writer.close()
        mngr.close()
