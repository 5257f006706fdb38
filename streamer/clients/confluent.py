"""The optional confluent-kafka (librdkafka) client backend: ``kafka.client = "confluent-kafka"``.

The surface of `streamer.clients.base` (as `streamer.clients.kafka_python`, the default), so the daemon does
not know which client it drives:

* ``poll`` returns ``{TopicPartition: [message, ...]}`` with librdkafka's own ``Message`` objects, never a
  Python wrapper per message (it would spend much of what this client saves: docs/perf.md, "Why the
  settings"); the daemon reads
  them through the accessors ``value``, ``key``, ``offset``, ``partition``, ``timestamp_ms``;
* rebalance callbacks (assigned, revoked, lost) run inside ``poll`` on the calling thread, and ``close``
  runs the final revocation the same way;
* ``commit`` (every ``kafka.commit_interval_ms``) is asynchronous: the loop does not wait a round trip, commits
  are sent in order on one connection, failures are logged from the ``on_commit`` callback, and ``close``
  waits for outstanding commits (librdkafka does not leave the group before). ``commit_revoked``, from the
  revocation callback, is synchronous: the handover is exact, the next owner starts where we stopped;
* readiness: librdkafka's statistics (``statistics.interval.ms``, served by ``poll``) say whether the group
  coordinator is up; ``all brokers down`` marks it down at once; a session timeout ends in ``lost``.

Options: `consumer_options` / `producer_options` build the client configuration from `KafkaSettings` (one
function each, used by the daemon and by `make bench`'s ceiling and naive rows). Security settings map
to librdkafka's names; the kafka-python pass-through tables ``[kafka.consumer]`` / ``[kafka.producer]`` are
accepted for the names that have an exact librdkafka equivalent (`CONSUMER_NAMES`, `PRODUCER_NAMES`), and
``[kafka.librdkafka_consumer]`` / ``[kafka.librdkafka_producer]`` take any librdkafka property and win.

This module imports confluent-kafka only when a client is built: the option mapping is pure and is used to
validate settings on machines without it.
"""

from __future__ import annotations

import logging
import time
from itertools import groupby
from typing import TYPE_CHECKING, Any

from streamer.clients import kafka_python as kafka_io
from streamer.clients.base import CommitFailed, KafkaSetupError, TopicPartition

if TYPE_CHECKING:
    from streamer.config import KafkaSettings

log = logging.getLogger("streamer.kafka")

# librdkafka's fetcher: by default it pauses ``fetch.queue.backoff.ms`` = 1000 ms whenever the local queue
# holds ``queued.min.messages`` (100,000 per partition), so a consumer that drains its queue faster than that
# idles most of every second; 1 ms keeps it fetching (docs/perf.md, "Why the settings"). fetch.wait.max.ms =
# 100: the same latency bound as the kafka-python consumer (kafka_python.consumer_options).
FETCH_TUNING: dict[str, Any] = {"fetch.queue.backoff.ms": 1, "fetch.wait.max.ms": 100}

# kafka-python option names ([kafka.consumer] / [kafka.producer]) with an exact librdkafka equivalent.
CONSUMER_NAMES = {
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "request_timeout_ms": "socket.timeout.ms",
    "auto_offset_reset": "auto.offset.reset",
    "client_id": "client.id",
    "group_instance_id": "group.instance.id",
}
PRODUCER_NAMES = {
    "acks": "acks",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "max_request_size": "message.max.bytes",
    "compression_type": "compression.type",
    "request_timeout_ms": "request.timeout.ms",
    "retries": "retries",
    "client_id": "client.id",
}

# Seconds the set-up check waits for the broker's metadata (socket.timeout.ms, if lower, wins).
SETUP_TIMEOUT = 30.0


def translate(options: dict[str, Any], names: dict[str, str], table: str) -> dict[str, Any]:
    """kafka-python names of a pass-through table -> librdkafka names; ValueError names any other key."""
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(
            f"{table} has kafka-python options without a librdkafka equivalent for kafka.client = "
            f"'confluent-kafka': {', '.join(unknown)} (accepted: {', '.join(sorted(names))}); put librdkafka "
            f"properties in {table.replace('kafka.', 'kafka.librdkafka_')}")
    return {names[key]: value for key, value in options.items()}


# kafka-python's names of the ``[kafka]`` security settings (`kafka_io.security_options`) -> librdkafka's.
SECURITY_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}


def security_options(k: KafkaSettings) -> dict[str, Any]:
    """``[kafka]`` security settings under librdkafka's names (which settings apply: `kafka_io`'s)."""
    return {SECURITY_NAMES[name]: value for name, value in kafka_io.security_options(k).items()}


def consumer_options(k: KafkaSettings) -> dict[str, Any]:
    """librdkafka consumer configuration: at-least-once (we commit), fetch tuning, then the pass-through."""
    start = k.start_from if k.start_from in ("earliest", "latest") else "earliest"
    return {
        "bootstrap.servers": ",".join(k.bootstrap_servers),
        "group.id": k.group_id,
        "client.id": k.client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": start,
        **FETCH_TUNING,
        **security_options(k),
        **translate(k.consumer, CONSUMER_NAMES, "kafka.consumer"),
        **k.librdkafka_consumer,
    }


def producer_options(k: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": ",".join(k.bootstrap_servers),
        "client.id": k.client_id,
        "acks": "all",
        "linger.ms": 5,
        # Dead letters carry whatever the broker accepted, which can exceed the 1 MB default.
        "message.max.bytes": 16 * 1024 * 1024,
        **security_options(k),
        **translate(k.producer, PRODUCER_NAMES, "kafka.producer"),
        **k.librdkafka_producer,
    }


def _import():
    try:
        import confluent_kafka
    except ImportError:
        raise KafkaSetupError("kafka.client = 'confluent-kafka', but confluent-kafka is not installed "
                              "(pip install 'streamer[confluent]')") from None
    return confluent_kafka


class _Client:
    """Construction, logging and the set-up check shared by the consumer and the producer."""

    def __init__(self, factory, options: dict[str, Any], what: str):
        self._what = what
        self._last_error = None
        self._all_down = False
        options = {**options, "error_cb": self._on_error, "logger": logging.getLogger("streamer.librdkafka")}
        try:
            self._client = factory(options)
        except Exception as exc:  # KafkaException, ValueError/TypeError: a bad property or value
            raise KafkaSetupError(f"Kafka {what} setup failed: {exc}") from None
        self._check(options)

    def _on_error(self, error) -> None:
        ck = _import()
        self._last_error = error
        if error.code() == ck.KafkaError._ALL_BROKERS_DOWN:
            self._all_down = True
        log.warning("librdkafka error", extra={"client": self._what, "error": str(error)})

    def _check(self, options: dict[str, Any]) -> None:
        """librdkafka never fails to construct: ask for metadata, so an unreachable broker is exit 2, not a hang."""
        ck = _import()
        timeout = min(SETUP_TIMEOUT, float(options.get("socket.timeout.ms", 60_000)) / 1000)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                self._all_down = False
                return
            except ck.KafkaException as exc:
                error = exc.args[0] if exc.args else exc
            auth = self._last_error is not None and self._last_error.code() in (
                ck.KafkaError._AUTHENTICATION, ck.KafkaError._SSL, ck.KafkaError.SASL_AUTHENTICATION_FAILED)
            if auth or time.monotonic() >= deadline:
                break
        detail = self._last_error or error
        if auth:
            raise KafkaSetupError(f"Kafka {self._what} setup failed: {detail}")
        raise KafkaSetupError(
            f"no Kafka broker reachable at {options['bootstrap.servers']} for the {self._what} with "
            f"security_protocol={options['security.protocol']} within {timeout:g} s (check "
            f"kafka.bootstrap_servers, the network, and that the TLS/SASL settings match the broker's listener; "
            f"librdkafka: {detail})")


class ConfluentConsumer(_Client):
    """A librdkafka group consumer with the daemon's consumer surface (`clients.kafka_python.PythonConsumer`)."""

    def __init__(self, k: KafkaSettings):
        ck = _import()
        self._ck = ck
        self._group_state: str | None = None  # cgrp.state of the last statistics, "up" when joined
        options = {"statistics.interval.ms": 1000, **consumer_options(k), "stats_cb": self._on_stats,
                   "on_commit": self._on_commit}
        super().__init__(ck.Consumer, options, "consumer")
        self._consumer = self._client
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._single_topic: str | None = None
        message = ck.Message
        # Accessors of the native message objects (C methods, no wrapper object per message).
        self.value = message.value
        self.key = message.key
        self.offset = message.offset
        self.partition = message.partition
        self._error = message.error
        self._topic = message.topic

    @staticmethod
    def timestamp_ms(message) -> int:
        return message.timestamp()[1]

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def _ours(self, partitions) -> list[TopicPartition]:
        return [self._tp(p.topic, p.partition) for p in partitions]

    def subscribe(self, topics: list[str], listener) -> None:
        """``listener.assigned/revoked/lost(partitions)`` run inside `poll` (and `close`) on this thread."""
        self._single_topic = topics[0] if len(topics) == 1 and not topics[0].startswith("^") else None
        self._consumer.subscribe(
            topics,
            on_assign=lambda _, parts: self._on_assign(parts, listener),
            on_revoke=lambda _, parts: listener.revoked(self._ours(parts)),
            on_lost=lambda _, parts: listener.lost(self._ours(parts)))

    def _on_assign(self, parts, listener) -> None:
        """Assign with the start offsets the listener asks for (a checkpoint's, a backfill's): librdkafka
        starts fetching there. A seek right after the assignment could lose to the group's own offset lookup
        and let messages from the old position through."""
        ours = self._ours(parts)
        listener.assigned(ours)
        offsets = listener.start_offsets(ours)
        for part, tp in zip(parts, ours):
            if tp in offsets:
                part.offset = offsets[tp]
        self._consumer.assign(parts)

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        batch = self._consumer.consume(max_records, timeout_ms / 1000)
        if not batch:
            return {}
        if any(map(self._error, batch)):
            batch = self._without_errors(batch)
        out: dict[TopicPartition, list] = {}
        # librdkafka hands out runs of one partition's messages: group the runs, not each message.
        if self._single_topic is not None:
            topic = self._single_topic
            for partition, run in groupby(batch, self.partition):
                tp = self._tp(topic, partition)
                if tp in out:
                    out[tp].extend(run)
                else:
                    out[tp] = list(run)
        else:
            topic_of, partition_of = self._topic, self.partition
            for (topic, partition), run in groupby(batch, lambda m: (topic_of(m), partition_of(m))):
                out.setdefault(self._tp(topic, partition), []).extend(run)
        return out

    def _without_errors(self, batch: list) -> list:
        kept = []
        for message in batch:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.fatal():
                raise self._ck.KafkaException(error)
            elif error.code() != self._ck.KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(error), "topic": message.topic(),
                                                     "partition": message.partition()})
        return kept

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(self._ck.TopicPartition(tp.topic, tp.partition, offset))

    def _offsets(self, offsets: dict[TopicPartition, int]) -> list:
        return [self._ck.TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Asynchronous; a failure is logged when librdkafka reports it (the next commit covers it)."""
        try:
            self._consumer.commit(offsets=self._offsets(offsets), asynchronous=True)
        except self._ck.KafkaException as exc:
            raise CommitFailed(str(exc.args[0] if exc.args else exc)) from None

    def _on_commit(self, error, partitions) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is not None or failed:
            first = failed[0] if failed else None
            log.warning("offset commit failed", extra={
                "error": str(error if error is not None else first.error),
                "partitions": [f"{p.topic}/{p.partition}" for p in failed] or None})

    def commit_revoked(self, offsets: dict[TopicPartition, int]) -> None:
        """Synchronous: this runs inside poll/close on the loop's thread, where blocking is allowed."""
        try:
            done = self._consumer.commit(offsets=self._offsets(offsets), asynchronous=False)
        except self._ck.KafkaException as exc:
            raise CommitFailed(str(exc.args[0] if exc.args else exc)) from None
        failed = [p for p in done or [] if p.error is not None]
        if failed:
            raise CommitFailed(f"{len(failed)} partition(s), e.g. {failed[0].topic}/{failed[0].partition}: "
                               f"{failed[0].error}")

    def committed(self, tp: TopicPartition) -> int | None:
        """As `streamer.clients.kafka_python.PythonConsumer.committed`."""
        offset = self._consumer.committed([self._ck.TopicPartition(tp.topic, tp.partition)], timeout=10)[0].offset
        return offset if offset >= 0 else None

    def start_offset(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """As `streamer.clients.kafka_python.PythonConsumer.start_offset` (-1, librdkafka's OFFSET_END: the end)."""
        ck = self._ck
        if self.committed(tp) is not None:
            return None
        found = self._consumer.offsets_for_times([ck.TopicPartition(tp.topic, tp.partition, timestamp_ms)],
                                                 timeout=10)[0]
        return found.offset if found.offset >= 0 else ck.OFFSET_END

    def lag(self, partitions) -> dict[TopicPartition, int]:
        """Messages behind the high watermark of the last fetch, per partition with a known position."""
        out = {}
        if not partitions:
            return out
        for p in self._consumer.position([self._ck.TopicPartition(tp.topic, tp.partition) for tp in partitions]):
            if p.offset < 0:
                continue
            _low, high = self._consumer.get_watermark_offsets(p, cached=True)
            if high >= 0:
                out[self._tp(p.topic, p.partition)] = max(0, high - p.offset)
        return out

    def _on_stats(self, text: str) -> None:
        import orjson

        self._group_state = orjson.loads(text).get("cgrp", {}).get("state")
        if self._group_state == "up":
            self._all_down = False

    def connected(self) -> tuple[bool, dict]:
        """Whether the group coordinator is reachable (no verdict, i.e. True, before the first statistics)."""
        up = not self._all_down and self._group_state in (None, "up")
        return up, {"group_state": self._group_state, "all_brokers_down": self._all_down}

    def close(self) -> None:
        # Waits for outstanding commits, then leaves the group: runs the revocation callback on this thread.
        self._consumer.close()


class ConfluentProducer(_Client):
    """Score records and dead letters; only failed deliveries are reported (one callback per failure)."""

    def __init__(self, k: KafkaSettings):
        ck = _import()
        self._ck = ck
        self._failures: list[str] = []
        options = {**producer_options(k), "delivery.report.only.error": True, "on_delivery": self._on_delivery}
        super().__init__(ck.Producer, options, "producer")
        self._producer = self._client

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers=None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:  # the local queue is full: serve delivery reports, then try again
                self._producer.poll(0.05)
            except self._ck.KafkaException as exc:  # e.g. larger than message.max.bytes
                self._failures.append(f"{topic}: {exc.args[0] if exc.args else exc}")
                return

    def deliver(self) -> list[str]:
        """Wait until every record sent so far is delivered or failed; the failures since the last call."""
        self._producer.flush()
        failures, self._failures = self._failures, []
        return failures

    def close(self) -> None:
        self._producer.flush()
