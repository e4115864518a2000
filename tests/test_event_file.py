"""train/event_file.py: our hand-encoded records, read back with tensorboardX's protobufs."""

import math
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c as reference_masked_crc32c
from test_reporting import read_events

from train import event_file


def test_crc32c_check_value_and_tensorboardx_mask():
    # The CRC-32C check value of RFC 3720: "123456789" -> 0xE3069283.
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert event_file.masked_crc32c(b"123456789") == masked
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 1000):
        data = rng.bytes(n)
        assert event_file.masked_crc32c(data) == reference_masked_crc32c(data)


def test_events_parse_as_tensorboard_protos(tmp_path):
    f = event_file.EventFile(tmp_path, ".x")
    f.scalars(7, {"train/loss": 0.25, "train/big": 1e300, "eval/top1": math.nan}, wall_time=12.5)
    f.scalars(2**40, {"train/loss": -3.0}, wall_time=13.0)
    f.purge_from(5)
    f.close()
    f.close()  # twice is fine
    assert f.path.name.startswith("events.out.tfevents.") and f.path.name.endswith(".x")
    first, scalars, huge, purge = read_events(tmp_path)
    assert first.file_version == "brain.Event:2" and first.wall_time > 0
    assert (scalars.step, scalars.wall_time) == (7, 12.5)
    values = {v.tag: v.simple_value for v in scalars.summary.value}
    assert values["train/loss"] == 0.25 and values["train/big"] == math.inf
    assert math.isnan(values["eval/top1"])
    assert huge.step == 2**40 and huge.summary.value[0].simple_value == -3.0
    assert purge.step == 5 and purge.session_log.status == event_pb2.SessionLog.START


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**63 - 1])
def test_varint_steps(tmp_path, step):
    f = event_file.EventFile(tmp_path)
    f.scalars(step, {"a": 1.0}, wall_time=1.0)
    f.close()
    assert read_events(tmp_path)[1].step == step
    assert struct.calcsize("<Q") == 8
