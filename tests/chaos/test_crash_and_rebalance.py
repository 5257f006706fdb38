"""Failure tests with real processes and a real broker: kill -9 and restart, members joining and leaving.

The reference is the offline score of the same recording (equal to an uninterrupted daemon run, see
tests/integration/test_equivalence.py). Every score record the daemons emitted, before and after a
failure, must equal the reference for its tick: state was neither skipped nor applied twice. Every tick
must have a record: nothing was left unscored.
"""

from __future__ import annotations

import math
import threading
import uuid

import pytest

from streamer.config import load_settings
from streamer.devtools.broker import create_topic
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.chaos.processes import DaemonProcess, scores_complete, stop_all, wait_until
from tests.conftest import daemon_settings
from tests.integration.test_equivalence import write_recording

STREAMS, LENGTH, T0 = 60, 400, 1_760_000_000  # write_recording: tick i of stream s at T0 + 60 * i + s


def tick_ts(i: int) -> int:
    """The first timestamp of tick index ``i`` (every stream's tick i lies in [tick_ts(i), tick_ts(i + 1)))."""
    return T0 + 60 * i


def produce_ticks(bootstrap: str, topic: str, path, first: int, end: int | None = None,
                  speed: float | None = None) -> int:
    """Produce ticks ``first`` <= i < ``end`` of every stream of the recording; returns how many."""
    report = replay(path, topic, daemon_settings(bootstrap, [topic]), speed=speed, start=tick_ts(first),
                    end=None if end is None else tick_ts(end) - 1, progress=False)
    return report.produced


def check_against_offline(records, offline):
    """Every score record equals the offline score and forecast error of its tick (the error depends on the
    LSTM and normaliser state at every tick, where most scores are 0 outside incidents)."""
    reference = {(row.stream, float(row.timestamp)): row for row in offline}
    seen = {}
    for rec in records:
        key = (rec["stream"], rec["ts"])
        row = reference[key]
        assert abs(rec["anomaly_score"] - row.score) <= 1e-5, f"{key}: {rec['anomaly_score']} != {row.score}"
        assert (rec["error"] is None) == math.isnan(row.error), key
        assert rec["error"] is None or abs(rec["error"] - row.error) <= 1e-5 * max(1.0, abs(row.error)), key
        seen[key] = rec["anomaly_score"]
    assert set(seen) == set(reference), f"{len(set(reference) - set(seen))} ticks never scored"
    return len(records) - len(seen)  # duplicates: re-scored after a failure (at-least-once outputs)


@pytest.fixture
def recording(tmp_path, model):
    path = tmp_path / "recording.jsonl.gz"
    total = write_recording(path, streams=STREAMS, length=LENGTH, seed=11)
    offline, _ = score_file(path, load_settings(None), model)
    return path, total, offline


def setup_topics(broker, partitions):
    topic = f"chaos-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions)
    create_topic(broker.bootstrap, topic + "-scores", partitions)
    return topic


def test_kill_9_and_restart_resumes_from_the_checkpoint(broker, tmp_path, recording, client):
    """kill -9 between checkpoints; the second daemon restores the last checkpoint and seeks to its offset.

    Made deterministic by what is produced when, not by timing: a first daemon scores the first half of the
    recording and stops cleanly, checkpointing exactly that half. The daemon under test restores it, scores
    ``extra`` more ticks (in several polls; fewer than interval_messages and no timed checkpoint, so its
    state runs past its last checkpoint) and is killed -9 once their score records are out. The second daemon
    must restore the last checkpoint and redo exactly the work past it (the duplicates), then the rest.
    """
    path, total, offline = recording
    topic = setup_topics(broker, 3)
    env = {"STREAMER_KAFKA__CLIENT": client,
           "STREAMER_KAFKA__SCORES_TOPIC": topic + "-scores", "STREAMER_KAFKA__MAX_POLL_RECORDS": "300",
           "STREAMER_CHECKPOINT__PATH": str(tmp_path / "state"), "STREAMER_CHECKPOINT__INTERVAL_MESSAGES": "1000",
           "STREAMER_CHECKPOINT__INTERVAL_SECONDS": "3600"}
    group = f"crash-{client}"
    daemons: list[DaemonProcess] = []

    def daemon() -> DaemonProcess:
        daemons.append(DaemonProcess(broker.bootstrap, topic, group, tmp_path, **env).start())
        return daemons[-1]

    try:
        half = produce_ticks(broker.bootstrap, topic, path, 0, LENGTH // 2)
        first = daemon()
        first.wait_metric("streamer_messages_total", lambda v: v == half, timeout=120, outcome="scored")
        assert first.terminate() == 0  # a clean stop: its checkpoint covers exactly the first half

        extra = produce_ticks(broker.bootstrap, topic, path, LENGTH // 2, LENGTH // 2 + 10)
        assert 300 < extra < 1000  # more than one poll (max_poll_records), fewer than interval_messages
        crashing = daemon()
        crashing.wait_metric("streamer_messages_total", lambda v: v == extra, timeout=120, outcome="scored")
        out = scores_complete(broker.bootstrap, topic + "-scores", 3, half + extra, timeout=60)
        assert len({(r["stream"], r["ts"]) for r in out}) == half + extra  # its score records are out
        crashing.kill()  # between checkpoints: its state is past its last checkpoint

        rest = produce_ticks(broker.bootstrap, topic, path, LENGTH // 2 + 10)
        assert half + extra + rest == total
        second = daemon()
        second.wait_up()
        records = scores_complete(broker.bootstrap, topic + "-scores", 3, total, timeout=120)
        duplicates = check_against_offline(records, offline)
        restored: dict[str, int] = {}  # partition -> offset of its first restore (a later one would be of a
        for record in second.log_records():  # checkpoint this daemon wrote itself, on a revocation)
            if record.get("msg") == "checkpoint restored":
                restored.setdefault(record["partition"], record["offset"])
        assert set(restored) == {f"{topic}/{p}" for p in range(3)}, restored  # every partition, from a checkpoint
        # the redone work is exactly what the killed daemon did past its last checkpoint (an offset is the next
        # message to process, so the checkpoints' offsets add up to the messages they cover)
        assert 0 < duplicates <= extra
        assert sum(restored.values()) + duplicates == half + extra
        assert second.terminate() == 0
        print(f"kill -9: {total} ticks; {half} before a clean stop, {extra} more then kill -9; restored at "
              f"{sorted(restored.values())} (sum {sum(restored.values())}); {duplicates} ticks redone")
    finally:
        stop_all(*daemons)


def test_members_joining_and_leaving_during_replay(broker, tmp_path, recording, client):
    """Three members over six partitions: two join and one leaves while the recording is being produced.

    The recording spans 400 minutes, replayed at 600x: the first 300 minutes (30 s) while the first member
    consumes and the two others join (a member takes ~5 to 15 s from start to its first assignment: imports,
    the kernel's compilation, the group join); the last 100 only after the first member has left, so the
    leave always happens mid-stream, however fast or slow the machine, and the members that stay must take
    its partitions over from its checkpoints. (Tansu stalls a rebalance when a member leaves before the
    previous one settled, so the test waits until the group has settled, every partition owned by exactly
    one member, before removing one; real Kafka does not.)
    """
    path, total, offline = recording
    topic = setup_topics(broker, 6)
    partitions = {f"{topic}/{p}" for p in range(6)}
    env = {"STREAMER_KAFKA__CLIENT": client,
           "STREAMER_KAFKA__SCORES_TOPIC": topic + "-scores", "STREAMER_KAFKA__MAX_POLL_RECORDS": "200",
           "STREAMER_CHECKPOINT__PATH": str(tmp_path / "state"), "STREAMER_CHECKPOINT__INTERVAL_MESSAGES": "2000"}
    members = [DaemonProcess(broker.bootstrap, topic, f"rebalance-{client}", tmp_path, **env).start()]
    started = list(members)
    leave = threading.Event()
    produced, failures = [], []

    def produce() -> None:
        try:
            produced.append(produce_ticks(broker.bootstrap, topic, path, 0, 300, speed=600.0))
            leave.wait(300)
            produced.append(produce_ticks(broker.bootstrap, topic, path, 300, speed=600.0))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        members[0].wait_metric("streamer_ready", lambda v: v == 1)
        producer.start()
        # the first member is consuming what arrives before the others join
        members[0].wait_metric("streamer_messages_total", lambda v: v >= STREAMS * 10, outcome="scored")
        members += [DaemonProcess(broker.bootstrap, topic, f"rebalance-{client}", tmp_path, **env).start()
                    for _ in range(2)]
        started += members[1:]

        def settled() -> bool:
            owned = [member.owned() for member in members]
            return (all(owned) and sum(map(len, owned)) == len(partitions) and set().union(*owned) == partitions
                    and all(member.metric("streamer_ready") == 1 for member in members))

        wait_until(settled, "three members owning the six partitions", timeout=120, alive=tuple(members))
        assert producer.is_alive() and not failures, "the replay ended before the membership changed"
        assert members.pop(0).terminate() == 0  # a member leaves; the rest of the recording arrives after it
        leave.set()
        producer.join(120)
        assert not producer.is_alive() and not failures, failures
        assert sum(produced) == total
        records = scores_complete(broker.bootstrap, topic + "-scores", 6, total, timeout=120)
        check_against_offline(records, offline)
        for member in members:
            assert member.terminate() == 0
    finally:
        leave.set()
        stop_all(*started)
