"""The daemon against a real Tansu broker: scores, resets, offsets, bad input, signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest

from streamer.devtools.broker import create_topic, free_port
from tests.chaos.processes import read_raw
from tests.conftest import FAST_GROUP, daemon_settings
from tests.integration.kafka_helpers import committed, produce, read_all, tick

T0 = 1_750_000_000.0


def wave(stream: str, n: int, seed: int, start: int = 0, spike_from: int | None = None, **extra):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        v = 50 + 5 * np.sin(i / 10) + rng.normal(0, 0.2)
        if spike_from is not None and i >= spike_from:
            v += 40
        out.append(tick(stream, T0 + 60 * i, float(v), **extra))
    return out


def test_anomaly_reset_and_commits(broker, topic, run_daemon, client):
    n = 300
    clean = [wave(f"clean-{k}", n, seed=k) for k in range(5)]
    anomalous = wave("anomalous", n, seed=99, spike_from=n - 1)  # the latest tick is the anomaly
    # "seg" changes segment half way; "fresh" is a new stream fed exactly seg's second half.
    seg = wave("seg", n // 2, seed=7, segment="a") + wave("seg", n // 2, seed=8, start=n // 2, segment="b")
    fresh = [tick("fresh", *_ts_value(m), segment="b") for m in seg[n // 2:]]
    streams = [*clean, anomalous, seg, fresh]
    messages = sorted((m for s in streams for m in s), key=lambda m: _ts_value(m)[0])  # interleaved by time
    per_partition = produce(broker.bootstrap, topic, messages)

    scores_topic = topic + "-scores"
    create_topic(broker.bootstrap, scores_topic, partitions=3)
    settings = daemon_settings(broker.bootstrap, [topic], scores_topic=scores_topic, max_poll_records=500,
                               client=client)
    with run_daemon(settings) as running:
        running.wait_scored(len(messages))
        metrics = running.scrape()
        ready = urllib.request.urlopen(running.url + "/readyz").status

    score = {labels[0][1]: v for (name, labels), v in metrics.items() if name == "streamer_anomaly_score"}
    assert ready == 200
    assert score["anomalous"] > 0.3
    assert score["anomalous"] > 3 * max(score[f"clean-{k}"] for k in range(5))
    assert metrics[("streamer_state_resets_total", (("reason", "segment"),))] == 1
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == len(messages)

    records = read_all(broker.bootstrap, scores_topic, 3, expected=len(messages))
    assert len(records) == len(messages)
    by_stream: dict[str, list[float]] = {}
    for rec in sorted(records, key=lambda r: r["ts"]):
        by_stream.setdefault(rec["stream"], []).append(rec["anomaly_score"])
    np.testing.assert_allclose(by_stream["seg"][n // 2:], by_stream["fresh"], atol=1e-6)

    offsets = committed(broker.bootstrap, settings.kafka.group_id, topic, 3)
    assert offsets == {p: per_partition.get(p, 0) or None for p in range(3)}


def _ts_value(message):
    import orjson

    obj = orjson.loads(message[1])
    return obj["ts"], obj["value"]


GARBAGE = [
    (b"{not json", "malformed_json"),
    (b"[1,2,3]", "not_an_object"),
    (b'{"stream": "g", "value": 1}', "missing_field"),
    (b'{"stream": "g", "ts": 1750000000, "value": "high"}', "bad_type"),
    (b'{"stream": "g", "ts": 1750000000, "value": NaN}', "non_finite"),
    (b'{"stream": "g", "ts": "9999-01-01T00:00:00", "value": 1}', "bad_timestamp"),
    (b"x" * 70_000, "too_large"),
    (bytes(range(256)), "malformed_json"),
]


def test_ten_thousand_messages_with_garbage(broker, topic, run_daemon, client):
    rng = random.Random(3)
    messages, expected_invalid, valid = [], Counter(), 0
    counters = Counter()
    for _ in range(10_000):
        if rng.random() < 0.3:
            payload, reason = rng.choice(GARBAGE)
            messages.append((b"g", payload))
            expected_invalid[reason] += 1
        else:
            stream = f"s{rng.randrange(50)}"
            counters[stream] += 1
            messages.append(tick(stream, T0 + counters[stream], rng.gauss(0, 1)))
            valid += 1
    per_partition = produce(broker.bootstrap, topic, messages)
    dlq = topic + "-dlq"
    create_topic(broker.bootstrap, dlq, partitions=1)
    settings = daemon_settings(broker.bootstrap, [topic], dead_letter_topic=dlq, client=client)
    with run_daemon(settings) as running:
        running.wait_processed(len(messages))
        metrics = running.scrape()
        deadline = time.monotonic() + 10  # the commit follows the poll's processing
        while committed(broker.bootstrap, settings.kafka.group_id, topic, 3) != dict(per_partition):
            assert time.monotonic() < deadline, "offsets not committed"
            time.sleep(0.2)
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == valid
    assert metrics[("streamer_messages_total", (("outcome", "invalid"), ("topic", topic)))] == sum(
        expected_invalid.values())
    for reason, count in expected_invalid.items():
        assert metrics[("streamer_invalid_messages_total", (("reason", reason),))] == count
    total_invalid = sum(expected_invalid.values())
    assert metrics[("streamer_dead_lettered_messages_total", ())] == total_invalid
    letters = read_raw(broker.bootstrap, dlq, 1, expected=total_invalid, timeout_ms=5000)
    assert Counter(dict(letter.headers)["reason"].decode() for letter in letters) == expected_invalid


def test_sigterm_commits_and_exits_zero(broker, topic, tmp_path, client):
    port = free_port()
    group = f"sigterm-group-{client}"
    env = {**os.environ, "STREAMER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "STREAMER_KAFKA__CLIENT": client,
           "STREAMER_KAFKA__TOPICS": f'["{topic}"]', "STREAMER_KAFKA__GROUP_ID": group,
           "STREAMER_KAFKA__CONSUMER": json.dumps(FAST_GROUP),
           "STREAMER_METRICS__PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "run"], env=env, stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30)
        per_partition = produce(broker.bootstrap, topic, [tick(f"s{i % 7}", T0 + i, float(i % 13))
                                                           for i in range(2000)])
        _wait_metric(port, f'streamer_messages_total{{outcome="scored",topic="{topic}"}} 2000.0', timeout=30)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    offsets = committed(broker.bootstrap, group, topic, 3)
    assert offsets == {p: per_partition.get(p, 0) or None for p in range(3)}


def test_unreachable_broker_is_a_clear_error(client):
    env = {**os.environ, "STREAMER_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "STREAMER_KAFKA__CLIENT": client, "STREAMER_METRICS__PORT": "0",
           "STREAMER_KAFKA__CONSUMER": '{"request_timeout_ms": 3000}'}
    done = subprocess.run([sys.executable, "-m", "streamer", "run"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "no Kafka broker reachable" in done.stderr and "Traceback" not in done.stderr


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not 200 within {timeout}s")
        time.sleep(0.2)


def _wait_metric(port: int, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:  # a busy machine: try again until the deadline
            continue
        if line in body:
            return
        time.sleep(0.2)
    pytest.fail(f"metric line {line!r} not seen within {timeout}s")


def test_idle_streams_expire(broker, topic, run_daemon):
    produce(broker.bootstrap, topic, [tick(f"s{i % 5}", T0 + i, float(i)) for i in range(50)])
    settings = daemon_settings(broker.bootstrap, [topic])
    settings = settings.model_copy(update={"detector": settings.detector.model_copy(
        update={"idle_expiry_seconds": 2.0})})
    with run_daemon(settings) as running:
        running.wait_scored(50)
        deadline = time.monotonic() + 20
        while running.scrape().get(("streamer_streams", ())) != 0:
            assert time.monotonic() < deadline, "idle streams were not expired"
            time.sleep(0.2)
        assert running.scrape()[("streamer_expired_streams_total", ())] == 5


def test_backfill_from_a_timestamp_starts_a_new_group_there(broker, topic, run_daemon, client):
    from datetime import datetime, timezone

    produce(broker.bootstrap, topic, [tick(f"s{i % 3}", T0 + i, 1.0) for i in range(30)])
    time.sleep(1.5)
    start = datetime.now(timezone.utc).isoformat()
    time.sleep(0.5)
    produce(broker.bootstrap, topic, [tick(f"s{i % 3}", T0 + 100 + i, 1.0) for i in range(12)])
    settings = daemon_settings(broker.bootstrap, [topic], start_from=start, client=client)
    with run_daemon(settings) as running:
        running.wait_scored(12)
        time.sleep(2)  # nothing older arrives late
        assert running.daemon.scored == 12
