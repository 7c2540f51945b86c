"""The hand-written TensorBoard event format: CRC-32C, TFRecord framing, Event protobuf bytes;
the metrics writer on a local folder and on a URL (tensorstore's in-memory store).

The protobuf bytes are checked against an independent decoder built from a descriptor with the
protobuf library (the schema of tensorflow's Event, Summary and SessionLog messages).
"""
import struct
import uuid

import pytest

from mad_jax import storage
from mad_jax.training import tensorboard as tb
from mad_jax.training.metrics_writer import MetricsWriter, read_metrics


def test_crc32c_known_vectors():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert tb.crc32c(b"") == 0
    assert tb.crc32c(bytes(32)) == 0x8A9136AA     # RFC 3720 B.4: 32 bytes of zeros
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xff


def test_record_framing():
    payload = b"hello"
    record = tb.encode_record(payload)
    assert record[:8] == struct.pack("<Q", 5)
    assert struct.unpack("<I", record[8:12])[0] == tb.masked_crc32c(record[:8])
    assert record[12:17] == payload
    assert struct.unpack("<I", record[17:])[0] == tb.masked_crc32c(payload)


def _event_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL)
    summary = f.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=T.TYPE_MESSAGE, type_name=".t.Value",
                      label=T.LABEL_REPEATED)
    session = f.message_type.add(name="SessionLog")
    session.field.add(name="status", number=1, type=T.TYPE_INT32, label=T.LABEL_OPTIONAL)
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, type_name=".t.Summary",
                    label=T.LABEL_OPTIONAL)
    event.field.add(name="session_log", number=6, type=T.TYPE_MESSAGE, type_name=".t.SessionLog",
                    label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_event_bytes_parse_with_protobuf():
    pytest.importorskip("google.protobuf")
    Event = _event_class()
    e = Event.FromString(tb.encode_event(wall_time=1234.5, step=300,
                                         scalars={"train/loss": 0.25, "test/accuracy": 0.75}))
    assert e.wall_time == 1234.5 and e.step == 300
    assert [(v.tag, v.simple_value) for v in e.summary.value] == [("train/loss", 0.25),
                                                                   ("test/accuracy", 0.75)]
    e = Event.FromString(tb.encode_event(wall_time=1.0, file_version="brain.Event:2"))
    assert e.file_version == "brain.Event:2"
    e = Event.FromString(tb.encode_event(wall_time=1.0, step=2 ** 40, session_start=True))
    assert e.step == 2 ** 40 and e.session_log.status == 1


@pytest.mark.parametrize("where", ["local", "url"])
def test_writer_round_trip_and_resume(tmp_path, where):
    run_dir = str(tmp_path) if where == "local" else f"memory://{uuid.uuid4().hex}/run"
    w = MetricsWriter(run_dir)
    for step in (1, 2, 3):
        w.write(step, {"train/loss": 1.0 / step})
    w.flush()
    assert len(read_metrics(storage.join(run_dir, "metrics.jsonl"))) == 3  # flushed: readable
    w.close()
    # A resumed session from a checkpoint at step 2 forgets step 3 of the old session.
    w = MetricsWriter(run_dir, resume_step=2)
    w.write(3, {"train/loss": 0.5})
    w.close()
    assert [(r["step"], r["train/loss"])
            for r in read_metrics(storage.join(run_dir, "metrics.jsonl"))] == [
        (1, 1.0), (2, 0.5), (3, 0.5)]
    files = [storage.join(run_dir, n) for n in storage.list_files(run_dir)
             if n.startswith("events.out.tfevents")]
    assert len(files) == 2
    events = [e for p in sorted(files, key=lambda p: int(p.rsplit(".", 1)[-1]))
              for e in tb.read_events(p)]
    assert any(e.get("session_start") and e["step"] == 2 for e in events)
    assert [e["scalars"]["train/loss"] for e in events if e["scalars"]] == pytest.approx(
        [1.0, 0.5, 1 / 3, 0.5])
    MetricsWriter(run_dir).close()  # a fresh start forgets the old records
    assert read_metrics(storage.join(run_dir, "metrics.jsonl")) == []


def test_reader_detects_corruption(tmp_path):
    path = tmp_path / "events.out.tfevents.x"
    path.write_bytes(tb.encode_record(b"abc")[:-1] + b"\x00")
    with pytest.raises(ValueError, match="checksum"):
        list(tb.read_records(path))
