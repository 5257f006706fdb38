"""Checkpoints under interruption, for both stores.

- LocalStore, real processes: a daemon checkpointing after nearly every poll (``interval_messages`` 200,
  polls of 250, 600 streams, about 200 a partition, checkpoint files of about 300 kB each) is stopped at random
  moments, by SIGTERM, by kill -9, and by SIGTERM while another member joins and takes its partitions over
  (a rebalance). The moments are random points of the work, not of the clock: the recording is produced a
  slice before each round, and the daemon is signalled once it has scored a random part of that slice, so it
  is mid-backlog whatever the machine's speed.
  After each round every checkpoint file must load with `LocalStore.load` and belong to its
  partition; a SIGTERMed process leaves no temporary file; temporary files a killed process left behind are
  never read. A last daemon then finishes the recording, and every score record of every round equals the
  offline score (duplicates allowed): each restart resumed from a consistent checkpoint.
- KafkaStore, against the session broker: a checkpoint of more than ``chunk_streams`` streams (several
  chunks) loads back equal; a second, smaller one loads back equal (the higher chunks of the first are
  stale and ignored); partitions whose keys share a prefix do not mix; a checkpoint of another model
  fingerprint is refused with CheckpointError (both stores); and a save interrupted after any of its chunk
  records (what kill -9, an OOM kill or a lost node does) leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka.partitioner.default import murmur2

from streamer.config import load_settings
from streamer.core.detector import N_PROFILE, N_SCALARS, StreamStates
from streamer.daemon.checkpoint import Checkpoint, CheckpointError, KafkaStore, LocalStore
from streamer.devtools.broker import create_topic
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.chaos.processes import DaemonProcess, scores_complete, stop_all, wait_until
from tests.chaos.test_crash_and_rebalance import check_against_offline
from tests.conftest import daemon_settings
from tests.integration.test_equivalence import write_recording

PARTITIONS = 3
STREAMS, LENGTH = 600, 250  # warm-up is 150 ticks: the last 100 of each stream score for real


def _partition_of(stream: str) -> int:
    return (murmur2(stream.encode()) & 0x7FFFFFFF) % PARTITIONS  # kafka-python's default partitioner


def _check_local_store(root: Path, group: str, topic: str, fingerprint: str, streams_of: dict[int, set],
                       sizes: dict[int, int]) -> tuple[int, list[str]]:
    """Every checkpoint file loads and belongs to its partition; returns (files, leftover temporary files)."""
    store = LocalStore(root, group, fingerprint)
    directory = root / group / topic
    files = sorted(directory.glob("*.ckpt")) if directory.is_dir() else []
    for path in files:
        partition = int(path.stem)
        checkpoint = store.load(topic, partition)  # CheckpointError if damaged or partial
        assert checkpoint is not None
        assert (checkpoint.topic, checkpoint.partition) == (topic, partition)
        assert 0 < checkpoint.offset <= sizes[partition], (partition, checkpoint.offset, sizes[partition])
        names = checkpoint.states.names
        assert names and set(names) <= streams_of[partition]
        assert checkpoint.states.h.shape[0] == checkpoint.states.scalars.shape[0] == len(names)
    leftovers = sorted(p.name for p in directory.glob(".*.tmp")) if directory.is_dir() else []
    return len(files), leftovers


def _wait_for_write(daemon: DaemonProcess, directory: Path, timeout: float = 3.0) -> bool:
    """Until a checkpoint write of this process is in progress (its temporary file exists), at most ``timeout``."""
    suffix = f".{daemon.proc.pid}.tmp"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(name.endswith(suffix) for name in os.listdir(directory)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False


@pytest.mark.slow
def test_sigterm_and_kill_at_random_moments_leave_loadable_checkpoints(broker, tmp_path, model):
    rng = random.Random(4)
    recording = tmp_path / "recording.jsonl.gz"
    total = write_recording(recording, streams=STREAMS, length=LENGTH, seed=3)
    offline, _ = score_file(recording, load_settings(None), model)
    assert sum(row.score > 0 for row in offline) > total // 1000  # past the warm-up: the comparison means something
    topic = f"ckpt-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    create_topic(broker.bootstrap, topic + "-scores", PARTITIONS)
    t0 = 1_760_000_000  # write_recording: tick i of stream s at t0 + 60 * i + s
    produced = []

    def produce_until(i: int | None) -> int:
        """The recording from where the last call stopped up to (excluding) tick index ``i`` (None: the end);
        per stream a contiguous run of its ticks, in order. Returns how many messages."""
        start = t0 + 60 * produced[-1][0] if produced else None
        end = None if i is None else t0 + 60 * i - 1
        n = replay(recording, topic, daemon_settings(broker.bootstrap, [topic]), start=start, end=end,
                   progress=False).produced
        produced.append((i, n))
        return n

    streams_of = {p: set() for p in range(PARTITIONS)}
    for s in range(STREAMS):
        streams_of[_partition_of(f"s{s:02d}")].add(f"s{s:02d}")
    sizes = {p: LENGTH * len(names) for p, names in streams_of.items()}
    state, group, fingerprint = tmp_path / "state", "ckpt", model.fingerprint()
    env = {"STREAMER_KAFKA__SCORES_TOPIC": topic + "-scores", "STREAMER_KAFKA__MAX_POLL_RECORDS": "250",
           "STREAMER_CHECKPOINT__PATH": str(state), "STREAMER_CHECKPOINT__INTERVAL_MESSAGES": "200"}

    def member() -> DaemonProcess:
        return DaemonProcess(broker.bootstrap, topic, group, tmp_path, **env).start()

    started: list[DaemonProcess] = []
    report = []
    writes_hit = 0
    try:
        for round_, how in enumerate(["sigterm", "kill-in-write", "rebalance", "kill", "sigterm-in-write"]):
            backlog = produce_until(40 * (round_ + 1))  # about 24,000 messages more for this round
            target = rng.randint(250, backlog // 3)  # signal with most of the slice still to do
            first = member()
            started.append(first)
            first.wait_metric("streamer_ready", lambda v: v == 1, timeout=90)
            first.wait_metric("streamer_messages_total", lambda v, target=target: v >= target, timeout=120,
                              outcome="scored")
            if how == "rebalance":  # a second member joins; SIGTERM the first while the group rebalances
                second = member()
                started.append(second)
                second.wait_up(timeout=90)  # subscribed: its join starts the rebalance
                # the first has given its partitions up for the rebalance (kafka-python's eager protocol): the
                # group is mid-rebalance until it rejoins
                wait_until(lambda first=first: any(r.get("msg") == "partitions revoked" for r in first.log_records()),
                           "the first member's revocation", timeout=90, alive=(first, second))
                scored = first.metric("streamer_messages_total", outcome="scored")
                assert first.terminate(timeout=30) == 0
                # Tansu never completes a rebalance that a member left in the middle of (reproduced with two
                # bare kafka-python consumers; real Kafka completes it): the second member now waits for an
                # assignment that never comes. It must still stop cleanly on SIGTERM, and the group is
                # abandoned: the following rounds use a new group, with the checkpoint directory moved over
                # (checkpoints restore by partition; the new group has no commits, so restored partitions
                # resume from their checkpoints and the others from the beginning, as a fresh group would).
                assert second.terminate(timeout=30) == 0
                stopped = [first, second]
            else:
                scored = first.metric("streamer_messages_total", outcome="scored")
                if how.endswith("-in-write"):  # the moment its temporary checkpoint file exists
                    writes_hit += _wait_for_write(first, state / group / topic)
                if how.startswith("kill"):
                    first.kill()
                else:
                    assert first.terminate(timeout=30) == 0
                stopped = [first]
            files, leftovers = _check_local_store(state, group, topic, fingerprint, streams_of, sizes)
            if not how.startswith("kill"):  # a clean stop finishes its write: no temporary file of its own remains
                mine = [name for name in leftovers for d in stopped if name.endswith(f".{d.proc.pid}.tmp")]
                assert not mine, mine
            report.append(f"{how}: {backlog} messages more, scored {scored:.0f} (>= {target}) before the signal, "
                          f"{files} checkpoints, {len(leftovers)} temporary files left")
            if how == "rebalance":
                old_group, group = group, group + "-after-rebalance"
                (state / old_group).rename(state / group)

        produce_until(None)
        assert sum(n for _, n in produced) == total
        last = member()
        started.append(last)
        records = scores_complete(broker.bootstrap, topic + "-scores", PARTITIONS, total, timeout=180)
        assert last.proc.poll() is None, last.log_path.read_text()[-3000:]
        duplicates = check_against_offline(records, offline)
        assert last.terminate(timeout=30) == 0
        _check_local_store(state, group, topic, fingerprint, streams_of, sizes)
        restored = [d for d in started[1:] if "checkpoint restored" in d.log_path.read_text()]
        assert len(restored) >= len(started) - 2, "restarted daemons did not resume from their checkpoints"
        print(f"checkpoints: {total} ticks; " + "; ".join(report)
              + f"; signalled during a write {writes_hit} of 2 times; {duplicates} duplicate score records")
    finally:
        stop_all(*started)


# --- the stores directly ----------------------------------------------------------------------------------


def _states(n: int, seed: int, hidden: int, prefix: str = "s") -> StreamStates:
    rng = np.random.default_rng(seed)
    segments = [None, "run-1", 7, 2.5, True]
    return StreamStates(
        names=[f"{prefix}{i:05d}/ü" for i in range(n)],
        h=rng.standard_normal((n, hidden)).astype(np.float32),
        c=rng.standard_normal((n, hidden)).astype(np.float32),
        scalars=rng.standard_normal((n, N_SCALARS)),
        profile=rng.standard_normal((n, N_PROFILE)).astype(np.float32),
        last_ts=rng.uniform(1.7e9, 1.8e9, n),
        segment=[segments[i % len(segments)] for i in range(n)],
        day=[None if i % 3 else 20_000 + i for i in range(n)])


def _assert_equal(loaded: Checkpoint, saved: Checkpoint) -> None:
    assert (loaded.topic, loaded.partition, loaded.offset) == (saved.topic, saved.partition, saved.offset)
    a, b = loaded.states, saved.states
    assert a.names == b.names and a.segment == b.segment and a.day == b.day
    for field in StreamStates.ARRAYS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert getattr(a, field).dtype == getattr(b, field).dtype


@pytest.fixture
def kafka_store(broker, model):
    settings = daemon_settings(broker.bootstrap, ["ticks"])
    store = KafkaStore(settings.kafka, f"checkpoints-{uuid.uuid4().hex[:8]}", "grp", model.fingerprint(),
                       chunk_streams=1000)
    yield store
    store.close()


def test_kafka_store_round_trip_with_chunks(kafka_store, broker, model):
    hidden, fp = model.hidden_size, model.fingerprint()
    big = Checkpoint("ticks", 1, 123_456, fp, _states(2500, 1, hidden))  # 3 chunks
    kafka_store.save(big)
    _assert_equal(kafka_store.load("ticks", 1), big)

    small = Checkpoint("ticks", 1, 130_000, fp, _states(700, 2, hidden, prefix="t"))  # 1 chunk; 1 and 2 stale
    kafka_store.save(small)
    _assert_equal(kafka_store.load("ticks", 1), small)

    medium = Checkpoint("ticks", 1, 140_000, fp, _states(1500, 3, hidden))  # 2 chunks over stale ones
    kafka_store.save(medium)
    _assert_equal(kafka_store.load("ticks", 1), medium)

    other = Checkpoint("ticks", 11, 5, fp, _states(10, 4, hidden, prefix="o"))  # key g/ticks/11 vs g/ticks/1
    kafka_store.save(other)
    _assert_equal(kafka_store.load("ticks", 11), other)
    _assert_equal(kafka_store.load("ticks", 1), medium)
    assert kafka_store.load("ticks", 2) is None

    stranger = KafkaStore(kafka_store.kafka, kafka_store.topic, "grp", "another-model-fingerprint")
    try:
        with pytest.raises(CheckpointError, match="model"):
            stranger.load("ticks", 1)
    finally:
        stranger.close()


def test_local_store_refuses_another_model_and_survives_an_interrupted_write(tmp_path, model, monkeypatch):
    hidden, fp = model.hidden_size, model.fingerprint()
    store = LocalStore(tmp_path, "grp", fp)
    first = Checkpoint("ticks", 0, 10, fp, _states(300, 5, hidden))
    store.save(first)
    _assert_equal(store.load("ticks", 0), first)
    with pytest.raises(CheckpointError, match="model"):
        LocalStore(tmp_path, "grp", "another-model-fingerprint").load("ticks", 0)

    second = Checkpoint("ticks", 0, 20, fp, _states(400, 6, hidden))

    def crash(*args):
        raise OSError("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)  # the process dies after writing the temporary file
    with pytest.raises(OSError):
        store.save(second)
    monkeypatch.undo()
    assert list((tmp_path / "grp" / "ticks").glob(".*.tmp")), "the interrupted write left no temporary file"
    _assert_equal(store.load("ticks", 0), first)  # the old one, whole
    store.save(second)  # the next save of the same process replaces its own temporary file
    _assert_equal(store.load("ticks", 0), second)
    assert not list((tmp_path / "grp" / "ticks").glob(f".*.{os.getpid()}.tmp"))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("records_written", [1, 2, 3])
def test_kafka_store_interrupted_save_keeps_the_previous_checkpoint(kafka_store, model, records_written):
    """A save dies after ``records_written`` of its records (3 chunks + manifest); the previous checkpoint,
    whose manifest and chunks are all still in the topic (chunks are keyed by their save's id, and the old
    ones are tombstoned only after the new manifest), must load."""
    hidden, fp = model.hidden_size, model.fingerprint()
    previous = Checkpoint("ticks", 0, 1000, fp, _states(2500, 7, hidden))
    kafka_store.save(previous)
    send, calls = kafka_store._send, []

    def dying_send(key, value):
        if len(calls) == records_written:
            raise _Killed(key)
        calls.append(key)
        send(key, value)

    kafka_store._send = dying_send
    with pytest.raises(_Killed):
        kafka_store.save(Checkpoint("ticks", 0, 2000, fp, _states(2500, 8, hidden)))
    kafka_store._send = send
    _assert_equal(kafka_store.load("ticks", 0), previous)
