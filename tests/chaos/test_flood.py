"""Key flood: 1,000,000 distinct stream keys, one tick each, in random order, into a daemon process with
``detector.max_streams = 20000``.

Checked: every message is consumed and scored; ``streamer_streams`` never exceeds max_streams (sampled
during the flood and at the end); every stream beyond max_streams was evicted (evicted + in memory = keys);
the daemon's peak RSS (VmHWM) stays under a bound derived from max_streams; /metrics stays small (only
``metrics.max_stream_series`` streams carry a label).

Memory bound: ``idle + FIXED + max_streams * PER_STREAM``, where ``idle`` is the VmHWM of the same process,
measured in the test once it is up, ready and idle (torch, the model, the Kafka clients: about 250 MB here).
FIXED (128 MiB) covers what a first busy poll adds whatever the stream count: Kafka fetch buffers (up to 1 MiB
a partition, more in flight), the decoded 2000-message poll, torch's workspace for a 2000-row LSTM step,
allocator arenas. PER_STREAM (4 KiB) is twice the state of a stream (h and c 512 B, statistics 952 B, name,
dict entry and list slots about 300 B), since the state arrays double by copying when they grow. Measured
here: about 115 MB over idle for 20,000 streams; without eviction 1,000,000 streams would need > 1.7 GB.

``CHAOS_FLOOD_KEYS`` overrides the number of keys (default 1,000,000). Producing uses confluent-kafka when it
is installed (about 3 s for a million) and kafka-python otherwise (about 60 s); the daemon consumes about
12,000 messages/s on a 2-core machine, so the test takes about 1.5 min with the default.
"""

from __future__ import annotations

import os
import random
import time

import orjson
import pytest

from streamer.devtools.broker import LocalBroker, create_topic
from tests.chaos.processes import DaemonProcess, http_get, proc_status_kb, stop_all

KEYS = int(os.environ.get("CHAOS_FLOOD_KEYS", "1000000"))
MAX_STREAMS = 20_000
MAX_STREAM_SERIES = 1000  # metrics.max_stream_series (default)
FIXED_KB = 128 * 1024
PER_STREAM_KB = 4
METRICS_BODY_LIMIT = 300 * 1024
T0 = 1_760_000_000


def _messages(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = []
    for i, k in enumerate(order):
        key = f"key-{k:07d}".encode()
        out.append((key, b'{"stream":"' + key + b'","ts":' + str(T0 + i // 1000).encode() + b',"value":'
                    + orjson.dumps(float(k % 997)) + b"}"))
    return out


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> str:
    """Fast: confluent-kafka if installed, else kafka-python with big batches. Returns the client's name."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        Producer = None  # noqa: N806
    if Producer is not None:
        errors = []
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20,
                             "queue.buffering.max.messages": 1_000_000, "acks": "all", "log_level": 3})
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, value=value, key=key,
                                     on_delivery=lambda err, _msg: err and errors.append(err))
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(120) == 0, "confluent-kafka did not deliver everything within 120 s"
        assert not errors, errors[:5]
        return "confluent-kafka"
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 << 20,
                             max_request_size=8 << 20)
    futures = [producer.send(topic, key=key, value=value) for key, value in messages]
    producer.flush()
    for future in futures[:: max(1, len(futures) // 1000)]:
        future.get(timeout=60)
    assert all(f.is_done and f.succeeded() for f in futures)
    producer.close()
    return "kafka-python"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_million_keys_stay_within_max_streams(tmp_path):
    messages = _messages(KEYS)
    daemon = None
    with LocalBroker(log_path=tmp_path / "tansu.log") as broker:
        try:
            topic = "flood"
            create_topic(broker.bootstrap, topic, 3)
            daemon = DaemonProcess(broker.bootstrap, topic, "flood", tmp_path,
                                   STREAMER_DETECTOR__MAX_STREAMS=str(MAX_STREAMS)).start()
            daemon.wait_metric("streamer_ready", lambda v: v == 1)
            # idle: its loop has polled every partition of the (empty) topic and measured the lag of each
            for partition in range(3):
                daemon.wait_metric("streamer_consumer_lag_messages", lambda v: v == 0, topic=topic,
                                   partition=str(partition))
            idle_kb = proc_status_kb(daemon.proc.pid, "VmHWM")

            started = time.monotonic()
            client = _produce(broker.bootstrap, topic, messages)
            produced_s = time.monotonic() - started
            del messages

            biggest_body, most_streams, scrape_s = 0, 0.0, 0.0
            deadline = time.monotonic() + 600
            while True:
                assert daemon.proc.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
                t = time.monotonic()
                status, body = http_get(daemon.port, "/metrics", timeout=30)
                scrape_s = max(scrape_s, time.monotonic() - t)
                assert status == 200
                biggest_body = max(biggest_body, len(body))
                streams = daemon.metric("streamer_streams")
                most_streams = max(most_streams, streams or 0)
                assert streams is None or streams <= MAX_STREAMS, f"{streams} streams in memory"
                consumed = daemon.metric("streamer_messages_total", outcome="scored") or 0
                if consumed >= KEYS:
                    break
                assert time.monotonic() < deadline, f"consumed {consumed} of {KEYS} in 600 s"
                time.sleep(1)
            consumed_s = time.monotonic() - started

            peak_kb = proc_status_kb(daemon.proc.pid, "VmHWM")
            streams = daemon.metric("streamer_streams")
            evicted = daemon.metric("streamer_evicted_streams_total")
            assert daemon.metric("streamer_messages_total", outcome="scored") == KEYS
            assert daemon.metric("streamer_messages_total", outcome="invalid") == 0
            assert daemon.metric("streamer_messages_total", outcome="out_of_order") == 0
            assert streams <= MAX_STREAMS
            assert evicted >= KEYS - MAX_STREAMS
            assert evicted + streams == KEYS  # every key seen once: each one is in memory or was evicted
            bound_kb = idle_kb + FIXED_KB + MAX_STREAMS * PER_STREAM_KB
            assert peak_kb <= bound_kb, f"peak RSS {peak_kb} kB > {bound_kb} kB (idle {idle_kb} kB)"
            status, body = http_get(daemon.port, "/metrics")
            labelled = body.count(b"streamer_anomaly_score{")
            assert labelled <= MAX_STREAM_SERIES
            assert max(biggest_body, len(body)) < METRICS_BODY_LIMIT, f"/metrics {biggest_body} bytes"
            assert daemon.terminate(timeout=30) == 0
            print(f"flood: {KEYS} keys produced in {produced_s:.1f}s ({client}), all scored after {consumed_s:.1f}s "
                  f"({KEYS / consumed_s:.0f}/s); streams max {most_streams:.0f}, evicted {evicted:.0f}; RSS idle "
                  f"{idle_kb / 1024:.0f} MiB, peak {peak_kb / 1024:.0f} MiB, bound {bound_kb / 1024:.0f} MiB; "
                  f"/metrics max {biggest_body / 1024:.0f} KiB ({labelled} labelled streams), slowest scrape "
                  f"{scrape_s * 1000:.0f} ms")
        finally:
            stop_all(daemon)
