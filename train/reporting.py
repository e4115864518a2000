"""Metric logging and progress display for the training programs.

`MetricWriter` records scalars both as JSON lines (`metrics.jsonl`, read back by
`read_metrics` and plotted by `train.plots`) and as TensorBoard events; `ProgressBar`
shows training progress as a tqdm bar on a terminal and as plain periodic lines in logs;
`warn` and `info` are the programs' one-line messages.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np
import tqdm
from absl import logging

from train.event_file import EventFile

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


def warn(message: str) -> None:
    """A one-line warning: logged, and printed on stderr by process 0 (whatever the
    verbosity, since a warning asks the user to look)."""
    logging.warning("%s", message)
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    """A message for the logs only (shown with ``--verbosity=0`` or more)."""
    logging.info("%s", message)


# Keys every JSON line carries; a scalar with one of these names would overwrite them.
_RESERVED_KEYS = ("step", "split", "time")


def _to_float(key: str, value: Any) -> float:
    """Converts a Python number, NumPy scalar or 0-d (NumPy or JAX) array to a float."""
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"metric {key!r} has shape {arr.shape}; expected a scalar")
    # Kind "V" is let through because ml_dtypes' bfloat16 (what a bf16 jax.Array becomes)
    # is not a subtype of np.floating; float() below rejects genuine structured values.
    if arr.dtype.kind in "OSUcmM":
        raise ValueError(f"metric {key!r} has dtype {arr.dtype}; expected a real number")
    try:
        return float(arr)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metric {key!r} of dtype {arr.dtype} is not a real number") from e


def _parse_lines(text: str, path: Path) -> tuple[list[dict], bool]:
    """Parses JSONL text; returns the records and whether a truncated last line was dropped.

    Only the last line may be unreadable (a run killed mid-write leaves one); a bad line
    anywhere else means the file is corrupt and is an error rather than silently skipped.
    """
    lines = text.split("\n")
    # A complete file ends with "\n", so its final split piece is empty.
    complete = lines[:-1]
    tail = lines[-1]
    records = []
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed metrics line: {e}") from e
    dropped = False
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            dropped = True
    return records, dropped


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Reads a `metrics.jsonl` file (or the workdir that holds one) into a list of dicts.

    A truncated last line, which a killed run can leave, is skipped. Non-finite values
    come back as `None` (they are stored as JSON null).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    records, _ = _parse_lines(path.read_text(encoding="utf-8"), path)
    return records


def _open_event_file(logdir: Path, resume_step: int | None) -> EventFile:
    """Opens a new TensorBoard event file in `logdir`, written synchronously (so `flush()`
    means "on disk" before a preemption)."""
    logdir.mkdir(parents=True, exist_ok=True)
    # Event files are named by the second, so two writers opened within one second (a
    # quick restart) would overwrite each other; the suffix keeps them apart, and being a
    # fixed-width time it keeps their lexicographic order, which is the order TensorBoard
    # reads them in (and applies purges in).
    writer = EventFile(logdir, f".{time.time_ns():019d}.{os.getpid()}")
    if resume_step is not None:
        # TensorBoard then discards the events at steps > resume_step read from earlier
        # files: the interrupted run's steps after the checkpoint.
        writer.purge_from(resume_step + 1)
    return writer


class MetricWriter:
    """Writes scalar metrics to `workdir/metrics.jsonl` and to TensorBoard.

    Each `write` appends one JSON object `{"step", "split", "time", **scalars}` and adds
    each scalar to TensorBoard (`workdir/tensorboard`) under the tag `"{split}/{name}"`.
    Non-finite values become JSON null (the file stays strict JSON) and NaN in TensorBoard.

    The JSONL file is only ever appended to, so a resumed run continues the same file.
    When resuming from a checkpoint at `resume_step`, the steps after it that the
    interrupted run had already logged are replayed; pass `resume_step` so that their old
    lines are dropped (and TensorBoard purges its old events past that step) and no step
    appears twice.

    Args:
      workdir: directory of the run; created if missing.
      enabled: `False` makes every method a no-op and touches no file; multi-host runs
        pass `jax.process_index() == 0` so only one host writes.
      resume_step: the step the run resumes from, or `None` for a fresh run.

    Example::

        with MetricWriter(workdir, enabled=jax.process_index() == 0) as writer:
            writer.write(step, "train", {"loss": loss, "learning_rate": lr})
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.path = self.workdir / METRICS_FILENAME
        self._file: IO[str] | None = None
        self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._repair(resume_step)
        # Line buffering: each record reaches the OS as soon as it is written, so a killed
        # run loses at most the line being written.
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._tb = _open_event_file(self.workdir / TENSORBOARD_DIRNAME, resume_step)

    def _repair(self, resume_step: int | None) -> None:
        """Drops a truncated last line and, on resume, the lines past `resume_step`."""
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        records, dropped = _parse_lines(text, self.path)
        # Without this, the next record would be glued onto the half-written line.
        needs_rewrite = dropped or (bool(text) and not text.endswith("\n"))
        if resume_step is not None:
            kept = [r for r in records if r.get("step", -1) <= resume_step]
            needs_rewrite |= len(kept) != len(records)
            records = kept
        if not needs_rewrite:
            return
        # Write-then-rename so a crash here cannot lose the whole history.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        os.replace(tmp, self.path)

    def write(self, step: int, split: str, scalars: Mapping[str, float | np.ndarray | Any]) -> None:
        """Records `scalars` (name -> 0-d value) at `step` under `split` ("train", "eval")."""
        if not self.enabled:
            return
        if self._file is None:
            raise ValueError(f"MetricWriter for {self.workdir} is closed")
        values = {}
        for key, value in scalars.items():
            if key in _RESERVED_KEYS:
                raise ValueError(f"metric name {key!r} is reserved ({', '.join(_RESERVED_KEYS)})")
            values[key] = _to_float(key, value)
        step = int(step)
        record: dict[str, Any] = {"step": step, "split": split, "time": time.time()}
        record.update({k: v if math.isfinite(v) else None for k, v in values.items()})
        # allow_nan=False guarantees no bare NaN/Infinity token can ever reach the file.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        # One event per call; TensorBoard takes NaN, so non-finite values are kept visible
        # as gaps rather than dropped.
        self._tb.scalars(
            step,
            {f"{split}/{k}": v if math.isfinite(v) else math.nan for k, v in values.items()},
            wall_time=record["time"],
        )

    def flush(self) -> None:
        """Forces both the JSONL file and the TensorBoard events to disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()  # fsyncs too

    def close(self) -> None:
        """Flushes and closes; safe to call more than once."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# Short postfix names of the loop's metrics, so they fit on one terminal line.
_SHORT_NAMES = {"images_per_second": "img/s", "learning_rate": "lr"}


def _format_value(value: float) -> str:
    # Large values (throughput) read best as integers; the rest with 4 significant digits.
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{_SHORT_NAMES.get(k, k)}={_format_value(v)}" for k, v in metrics.items())


class ProgressBar:
    """Training-loop progress: a tqdm bar on a terminal, plain periodic lines otherwise.

    A redrawing bar turns into carriage-return noise in CI logs and captured output, so
    when `file` is not a terminal no bar is drawn; instead one self-contained line, e.g.
    ``train 150/1000 (15%) loss=2.303 top1=0.1016 img/s=12345 [0:01:02<0:05:51, 2.41 step/s]``,
    is printed every `log_every` steps and at the last step.

    Args:
      total_steps: step at which training ends.
      initial_step: step training starts (or resumes) from.
      enabled: `False` prints nothing (non-zero hosts).
      desc: label in front of the bar / lines.
      log_every: steps between plain lines when not on a terminal.
      file: stream to write to; defaults to `sys.stderr`, like tqdm.
      interactive: draw a tqdm bar (`True`) or plain lines (`False`); `None` asks
        `file.isatty()`.

    `update(step, **metrics)` takes the step just completed and, optionally, host-side
    metrics (e.g. `loss`, `accuracy`, `images_per_second`); they are converted with
    `float()`, which on a device array waits for the device, so pass them only on the
    steps where the loop already has them on the host. The last metrics stay displayed
    until new ones arrive.
    """

    def __init__(
        self,
        total_steps: int,
        initial_step: int = 0,
        *,
        enabled: bool = True,
        desc: str = "train",
        log_every: int = 50,
        file: IO[str] | None = None,
        interactive: bool | None = None,
    ):
        if log_every < 1:
            raise ValueError(f"{log_every=} must be >= 1")
        self.enabled = enabled
        self.total_steps = int(total_steps)
        self.initial_step = int(initial_step)
        self.desc = desc
        self.log_every = log_every
        self._file = sys.stderr if file is None else file
        self._metrics: dict[str, float] = {}
        self._step = self.initial_step
        self._printed_step = self.initial_step
        self._start = time.monotonic()
        self._bar = None
        if not enabled:
            return
        if interactive is None:
            isatty = getattr(self._file, "isatty", None)
            interactive = bool(isatty and isatty())
        if interactive:
            self._bar = tqdm.tqdm(
                total=self.total_steps,
                initial=self.initial_step,
                desc=desc,
                unit="step",
                file=self._file,
                dynamic_ncols=True,
            )

    def update(self, step: int, **metrics: Any) -> None:
        """Advances to `step` (absolute, not an increment) and shows `metrics`."""
        if not self.enabled:
            return
        step = int(step)
        if metrics:
            self._metrics = {k: _to_float(k, v) for k, v in metrics.items()}
        self._step = step
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix_str(_format_metrics(self._metrics), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        # Print on crossing a multiple of log_every, which keeps lines on round steps even
        # when update is called every few steps rather than every step.
        crossed = step // self.log_every != self._printed_step // self.log_every
        if crossed or step >= self.total_steps:
            self._print_line()

    def _print_line(self) -> None:
        step, total = self._step, self.total_steps
        elapsed = time.monotonic() - self._start
        done = step - self.initial_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = tqdm.tqdm.format_interval((total - step) / rate) if rate > 0 else "?"
        pct = 100.0 * step / total if total > 0 else 100.0
        parts = [f"{self.desc} {step}/{total} ({pct:.0f}%)"]
        if self._metrics:
            parts.append(_format_metrics(self._metrics))
        parts.append(f"[{tqdm.tqdm.format_interval(elapsed)}<{eta}, {rate:.3g} step/s]")
        print(" ".join(parts), file=self._file, flush=True)
        self._printed_step = step

    def write(self, message: str) -> None:
        """Prints a line (an evaluation result, say) without breaking a drawn bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self._file)
        else:
            print(message, file=self._file, flush=True)

    def close(self) -> None:
        """Ends the bar; in plain mode prints the final state if it was not just printed."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._step != self._printed_step:
            self._print_line()
        self.enabled = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
