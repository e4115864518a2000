"""TensorBoard event files of scalar metrics, written synchronously with no dependency.

An event file is a TFRecord file (each record: its length, a masked CRC-32C of the length,
the bytes, a masked CRC-32C of the bytes) of `Event` protocol buffers. The programs only
write three kinds: the file version, scalar summaries and the START session log that makes
TensorBoard purge a resumed run's replayed steps; they are encoded here by hand (a dozen
bytes of protobuf wire format each). tensorboardX, which did this before, imports PyTorch
whenever it is installed: 3 s at the start of every program.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["EventFile", "masked_crc32c"]


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return tuple(table)


_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C of `data`, rotated right by 15 bits plus a constant."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 fields: negative numbers as their 64-bit two's complement
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings and messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes = b"") -> bytes:
    # Event: wall_time = 1 (double), step = 2 (int64), then file_version = 3,
    # summary = 5 or session_log = 7.
    head = b"\x09" + struct.pack("<d", wall_time)
    if step:
        head += b"\x10" + _varint(step)
    return head + body


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite but beyond float32: protobuf would store an infinity
        return struct.pack("<f", math.copysign(math.inf, value))


def scalar_summary(values: Mapping[str, float]) -> bytes:
    """The `summary` field of an event: a Summary of one simple_value per tag."""
    # Summary.value = 1 (repeated Value); Value.tag = 1, Value.simple_value = 2 (float).
    items = b"".join(
        _field(1, _field(1, tag.encode()) + b"\x15" + _float32(value))
        for tag, value in values.items()
    )
    return _field(5, items)


class EventFile:
    """An event file in `logdir`, each record written (and on `flush`, fsynced) at once.

    Its name is TensorBoard's ``events.out.tfevents.TIME.HOST`` with `suffix` after it.
    """

    def __init__(self, logdir: str | os.PathLike, suffix: str = ""):
        stamp = f"{int(time.time())}.{socket.gethostname()}{suffix}"
        self.path = Path(logdir) / f"events.out.tfevents.{stamp}"
        self._file = open(self.path, "wb")
        self._write(_event(time.time(), 0, _field(3, b"brain.Event:2")))

    def _write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", masked_crc32c(length)))
        self._file.write(record + struct.pack("<I", masked_crc32c(record)))

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        """One event of scalars (tag -> value) at `step`."""
        self._write(_event(wall_time, step, scalar_summary(values)))

    def purge_from(self, step: int) -> None:
        """A START session log at `step`: TensorBoard drops the events at steps >= `step`
        read from earlier files (tensorboardX's ``SummaryWriter(purge_step=step)``)."""
        self._write(_event(time.time(), step, _field(7, b"\x08\x01")))  # status = START

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
