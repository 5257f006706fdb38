"""Producing test ticks and reading results back from a real broker."""

from __future__ import annotations

from collections import Counter

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> Counter:
    """Send (key, value) pairs in order; returns the number of messages per partition, as acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [producer.send(topic, key=key, value=value) for key, value in messages]
    producer.flush()
    per_partition = Counter(f.get(timeout=10).partition for f in futures)
    producer.close()
    return per_partition


def tick(stream: str, ts: float, value: float, **extra) -> tuple[bytes, bytes]:
    return stream.encode(), orjson.dumps({"stream": stream, "ts": ts, "value": value, **extra})


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_ms: int = 10000) -> list[dict]:
    """Every JSON record of a topic (stops at ``expected`` records or after ``timeout_ms`` of silence)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=timeout_ms)
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = []
    for message in consumer:
        out.append(orjson.loads(message.value))
        if len(out) >= expected:
            break
    consumer.close()
    return out
