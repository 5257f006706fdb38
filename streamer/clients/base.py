"""The Kafka seam: what the daemon needs of a Kafka client, whichever library provides it.

The daemon drives one `Consumer` and one `Producer` through the small surfaces below; `open_consumer` /
`open_producer` build the backend ``kafka.client`` names: `streamer.clients.kafka_python` (the default, pure
Python) or `streamer.clients.confluent` (librdkafka). Neither backend is imported until it is built.

Partitions are this project's own `TopicPartition` (a ``(topic, partition)`` named tuple): kafka-python's
equals it, and the confluent backend builds it from librdkafka's objects. Polled messages stay the client's
*own* objects, read through the consumer's accessors, so the per-message path costs what the client costs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from streamer.config import KafkaSettings


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class KafkaSetupError(RuntimeError):
    """The broker cannot be reached or refused us; the message says which and where."""


class CommitFailed(RuntimeError):
    """An offset commit failed (e.g. a rebalance in progress); the next owner re-reads from the last commit."""


class PollFailed(RuntimeError):
    """A poll returned an error instead of messages (e.g. the group coordinator lost in a broker outage);
    nothing was consumed, and the next poll retries."""


class RebalanceListener(Protocol):
    """What a consumer calls on rebalances (kafka-python: on its network thread; confluent-kafka: inside
    ``poll``/``close`` on the calling thread)."""

    def assigned(self, partitions: list[TopicPartition]) -> None: ...

    def revoked(self, partitions: list[TopicPartition]) -> None: ...

    def lost(self, partitions: list[TopicPartition]) -> None: ...

    def start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where just-assigned partitions start (asked by backends that position them in the assignment)."""
        ...


class Consumer(Protocol):
    # Accessors of the client's own message objects (no wrapper object per message).
    value: Callable[[Any], bytes | None]
    key: Callable[[Any], bytes | None]
    offset: Callable[[Any], int]
    partition: Callable[[Any], int]
    timestamp_ms: Callable[[Any], int]

    def subscribe(self, topics: list[str], listener: RebalanceListener) -> None: ...

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        """Messages by partition; raises `PollFailed`."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit these next offsets; raises `CommitFailed`."""
        ...

    def commit_revoked(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit from the revocation callback (where a blocking call may not be allowed)."""
        ...

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset (None: never committed)."""
        ...

    def start_offset(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """Where a partition the group never committed starts for a timestamp backfill (None: keep)."""
        ...

    def lag(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def connected(self) -> tuple[bool, dict]:
        """Whether the group coordinator is reachable, with details for the log."""
        ...

    def close(self) -> None:
        """Leave the group (runs the final revocation callback)."""
        ...


class Producer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes | None, headers=None) -> None: ...

    def deliver(self) -> list[str]:
        """Flush; the records not delivered since the last call (empty: all delivered)."""
        ...

    def close(self) -> None: ...


def open_consumer(k: KafkaSettings) -> Consumer:
    """The daemon's consumer for ``kafka.client``."""
    if k.client == "confluent-kafka":
        from streamer.clients.confluent import ConfluentConsumer

        return ConfluentConsumer(k)
    from streamer.clients.kafka_python import PythonConsumer

    return PythonConsumer(k)


def open_producer(k: KafkaSettings) -> Producer:
    """The daemon's producer (score records, dead letters) for ``kafka.client``."""
    if k.client == "confluent-kafka":
        from streamer.clients.confluent import ConfluentProducer

        return ConfluentProducer(k)
    from streamer.clients.kafka_python import PythonProducer

    return PythonProducer(k)


def start_timestamp_ms(start_from: str, zone: tzinfo = timezone.utc) -> int | None:
    """Milliseconds of an ISO-8601 ``kafka.start_from`` (without an offset: in ``zone``, the zone of the
    ticks, ``ticks.timezone``), or None for earliest/latest."""
    if start_from in ("earliest", "latest"):
        return None
    parsed = datetime.fromisoformat(start_from)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return int(parsed.timestamp() * 1000)
