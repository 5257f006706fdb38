"""The default client backend, kafka-python, behind the seam of `streamer.clients.base`.

Everything kafka-python specific that is not the run loop lives here: option mapping (security settings
included), client construction with errors a person can act on, and `start_offset`, which turns
``kafka.start_from`` into a position for partitions the group has never committed. `make_consumer` /
`make_producer` (raw kafka-python clients) also serve the Kafka checkpoint store and `streamer replay`,
which use kafka-python whatever ``kafka.client`` says.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from streamer.clients.base import CommitFailed, KafkaSetupError, PollFailed, TopicPartition

if TYPE_CHECKING:
    from streamer.config import KafkaSettings


def security_options(k: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        options["sasl_mechanism"] = k.sasl_mechanism
    if k.sasl_plain_username is not None:
        options["sasl_plain_username"] = k.sasl_plain_username
    if k.sasl_plain_password is not None:
        options["sasl_plain_password"] = k.sasl_plain_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(k, name) is not None:
            options[name] = str(getattr(k, name))
    if k.ssl_password is not None:
        options["ssl_password"] = k.ssl_password.get_secret_value()
    return options


def consumer_options(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python consumer options: at-least-once (we commit), then the operator's pass-through table."""
    start = k.start_from if k.start_from in ("earliest", "latest") else "earliest"
    return {
        "bootstrap_servers": k.bootstrap_servers,
        "group_id": k.group_id,
        "client_id": k.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": start,
        "max_poll_records": k.max_poll_records,
        # The broker holds a fetch until data arrives or this passes: 100 ms (not the default 500) bounds the
        # wait that made most of the p99 tick-to-metric latency at modest rates (docs/perf.md, "Why the settings").
        "fetch_max_wait_ms": 100,
        # A fetch response is held about three times over while it is received and decoded (the socket's chunks,
        # the joined response, each partition's records): 256 KiB a partition (not the default 1 MiB) keeps that
        # within a few MiB at the same throughput (docs/perf.md, "Why the settings").
        "max_partition_fetch_bytes": 256 * 1024,
        **security_options(k),
        **k.consumer,
    }


def producer_options(k: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "acks": "all",
        "linger_ms": 5,
        # Dead letters carry whatever the broker accepted, which can exceed the 1 MiB default.
        "max_request_size": 16 * 1024 * 1024,
        **security_options(k),
        **k.producer,
    }


def _connect(factory, options: dict[str, Any], what: str):
    try:
        return factory(**options)
    except KafkaTimeoutError:
        raise KafkaSetupError(
            f"no Kafka broker reachable at {','.join(options['bootstrap_servers'])} for the {what} with "
            f"security_protocol={options['security_protocol']} (check kafka.bootstrap_servers, the network, "
            f"and that the TLS/SASL settings match the broker's listener)") from None
    except KafkaError as exc:  # authentication and TLS failures surface here
        raise KafkaSetupError(f"Kafka {what} setup failed: {exc.__class__.__name__}: {exc}") from None


def make_consumer(k: KafkaSettings) -> KafkaConsumer:
    return _connect(KafkaConsumer, consumer_options(k), "consumer")


def make_producer(k: KafkaSettings) -> KafkaProducer:
    return _connect(KafkaProducer, producer_options(k), "producer")


def create_topic(bootstrap_servers: str | list[str], topic: str, partitions: int = 1,
                 config: dict[str, str] | None = None, **client_options: Any) -> None:
    """Create a topic unless it exists (``client_options``: e.g. `security_options`)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                      topic_configs=config or {})])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, listener):
        self.listener = listener

    def on_partitions_revoked(self, revoked):
        self.listener.revoked([TopicPartition(*tp) for tp in revoked])

    def on_partitions_lost(self, lost):
        self.listener.lost([TopicPartition(*tp) for tp in lost])

    def on_partitions_assigned(self, assigned):
        self.listener.assigned([TopicPartition(*tp) for tp in assigned])


def _theirs(tp: TopicPartition) -> KafkaTopicPartition:
    """kafka-python checks the type of the partitions it is given (its own named tuple, equal to ours)."""
    return KafkaTopicPartition(tp.topic, tp.partition)


def _metadata(offsets: dict[TopicPartition, int]) -> dict[KafkaTopicPartition, OffsetAndMetadata]:
    return {_theirs(tp): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class PythonConsumer:
    """kafka-python's KafkaConsumer with the daemon's consumer surface (see the module docstring)."""

    # ConsumerRecord is a namedtuple: attrgetter reads its fields in C.
    value = staticmethod(attrgetter("value"))
    key = staticmethod(attrgetter("key"))
    offset = staticmethod(attrgetter("offset"))
    partition = staticmethod(attrgetter("partition"))
    timestamp_ms = staticmethod(attrgetter("timestamp"))

    def __init__(self, k: KafkaSettings):
        self._consumer = make_consumer(k)

    def subscribe(self, topics: list[str], listener) -> None:
        self._consumer.subscribe(topics, listener=_Listener(listener))

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # kafka-python re-raises its heartbeat loop's failure once; the next poll rejoins
            raise PollFailed(f"{exc.__class__.__name__}: {exc}") from None
        return {TopicPartition(*tp): messages for tp, messages in polled.items()}  # a key per partition, not message

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(_theirs(tp), offset)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            self._consumer.commit(_metadata(offsets))
        except KafkaError as exc:
            raise CommitFailed(f"{exc.__class__.__name__}: {exc}") from None

    def commit_revoked(self, offsets: dict[TopicPartition, int]) -> None:
        """From the revocation callback, on kafka-python's network thread: a blocking commit would stall it."""
        self._consumer.commit_async(_metadata(offsets))

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (None: the group never committed one)."""
        return self._consumer.committed(_theirs(tp))

    def start_offset(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """Where a partition without a committed offset starts for a timestamp backfill (None: keep position).

        Partitions the group already committed resume from their commit: a backfill never rewinds a group.
        """
        consumer = self._consumer
        if self.committed(tp) is not None:
            return None
        tp = _theirs(tp)
        found = consumer.offsets_for_times({tp: timestamp_ms}).get(tp)
        if found is not None:
            return found.offset
        return consumer.end_offsets([tp])[tp]  # nothing at or after the timestamp: start at the end

    def lag(self, partitions) -> dict[TopicPartition, int]:
        out = {}
        for tp in map(_theirs, partitions):
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            out[TopicPartition(*tp)] = max(0, end - position)
        return out

    def connected(self) -> tuple[bool, dict]:
        """False while the group coordinator has not answered a heartbeat within the session timeout.

        kafka-python keeps the assignment through a broker outage, so the assignment alone says nothing.
        """
        coordinator = self._consumer.metrics().get("consumer-coordinator-metrics", {})
        silent = coordinator.get("last-heartbeat-seconds-ago", 0.0)
        session = self._consumer.config["session_timeout_ms"] / 1000
        # No verdict before the first heartbeat (the metric reads inf until then).
        return silent < session or silent == float("inf"), {"last_heartbeat_seconds_ago": round(silent, 1)}

    def close(self) -> None:
        self._consumer.close(autocommit=False)  # invokes on_partitions_revoked


class PythonProducer:
    """kafka-python's KafkaProducer with the daemon's producer surface."""

    def __init__(self, k: KafkaSettings):
        self._producer = make_producer(k)
        self._sends: list = []
        self._failures: list[str] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers=None) -> None:
        try:
            self._sends.append(self._producer.send(topic, key=key, value=value, headers=headers))
        except KafkaError as exc:  # e.g. larger than max_request_size: not delivered, like a failed future
            self._failures.append(f"{topic}: {exc.__class__.__name__}: {exc}")

    def deliver(self) -> list[str]:
        self._producer.flush()
        failed = [f"{e.__class__.__name__}: {e}" for e in (f.exception for f in self._sends if f.failed())]
        failures, self._failures, self._sends = self._failures + failed, [], []
        return failures

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()
