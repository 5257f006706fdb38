"""kill -9 at the default checkpoint settings: the committed offset never passes the last checkpoint.

Every test here runs with `[checkpoint]`'s defaults (only the store is chosen), for both client backends and
both stores. The reference is the offline score of the same recording. Every score record of every daemon
life must equal the reference for its tick (the forecast error depends on the LSTM and normaliser state at
every tick, so state restored from one offset and replayed from another would show), and every tick must
have one.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from streamer.config import load_settings
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.chaos.processes import DaemonProcess, scores_complete, stop_all
from tests.chaos.test_crash_and_rebalance import check_against_offline, setup_topics
from tests.conftest import daemon_settings
from tests.integration.test_equivalence import write_recording

PARTITIONS = 3
STORES = ["local", "kafka"]


class GroupOffsets:
    """The consumer group's committed offsets, read from the broker as another client would see them."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        from kafka import KafkaConsumer, TopicPartition

        self.parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    def read(self) -> dict[int, int]:
        return {tp.partition: offset for tp in self.parts if (offset := self.consumer.committed(tp)) is not None}

    def wait_past(self, before: dict[int, int], daemon: DaemonProcess, timeout: float = 60) -> dict[int, int]:
        """Until some partition's committed offset moved past ``before`` (a commit of this daemon's life)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.read()
            if any(offset > before.get(p, 0) for p, offset in now.items()):
                return now
            assert daemon.proc.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no commit past {before} within {timeout}s\n{daemon.log_path.read_text()[-3000:]}")

    def close(self) -> None:
        self.consumer.close()


def _env(tmp_path, topic: str, client: str, store: str) -> dict[str, str]:
    env = {"STREAMER_KAFKA__CLIENT": client, "STREAMER_KAFKA__SCORES_TOPIC": topic + "-scores"}
    if store == "local":
        env["STREAMER_CHECKPOINT__PATH"] = str(tmp_path / "state")
    else:
        env |= {"STREAMER_CHECKPOINT__STORE": "kafka", "STREAMER_CHECKPOINT__TOPIC": topic + "-checkpoints"}
    return env


def _offline(path, model):
    offline, _ = score_file(path, load_settings(None), model)
    return offline


@pytest.mark.parametrize("store", STORES)
def test_kill_9_after_the_first_commit(broker, tmp_path, model, client, store):
    """The issue's operator run: kill -9 as soon as the first offsets are committed, long before the first
    interval checkpoint (10 s), with most of the recording already processed. The restarted daemon must
    restore a checkpoint that covers the committed offsets, not start empty streams there."""
    path = tmp_path / "recording.jsonl.gz"
    total = write_recording(path, streams=20, length=1500, seed=5)
    topic = setup_topics(broker, PARTITIONS)
    replay(path, topic, daemon_settings(broker.bootstrap, [topic]), progress=False)
    group = f"first-commit-{uuid.uuid4().hex[:6]}"
    env = _env(tmp_path, topic, client, store)
    offsets = GroupOffsets(broker.bootstrap, group, topic)
    first = DaemonProcess(broker.bootstrap, topic, group, tmp_path, **env).start()
    second = None
    try:
        committed = offsets.wait_past({}, first)
        first.kill()
        assert sum(committed.values()) < total, "the whole recording was committed before the kill"
        second = DaemonProcess(broker.bootstrap, topic, group, tmp_path, **env).start()
        records = scores_complete(broker.bootstrap, topic + "-scores", PARTITIONS, total, timeout=120)
        check_against_offline(records, _offline(path, model))
        log = second.log_path.read_text()
        assert "checkpoint restored" in log
        assert "committed offset without a checkpoint" not in log
        assert second.terminate() == 0
    finally:
        offsets.close()
        stop_all(first, second)


@pytest.mark.parametrize("store", STORES)
def test_crash_loop_while_ticks_arrive(broker, tmp_path, model, client, store):
    """Six daemon lives over one recording cut into six slices of time. Each life starts while its slice is
    being produced (paced over ~5 s), scores some of it, and five of them are killed -9 a random 0.2-3 s
    later; the last runs to the end."""
    lives_killed, rows, streams = 5, 900, 20
    path = tmp_path / "recording.jsonl.gz"
    total = write_recording(path, streams=streams, length=rows, seed=6)
    topic = setup_topics(broker, PARTITIONS)
    group = f"crash-loop-{uuid.uuid4().hex[:6]}"
    env = _env(tmp_path, topic, client, store)
    settings = daemon_settings(broker.bootstrap, [topic])
    t0, minutes = 1_760_000_000, rows // (lives_killed + 1)  # write_recording: row i at t0 + 60 i (+ stream)

    def produce(k: int) -> threading.Thread:
        """Slice k of the recording, paced: its minutes of ticks at 1,800x take 5 s."""
        bounds = {"start": t0 + 60 * minutes * k, "end": t0 + 60 * minutes * (k + 1) - 1}
        thread = threading.Thread(target=replay, args=(path, topic, settings), daemon=True,
                                  kwargs={"speed": 1800.0, "progress": False, **bounds})
        thread.start()
        return thread

    rng = random.Random(7)
    lives: list[DaemonProcess] = []
    try:
        for k in range(lives_killed + 1):
            daemon = DaemonProcess(broker.bootstrap, topic, group, tmp_path, **env).start()
            lives.append(daemon)
            producer = produce(k)
            if k == lives_killed:
                break
            daemon.wait_metric("streamer_messages_total", lambda v: v > 0, timeout=120, outcome="scored")
            time.sleep(rng.uniform(0.2, 3.0))  # the moment of the crash, not a wait for a condition
            daemon.kill()
            producer.join(60)  # the next slice follows this one (each stream's ticks stay in time order)
        producer.join(60)
        records = scores_complete(broker.bootstrap, topic + "-scores", PARTITIONS, total, timeout=180)
        check_against_offline(records, _offline(path, model))
        for daemon in lives[1:]:
            log = daemon.log_path.read_text()
            assert "checkpoint restored" in log and "committed offset without a checkpoint" not in log
        assert lives[-1].terminate() == 0
    finally:
        stop_all(*lives)
