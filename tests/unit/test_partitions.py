"""Partition bookkeeping: state and offsets move together.

First the rules of `Partitions` on their own, then the daemon's run loop driven by a fake consumer and a
fake checkpoint store (no broker): at every moment of a scripted run, no committed offset passes the
offset of the partition's last saved checkpoint.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from operator import attrgetter

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.clients.base import PollFailed
from streamer.config import load_settings
from streamer.daemon.partitions import CheckpointSchedule, Partitions

TopicPartition = namedtuple("TopicPartition", "topic partition")
A, B = TopicPartition("ticks", 0), TopicPartition("ticks", 1)


def test_durable_commits_only_checkpointed_offsets():
    book = Partitions(durable=True)
    book.assign([A, B])
    assert book.take_unpositioned() == {A, B} and book.take_unpositioned() == set()
    book.processed(A, 100)
    assert book.commits() == {}  # processed, not saved: nothing may be committed
    assert book.never_saved() and book.unsaved() == {A: 100}
    book.saved(A, 100)
    book.processed(A, 250)  # moves on after the checkpoint
    assert book.commits() == {A: 100}  # the checkpoint's offset, not the processed one
    book.committed({A: 100})
    assert book.commits() == {} and not book.never_saved() and book.unsaved() == {A: 250}


def test_not_durable_commits_processed_offsets():
    book = Partitions(durable=False)
    book.assign([A])
    book.processed(A, 100)
    assert book.commits() == {A: 100}
    book.committed({A: 100})
    assert book.commits() == {}


def test_restored_partition_recommits_its_checkpoint_offset():
    """A commit lost after a save leaves the group behind the checkpoint: the restored offset is sent again."""
    book = Partitions(durable=True)
    book.assign([A])
    book.restored(A, 500)
    assert book.unsaved() == {} and not book.never_saved()
    assert book.commits() == {A: 500}


def test_revoked_partition_yields_its_commit_and_lost_one_nothing():
    book = Partitions(durable=True)
    book.assign([A, B])
    for tp in (A, B):
        book.processed(tp, 10)
        book.saved(tp, 10)
    assert book.release([A], commit=True) == {A: 10}
    assert book.release([B], commit=False) == {}
    assert book.owned == set() and book.commits() == {} and book.unsaved() == {}


def test_failed_commit_is_retried_and_a_released_partition_is_never_marked():
    book = Partitions(durable=False)
    book.assign([A])
    book.processed(A, 7)
    assert book.commits() == {A: 7}  # the caller's commit failed: not marked, asked again
    assert book.commits() == {A: 7}
    book.release([A], commit=False)
    book.committed({A: 7})  # a late acknowledgement of a partition we no longer own
    book.assign([A])
    book.processed(A, 9)
    assert book.commits() == {A: 9}


def test_owner_ids_are_stable_per_partition():
    book = Partitions(durable=True)
    assert book.owner(A) == book.owner(A) != book.owner(B)


def test_claimed_partitions_are_not_handed_out_for_positioning():
    book = Partitions(durable=True)
    book.assign([A, B])
    book.claim([A])
    assert book.take_unpositioned() == {B}


def test_schedule_is_due_by_time_or_messages():
    now = [0.0]
    schedule = CheckpointSchedule(10.0, 1000, lambda: now[0])
    assert not schedule.due()
    schedule.count(999)
    assert not schedule.due()
    schedule.count(1)
    assert schedule.due()
    schedule.restart()
    now[0] = 9.9
    assert not schedule.due()
    now[0] = 10.0
    assert schedule.due()


# --- the run loop against a fake consumer and a fake store --------------------------------------------------

Message = namedtuple("Message", "value key offset partition timestamp")


class FakeConsumer:
    """The daemon's consumer surface over scripted polls; records every commit with the saves before it."""

    value, key, offset, partition = (staticmethod(attrgetter(f)) for f in ("value", "key", "offset", "partition"))

    def __init__(self, polls, store, stop: threading.Event, committed=None):
        self.polls = list(polls)
        self.store = store
        self.stop = stop
        self.group_committed = dict(committed or {})
        self.commits: list[tuple[dict, dict]] = []  # (offsets committed, last saved offsets at that moment)
        self.seeks: dict = {}
        self.listener = None

    def subscribe(self, topics, listener):
        self.listener = listener
        listener.assigned([A, B])

    def poll(self, timeout_ms, max_records):
        if not self.polls:
            self.stop.set()
            return {}
        polled = self.polls.pop(0)
        if isinstance(polled, Exception):
            raise polled
        return polled or {}  # None: an empty poll

    def seek(self, tp, offset):
        self.seeks[tp] = offset

    def commit(self, offsets):
        self.commits.append((dict(offsets), dict(self.store.offsets)))
        self.group_committed.update(offsets)

    def commit_revoked(self, offsets):
        self.commit(offsets)

    def committed(self, tp):
        return self.group_committed.get(tp)

    def start_offset(self, tp, timestamp_ms):
        return None

    def lag(self, partitions):
        return {}

    def connected(self):
        return True, {}

    def close(self):
        self.listener.revoked([A, B])


class FakeStore:
    model = "fake"

    def __init__(self, checkpoints=None):
        self.checkpoints = dict(checkpoints or {})
        self.offsets = {(cp.topic, cp.partition): cp.offset for cp in self.checkpoints.values()}

    def load(self, topic, partition):
        return self.checkpoints.get((topic, partition))

    def save(self, checkpoint):
        self.checkpoints[(checkpoint.topic, checkpoint.partition)] = checkpoint
        self.offsets[(checkpoint.topic, checkpoint.partition)] = checkpoint.offset


def _messages(tp, first, n, t0=1_767_225_600):
    return [Message(orjson.dumps({"stream": f"s{tp[1]}-{i % 3}", "ts": t0 + 60 * (first + i), "value": float(i % 7)}),
                    None, first + i, tp[1], 0) for i in range(n)]


@pytest.fixture
def daemon_with(model, monkeypatch):
    """A Daemon whose consumer and store are fakes; returns (daemon, consumer) after its loop ended."""
    from streamer.daemon import loop as daemon_module

    def run(polls, checkpoints=None, committed=None, **checkpoint):
        settings = load_settings(None)
        settings = settings.model_copy(update={
            "checkpoint": settings.checkpoint.model_copy(update={"store": "kafka", **checkpoint}),
            "metrics": settings.metrics.model_copy(update={"port": 0})})
        stop = threading.Event()
        store = FakeStore(checkpoints)
        consumer = FakeConsumer(polls, store, stop, committed)
        monkeypatch.setattr(daemon_module, "open_consumer", lambda k: consumer)
        daemon = daemon_module.Daemon(settings, registry=CollectorRegistry(), model=model, stop=stop)
        monkeypatch.setattr(daemon, "_open_store", lambda: store)
        daemon.run()
        return daemon, consumer, store

    return run


def _assert_commits_never_pass_checkpoints(consumer):
    assert consumer.commits, "nothing was committed"
    for offsets, saved in consumer.commits:
        for tp, offset in offsets.items():
            assert tp in saved and offset <= saved[tp], f"committed {tp}@{offset} with checkpoint {saved.get(tp)}"


def test_loop_commits_checkpointed_offsets_only(daemon_with):
    """A long interval: the first batch of each partition is checkpointed and committed at once, later
    batches are committed only with the shutdown checkpoint."""
    polls = [{A: _messages(A, 0, 50)}, {B: _messages(B, 0, 40)}, {A: _messages(A, 50, 30), B: _messages(B, 40, 5)}]
    daemon, consumer, store = daemon_with(polls, interval_seconds=3600)
    _assert_commits_never_pass_checkpoints(consumer)
    firsts = [offsets for offsets, _ in consumer.commits[:2]]
    assert firsts == [{A: 50}, {B: 40}]  # right after each partition's first batch
    assert consumer.group_committed == {A: 80, B: 45} == store.offsets  # shutdown: checkpoint, then commit


def test_loop_after_a_crash_restores_and_seeks_to_the_checkpoint(daemon_with):
    """The second life of a partition: its checkpoint is restored and the consumer seeks to its offset."""
    first, _, store = daemon_with([{A: _messages(A, 0, 60)}], interval_seconds=3600)
    daemon, consumer, _ = daemon_with([None, {A: _messages(A, 60, 10)}], checkpoints=store.checkpoints,
                                      committed={A: 50}, interval_seconds=3600)
    assert consumer.seeks == {A: 60}
    assert daemon.registry.get_sample_value("streamer_checkpoint_missing_total") == 0
    _assert_commits_never_pass_checkpoints(consumer)
    assert consumer.group_committed == {A: 70}


def test_a_failed_poll_is_reported_and_the_loop_goes_on(daemon_with):
    """A broker outage surfaces as a failed poll (kafka-python re-raises its heartbeat loop's error once): the
    daemon keeps running, and the next poll's messages are scored and committed."""
    polls = [{A: _messages(A, 0, 20)}, PollFailed("KafkaConnectionError: 111 ECONNREFUSED"), {A: _messages(A, 20, 10)}]
    daemon, consumer, store = daemon_with(polls, interval_seconds=3600)
    scored = daemon.registry.get_sample_value("streamer_messages_total", {"outcome": "scored", "topic": A.topic})
    assert scored == 30
    assert consumer.group_committed == {A: 30} == {A: store.offsets[A]}
    _assert_commits_never_pass_checkpoints(consumer)


def test_committed_offset_without_checkpoint_is_counted_once(daemon_with):
    daemon, consumer, _ = daemon_with([{A: _messages(A, 5, 10)}], committed={A: 5, B: 3})
    assert daemon.registry.get_sample_value("streamer_checkpoint_missing_total") == 2  # A and B
    assert consumer.seeks == {}  # policy: resume at the committed offset, fresh streams
    _assert_commits_never_pass_checkpoints(consumer)
