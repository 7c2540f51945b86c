"""TensorBoard event files written by hand (no tensorflow needed).

An event file is a TFRecord stream: each record is

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | payload
        | uint32 masked_crc32c(payload)

and each payload is a serialized `tensorflow.Event` protobuf. We only need three message shapes:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; SessionLog session_log = 6; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }   (START = 1: TensorBoard drops events of later steps,
                                               which is what a resumed run wants)

so the protobuf wire format is encoded here directly (varints, 64-bit doubles, 32-bit floats,
length-delimited fields). `read_events` decodes the same subset, for tests and tools. Files go
to a local folder or under a bucket URL (`mad_jax.storage`).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import Iterator

from mad_jax import storage

_FILE_COUNTER = iter(range(1 << 62))

# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, table driven.
_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (the checksum TFRecord uses)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant, modulo 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def encode_record(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, payload, payload's masked CRC."""
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", masked_crc32c(header)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


# --- protobuf wire format (only what the Event message needs) ---

def _varint(value: int) -> bytes:
    if value < 0:  # int64 negatives are encoded as 10-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(*, wall_time: float, step: int = 0, scalars: dict[str, float] | None = None,
                 file_version: str | None = None, session_start: bool = False) -> bytes:
    """Serialized Event protobuf with scalar summaries (or a file_version / SessionLog START)."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        out += _len_field(5, summary)
    if session_start:
        out += _len_field(6, _key(1, 0) + _varint(1))
    return out


class EventFileWriter:
    """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>...` for TensorBoard.

    Each writer opens a new file (as TensorBoard's own writers do); `start_step` writes a
    SessionLog START so that TensorBoard discards events past that step from an earlier,
    interrupted session.
    """

    def __init__(self, logdir: str | os.PathLike, *, start_step: int | None = None):
        now = time.time()
        name = (f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_FILE_COUNTER)}")
        self.path = storage.join(logdir, name)
        self._f = storage.AppendFile(self.path)
        self._write(encode_event(wall_time=now, file_version="brain.Event:2"))
        if start_step is not None:
            self._write(encode_event(wall_time=now, step=start_step, session_start=True))
        self.flush()

    def _write(self, payload: bytes) -> None:
        self._f.write(encode_record(payload))

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        self._write(encode_event(wall_time=time.time() if wall_time is None else wall_time,
                                 step=step, scalars=values))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# --- reading (tests, tools) ---

def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<d", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<f", buf, pos)[0], pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(payload: bytes) -> dict:
    """Decodes the Event subset written above into a dict (wall_time, step, scalars, ...)."""
    event: dict = {"step": 0, "scalars": {}}
    for field, _, value in _fields(payload):
        if field == 1:
            event["wall_time"] = value
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for vfield, _, vbytes in _fields(value):
                if vfield == 1:
                    parsed = {f: v for f, _, v in _fields(vbytes)}
                    event["scalars"][parsed[1].decode()] = parsed.get(2)
        elif field == 6:
            event["session_start"] = dict((f, v) for f, _, v in _fields(value)).get(1) == 1
    return event


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Payloads of a TFRecord file; raises ValueError on a bad checksum."""
    data = storage.read_bytes(path)
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack_from("<I", data, pos + 8)
        if hcrc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {pos}")
        payload = data[pos + 12:pos + 12 + length]
        (pcrc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if pcrc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad payload checksum at byte {pos}")
        yield payload
        pos += 16 + length


def read_events(path: str | os.PathLike) -> list[dict]:
    """All events of one event file, decoded."""
    return [decode_event(p) for p in read_records(path)]
