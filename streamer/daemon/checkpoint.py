"""Checkpoints: the state of one partition's streams together with the offset it corresponds to.

A checkpoint says "after processing every message before ``offset`` of ``topic/partition``, these streams
had exactly this state". On assignment the daemon restores it and seeks to ``offset``, so a restart or a
partition moving to another process neither skips state nor applies a message twice.

Encoding: an ``.npz`` archive of plain arrays plus one JSON header (format version, model fingerprint,
offset), read with ``allow_pickle=False``, so a checkpoint can never execute code. A checkpoint written
for another model is refused, not misapplied.

Stores:
- `LocalStore`: one file per partition under a directory (systemd ``StateDirectory``, a Kubernetes volume),
  written to a temporary file, fsynced and renamed, so a reader sees the old or the new one, never half.
- `KafkaStore`: a compacted topic keyed ``group/topic/partition``, so a partition can move to a replica on
  another machine. Large states are split into chunks keyed by their save's id, written before the small
  manifest that names that id; the previous save's chunks are tombstoned only after the new manifest, so
  an interrupted save leaves the previous checkpoint readable.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from streamer.core.detector import N_PROFILE, N_SCALARS, StreamStates
from streamer.core.kernel import N_TAILS, PROF

FORMAT_VERSION = 2  # 2: float32 profile apart from the float64 scalars


class CheckpointError(ValueError):
    """A checkpoint that must not be applied (other format version, other model, damaged)."""


@dataclass
class Checkpoint:
    topic: str
    partition: int
    offset: int  # the next message to process
    model: str  # fingerprint of the model the hidden states belong to
    states: StreamStates


class Store(Protocol):
    def load(self, topic: str, partition: int) -> Checkpoint | None: ...

    def save(self, checkpoint: Checkpoint) -> None: ...


def encode(cp: Checkpoint) -> bytes:
    s = cp.states
    header = {"format": FORMAT_VERSION, "topic": cp.topic, "partition": cp.partition, "offset": cp.offset,
              "model": cp.model, "names": s.names, "segment": s.segment, "day": s.day, "written": time.time()}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             h=s.h, c=s.c, scalars=s.scalars, profile=s.profile, last_ts=s.last_ts)
    return buffer.getvalue()


def decode(data: bytes, model: str) -> Checkpoint:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes())
            h, c, last_ts = arrays["h"], arrays["c"], arrays["last_ts"]
            scalars, profile = arrays["scalars"], arrays["profile"]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc}") from None
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {header.get('format')}, this build reads {FORMAT_VERSION}")
    if profile.shape[1:] == (N_PROFILE - N_TAILS,):
        profile = _with_slow_tails(profile)
    if scalars.shape[1:] != (N_SCALARS,) or profile.shape[1:] != (N_PROFILE,):
        raise CheckpointError(f"checkpoint has {scalars.shape[1:]} + {profile.shape[1:]} statistics per stream, "
                              f"this detector keeps {N_SCALARS} + {N_PROFILE}: written by another version; "
                              f"refusing to apply it")
    if header["model"] != model:
        raise CheckpointError(f"checkpoint of {header['topic']}/{header['partition']} was written for model "
                              f"{header['model']}, the loaded model is {model}: refusing to apply it")
    states = StreamStates(header["names"], h, c, scalars, profile, last_ts, header["segment"], header["day"])
    return Checkpoint(header["topic"], header["partition"], header["offset"], header["model"], states)


def _with_slow_tails(profile: np.ndarray) -> np.ndarray:
    """A profile written before the tails had a slow copy (`kernel.PROF.SLOW_TAILS`, detector.tail_slow_share):
    upgrading keeps every stream's state, its slow tails starting as its fast ones, instead of refusing the
    checkpoint and warming every stream up again."""
    return np.concatenate([profile[:, :PROF.SLOW_TAILS], profile[:, :N_TAILS], profile[:, PROF.SLOW_TAILS:]], axis=1)


class LocalStore:
    def __init__(self, path: Path, group: str, model: str):
        self.root = Path(path) / group
        self.model = model

    def _file(self, topic: str, partition: int) -> Path:
        return self.root / topic / f"{partition}.ckpt"

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        try:
            data = self._file(topic, partition).read_bytes()
        except FileNotFoundError:
            return None
        return decode(data, self.model)

    def save(self, checkpoint: Checkpoint) -> None:
        target = self._file(checkpoint.topic, checkpoint.partition)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(encode(checkpoint))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class KafkaStore:
    """Checkpoints in a compacted topic (created if missing). Chunks hold at most ``chunk_streams`` streams."""

    def __init__(self, kafka_settings, topic: str, group: str, model: str, chunk_streams: int = 1000):
        from streamer.clients.kafka_python import create_topic, make_producer, security_options

        self.kafka = kafka_settings
        self.topic = topic
        self.group = group
        self.model = model
        self.chunk_streams = chunk_streams
        self._saved: dict[str, dict] = {}  # key -> the manifest of our latest save (its chunks to tombstone)
        create_topic(kafka_settings.bootstrap_servers, topic, 1, {"cleanup.policy": "compact"},
                     **security_options(kafka_settings))
        self._producer = make_producer(kafka_settings.model_copy(update={
            "producer": {**kafka_settings.producer, "max_request_size": 16 * 1024 * 1024, "linger_ms": 0}}))

    def _key(self, topic: str, partition: int) -> str:
        return f"{self.group}/{topic}/{partition}"

    def save(self, checkpoint: Checkpoint) -> None:
        """Chunks under keys of their own save id, then the manifest naming that id, then tombstones for the
        previous save's chunks: a save cut short leaves the previous checkpoint whole."""
        key = self._key(checkpoint.topic, checkpoint.partition)
        ident = uuid.uuid4().hex
        s = checkpoint.states
        chunks = max(1, -(-len(s.names) // self.chunk_streams))
        for i in range(chunks):
            part = slice(i * self.chunk_streams, (i + 1) * self.chunk_streams)
            piece = Checkpoint(checkpoint.topic, checkpoint.partition, checkpoint.offset, checkpoint.model,
                               s.part(part))
            self._send(f"{key}/{ident}/{i}", encode(piece))
        self._send(key, json.dumps({"id": ident, "chunks": chunks, "offset": checkpoint.offset}).encode())
        previous = self._saved.get(key)
        if previous is not None:
            for i in range(previous["chunks"]):
                self._send(f"{key}/{previous['id']}/{i}", None)
        self._saved[key] = {"id": ident, "chunks": chunks}

    def _send(self, key: str, value: bytes | None) -> None:
        # One record per flush: each produce batch holds one record (see `load` on end offsets).
        self._producer.send(self.topic, key=key.encode(), value=value)
        self._producer.flush()

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        from kafka import KafkaConsumer, TopicPartition

        from streamer.clients.kafka_python import security_options

        key = self._key(topic, partition)
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers, enable_auto_commit=False,
                                 **security_options(self.kafka))
        tp = TopicPartition(self.topic, 0)
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            latest: dict[str, bytes | None] = {}
            while consumer.position(tp) < end:
                for messages in consumer.poll(timeout_ms=500).values():
                    for m in messages:
                        k = m.key.decode()
                        if k == key or k.startswith(key + "/"):
                            latest[k] = m.value  # None: a tombstone
        finally:
            consumer.close()
        if latest.get(key) is None:
            return None
        manifest = json.loads(latest[key])
        self._saved[key] = {"id": manifest["id"], "chunks": manifest["chunks"]}  # tombstoned by our next save
        pieces = []
        for i in range(manifest["chunks"]):
            value = latest.get(f"{key}/{manifest['id']}/{i}")
            if value is None:
                raise CheckpointError(f"checkpoint {key} is missing chunk {i} of {manifest['chunks']}")
            pieces.append(decode(value, self.model))
        states = StreamStates.join([p.states for p in pieces])
        return Checkpoint(topic, partition, manifest["offset"], self.model, states)

    def close(self) -> None:
        self._producer.close()
