"""Tests for train/reporting.py: the JSONL + TensorBoard metric writer and the progress bar."""

import io
import json
import math
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from train import reporting


def read_events(logdir: Path) -> list[event_pb2.Event]:
    """Reads every TensorBoard event under `logdir`, checking the TFRecord framing.

    TensorBoard (and TensorFlow's reader) are not installed, and tensorboardX only writes,
    so the records are parsed here: u64 length, u32 masked CRC of the length, payload,
    u32 masked CRC of the payload.
    """
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            assert header_crc == masked_crc32c(header)
            payload = data[pos + 12 : pos + 12 + length]
            (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert payload_crc == masked_crc32c(payload)
            events.append(event_pb2.Event.FromString(payload))
            pos += 16 + length
    return events


def scalar_events(logdir: Path) -> list[tuple[int, str, float]]:
    return [
        (e.step, v.tag, v.simple_value)
        for e in read_events(logdir)
        if e.HasField("summary")
        for v in e.summary.value
    ]


def strip_time(records):
    for r in records:
        assert isinstance(r.pop("time"), float)
    return records


def test_jsonl_content_exact(tmp_path):
    with reporting.MetricWriter(tmp_path) as w:
        w.write(1, "train", {"loss": 2.5, "accuracy": np.float32(0.25)})
        w.write(2, "train", {"loss": jnp.asarray(1.5), "learning_rate": np.asarray(0.1)})
        w.write(2, "eval", {"accuracy": jnp.asarray(0.5, jnp.bfloat16), "n": 7})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert list(records[0]) == ["step", "split", "time", "loss", "accuracy"]
    assert strip_time(records) == [
        {"step": 1, "split": "train", "loss": 2.5, "accuracy": 0.25},
        {"step": 2, "split": "train", "loss": 1.5, "learning_rate": 0.1},
        {"step": 2, "split": "eval", "accuracy": 0.5, "n": 7.0},
    ]
    assert strip_time(reporting.read_metrics(tmp_path)) == records


def test_tensorboard_events_readable(tmp_path):
    with reporting.MetricWriter(tmp_path) as w:
        w.write(10, "train", {"loss": 2.0})
        w.write(20, "eval", {"accuracy": 0.75})
    assert scalar_events(tmp_path / "tensorboard") == [
        (10, "train/loss", 2.0),
        (20, "eval/accuracy", 0.75),
    ]


def test_flush_makes_data_visible_before_close(tmp_path):
    w = reporting.MetricWriter(tmp_path)
    w.write(3, "train", {"loss": 1.0})
    w.flush()
    assert [r["step"] for r in reporting.read_metrics(tmp_path / "metrics.jsonl")] == [3]
    assert scalar_events(tmp_path / "tensorboard") == [(3, "train/loss", 1.0)]
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(4, "train", {"loss": 1.0})


def test_non_finite_is_null_and_nan(tmp_path):
    with reporting.MetricWriter(tmp_path) as w:
        w.write(1, "train", {"loss": float("nan"), "grad_norm": np.inf, "ok": 1.0})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    # Python's json accepts bare NaN by default; a strict parser must accept this file too.
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert record["loss"] is None and record["grad_norm"] is None and record["ok"] == 1.0
    tb = {tag: value for _, tag, value in scalar_events(tmp_path / "tensorboard")}
    assert math.isnan(tb["train/loss"]) and math.isnan(tb["train/grad_norm"])
    assert tb["train/ok"] == 1.0


@pytest.mark.parametrize("value", [np.zeros(3), jnp.ones((1,)), "high", 1 + 2j])
def test_non_scalar_rejected(tmp_path, value):
    with reporting.MetricWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="'bad'") as info:
            w.write(1, "train", {"good": 1.0, "bad": value})
    assert "\n" not in str(info.value)
    # Validation happens before anything is written: no half record.
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_reserved_name_rejected(tmp_path):
    with reporting.MetricWriter(tmp_path) as w, pytest.raises(ValueError, match="'step'"):
        w.write(1, "train", {"step": 1.0})


def test_disabled_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with reporting.MetricWriter(workdir, enabled=False, resume_step=0) as w:
        w.write(1, "train", {"loss": 1.0})
        w.flush()
    assert not workdir.exists()


def test_append_and_resume_truncation(tmp_path):
    with reporting.MetricWriter(tmp_path) as w:
        for step in (100, 200, 300, 400):
            w.write(step, "train", {"loss": step / 100})
        w.write(200, "eval", {"accuracy": 0.5})
    # A plain reopen appends and never drops history.
    with reporting.MetricWriter(tmp_path) as w:
        pass
    assert len(reporting.read_metrics(tmp_path)) == 5

    # Resume from the step-200 checkpoint: steps 300 and 400 are replayed.
    with reporting.MetricWriter(tmp_path, resume_step=200) as w:
        assert [(r["step"], r["split"]) for r in reporting.read_metrics(tmp_path)] == [
            (100, "train"),
            (200, "train"),
            (200, "eval"),
        ]
        w.write(300, "train", {"loss": 30.0})
    records = reporting.read_metrics(tmp_path)
    assert [(r["step"], r["split"], r.get("loss")) for r in records] == [
        (100, "train", 1.0),
        (200, "train", 2.0),
        (200, "eval", None),
        (300, "train", 30.0),
    ]
    # The resumed writer's event file starts with the purge marker TensorBoard uses to
    # discard the interrupted run's events from step 201 on.
    starts = [
        e.step
        for e in read_events(tmp_path / "tensorboard")
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [201]
    # Three writers opened within a second: each kept its own event file, none overwritten.
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 3
    train_steps = [
        s for s, tag, _ in scalar_events(tmp_path / "tensorboard") if tag == "train/loss"
    ]
    assert train_steps == [100, 200, 300, 400, 300]


def test_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl')
    assert reporting.read_metrics(path) == [{"step": 1, "split": "train", "loss": 1.0}]
    # A corrupt line that is not the last is an error, not silently skipped.
    (tmp_path / "bad.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        reporting.read_metrics(tmp_path / "bad.jsonl")
    # Reopening drops the partial line so the next record starts on a line of its own.
    with reporting.MetricWriter(tmp_path) as w:
        w.write(2, "train", {"loss": 0.5})
    assert [r["step"] for r in reporting.read_metrics(path)] == [1, 2]
    assert len(path.read_text().splitlines()) == 2


def test_progress_bar_plain_lines(capsys):
    bar = reporting.ProgressBar(200, 0, log_every=50, desc="train")
    for step in range(1, 131):
        bar.update(step, loss=jnp.asarray(2.302585), top1=0.1016, images_per_second=12345.6)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "\r" not in captured.err
    assert [line.split()[1] for line in lines] == ["50/200", "100/200", "130/200"]
    assert lines[0].startswith("train 50/200 (25%) loss=2.303 top1=0.1016 img/s=12346 [")
    assert "step/s]" in lines[0]


def test_progress_bar_resume_and_coarse_updates():
    out = io.StringIO()
    with reporting.ProgressBar(1000, 940, log_every=50, file=out) as bar:
        for step in range(960, 1001, 20):  # 960 passes 950, 980 passes none, 1000 ends
            bar.update(step)
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["960/1000", "1000/1000"]
    assert "loss" not in lines[0]


def test_progress_bar_disabled(capsys):
    bar = reporting.ProgressBar(10, 0, enabled=False, log_every=1)
    for step in range(1, 11):
        bar.update(step, loss=1.0)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_progress_bar_interactive_uses_tqdm():
    out = io.StringIO()
    bar = reporting.ProgressBar(100, 10, file=out, interactive=True, desc="fit")
    bar.update(20, loss=1.23456, images_per_second=5000.0)
    bar.close()
    text = out.getvalue()
    assert "fit" in text and "20/100" in text and "loss=1.235 img/s=5000" in text


@pytest.mark.parametrize("interactive", [False, True])
def test_progress_bar_write_lines(interactive):
    out = io.StringIO()
    bar = reporting.ProgressBar(100, 0, file=out, interactive=interactive, log_every=10)
    bar.write("eval top-1 0.9000")
    bar.close()
    assert "eval top-1 0.9000\n" in out.getvalue()
    reporting.ProgressBar(10, 0, enabled=False, file=out).write("hidden")
    assert "hidden" not in out.getvalue()
