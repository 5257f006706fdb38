"""Kafka clients built from settings, and the group-start position for backfills.

Everything kafka-python specific that is not the run loop lives here: option mapping (security settings
included), client construction with errors a person can act on, and `start_offset`, which turns
``kafka.start_from`` into a position for partitions the group has never committed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from streamer.config import KafkaSettings


class KafkaSetupError(RuntimeError):
    """The broker cannot be reached or refused us; the message says which and where."""


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
        # The broker holds a fetch until data arrives or this passes: 100 ms (not 500) keeps the p99 tick-to-
        # metric latency low at modest rates (measured against Tansu: p99 301-709 ms -> 67-89 ms).
        "fetch_max_wait_ms": 100,
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


def start_timestamp_ms(start_from: str) -> int | None:
    """Milliseconds of an ISO-8601 ``start_from``, or None for earliest/latest."""
    if start_from in ("earliest", "latest"):
        return None
    parsed = datetime.fromisoformat(start_from)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def start_offset(consumer: KafkaConsumer, tp: TopicPartition, timestamp_ms: int) -> int | None:
    """Where a partition without a committed offset starts for a timestamp backfill (None: keep position).

    Partitions the group already committed resume from their commit: a backfill never rewinds a group.
    """
    if consumer.committed(tp) is not None:
        return None
    found = consumer.offsets_for_times({tp: timestamp_ms}).get(tp)
    if found is not None:
        return found.offset
    return consumer.end_offsets([tp])[tp]  # nothing at or after the timestamp: start at the end
