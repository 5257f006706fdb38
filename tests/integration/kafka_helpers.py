"""Producing test ticks and reading results back from a real broker."""

from __future__ import annotations

import time
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


def read_records(bootstrap: str, topic: str, partitions: int, expected: int | None = None,
                 timeout_ms: int = 10000, **consumer_options) -> list:
    """Every record of a topic (kafka-python ConsumerRecords: key, value, headers, partition, offset), oldest
    first per partition: read until every partition's position has reached its end offset and a poll finds
    nothing more (Tansu, restarted on S3 storage, can report end offsets below records it serves: those are
    read too), however slow the fetches.

    ``expected``: until that many are there (the first ``expected`` are returned), waiting for more to arrive
    for at most ``timeout_ms``; then what is there. None: what the topic holds now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **consumer_options)
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    deadline = time.monotonic() + timeout_ms / 1000
    stuck = time.monotonic() + max(timeout_ms / 1000, 120)  # records there but never fetched: a broken broker
    out: list = []
    try:
        while True:
            got = [record for batch in consumer.poll(timeout_ms=500).values() for record in batch]
            out.extend(got)
            if expected is not None and len(out) >= expected:
                return out[:expected]
            if got:
                continue
            ends = consumer.end_offsets(parts)
            if all(consumer.position(tp) >= ends[tp] for tp in parts):  # all there is, for now
                if expected is None or time.monotonic() >= deadline:
                    return out
                time.sleep(0.1)
            else:
                assert time.monotonic() < stuck, f"{topic}: {len(out)} records fetched, end offsets {ends}"
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int, expected: int | None = None,
             timeout_ms: int = 10000) -> list[dict]:
    """Every JSON record of a topic (see `read_records`: up to ``expected``, waiting at most ``timeout_ms`` for
    them; None: what the topic holds now)."""
    return [orjson.loads(m.value) for m in read_records(bootstrap, topic, partitions, expected, timeout_ms)]
