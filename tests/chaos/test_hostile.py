"""Hostile input against a real broker, with ``kafka.dead_letter_topic`` and ``kafka.scores_topic`` set.

Garbage of every kind the decoder names (random bytes, deep nesting, huge strings on both sides of
``ticks.max_message_bytes``, NaN/Infinity, wrong types, years 1 and 9999, empty messages, nulls, tombstones)
is interleaved at random with valid ticks on every partition. Checked: each bad message is counted under
its reason; the dead-letter topic holds, for each one, the original key and bytes with a ``reason`` header
and a ``source`` header ``topic/partition/offset``; the daemon keeps running; and every valid tick, including
the ones after the garbage, is scored exactly as offline scoring of the valid ticks alone scores it (the
garbage changed no state and stalled no partition).

A tombstone (value None) is dead-lettered as a tombstone: same key, value None, the two headers. It is
"the original bytes" in the only sense a null value has; a compacted dead-letter topic would treat it as a
delete, so the dead-letter topic must not be compacted.

`test_poison_pill` holds single messages that stop the daemon (bugs; see the reasons there).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer, TopicPartition

from streamer.config import load_settings
from streamer.devtools.broker import create_topic
from streamer.offline.score import score_file
from tests.chaos.processes import read_raw
from tests.conftest import daemon_settings
from tests.integration.kafka_helpers import read_all

T0 = 1_760_000_000  # Oct 2025: valid ticks are in the past, whatever the clock says
LIMIT = 65536  # ticks.max_message_bytes (default)
PARTITIONS = 3


def _garbage(rng: random.Random) -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, expected reason). No key unless it is part of the case: a key stands in for a missing
    ``stream`` field, so a keyed message without ``stream`` would be a valid tick."""
    ts = T0 + 5
    cases: list[tuple[bytes | None, bytes | None, str]] = []

    def obj(reason, **fields):
        cases.append((None, json.dumps(fields, allow_nan=True).encode(), reason))

    # malformed_json: random bytes (none of them valid JSON), empty, truncated, invalid UTF-8, deep nesting
    while sum(r == "malformed_json" for *_, r in cases) < 12:
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        try:
            json.loads(blob)
        except (ValueError, RecursionError):
            cases.append((None, blob, "malformed_json"))
    for raw in (b"", b"   ", b"\n", b"{", b'{"stream": "x", "ts": 1', b"\xff\xfe\x00", b'{"stream": "\xc3\x28"}',
                b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"{'stream': 'single'}"):
        cases.append((None, raw, "malformed_json"))
    # not_an_object: JSON that is not an object, null, a tombstone
    for raw in (b"null", b"[]", b"42", b'"a string"', b"true", b"NaN", b"[1, 2, 3]", b'[{"stream": "x"}]'):
        cases.append((None, raw, "not_an_object"))
    cases.append((b"tombstone-key", None, "not_an_object"))
    # missing_field
    cases.append((None, b"{}", "missing_field"))
    obj("missing_field", ts=ts, value=1.0)  # no stream and no key
    obj("missing_field", stream=None, ts=ts, value=1.0)
    cases.append((b"", b'{"ts": 1760000005, "value": 1.0}', "missing_field"))  # empty key
    obj("missing_field", stream="m", value=1.0)
    obj("missing_field", stream="m", ts=ts)
    obj("missing_field", stream="m", ts=ts, values=None)
    # bad_type: wrong types everywhere, a huge string where a number belongs (within the size limit)
    for fields in ({"value": "12"}, {"value": True}, {"value": None}, {"value": [1]}, {"value": {"a": 1}},
                   {"stream": 123}, {"stream": ""}, {"stream": ["a"]}, {"stream": {"a": "b"}}, {"ts": True},
                   {"ts": None}, {"ts": [1]}, {"ts": {}}, {"segment": {}}, {"segment": [1]}, {"reset": "yes"},
                   {"reset": 1}, {"values": []}, {"values": {}}, {"values": {"a": "x"}}, {"values": "1"},
                   {"value": "9" * 60_000}):
        obj("bad_type", **{"stream": "b", "ts": ts, **({} if "values" in fields else {"value": 1.0}), **fields})
    # non_finite: NaN/Infinity literals and a float literal beyond float range
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"):
        cases.append((None, b'{"stream": "n", "ts": 1760000005, "value": ' + literal + b"}", "non_finite"))
    for literal in (b"NaN", b"Infinity", b"1e999"):
        cases.append((None, b'{"stream": "n", "ts": ' + literal + b', "value": 1.0}', "non_finite"))
    cases.append((None, b'{"stream": "n", "ts": 1760000005, "values": {"a": 1.0, "b": NaN}}', "non_finite"))
    # bad_timestamp: year 1, year 9999, before the epoch, far future, unparseable
    for when in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
                 "9999-12-31T23:59:59-14:00", -62135596800, 253402300799, -1, 1e300, time.time() + 3 * 86400,
                 "yesterday", "2026-13-45T00:00:00", "", "0000-00-00"):
        obj("bad_timestamp", stream="t", ts=when, value=1.0)
    # too_large: one byte over the limit, a huge string, deep nesting beyond the limit
    over = orjson.dumps({"stream": "big", "ts": ts, "value": 1.0, "pad": ""})
    cases.append((None, over[:-2] + b"x" * (LIMIT + 1 - len(over)) + over[-2:], "too_large"))
    cases.append((None, orjson.dumps({"stream": "big", "ts": ts, "value": 1.0, "pad": "x" * 200_000}), "too_large"))
    cases.append((None, b"[" * 100_000 + b"]" * 100_000, "too_large"))
    cases.append((b"big-key", b"\x00" * 500_000, "too_large"))
    return cases


def _valid_ticks(rng: random.Random) -> dict[str, list[bytes]]:
    """Per stream, its ticks in order; two are special: a huge stream name, and a tick of exactly LIMIT bytes."""
    streams: dict[str, list[bytes]] = {}
    for s in range(9):
        name = f"ok-{s}"
        streams[name] = [orjson.dumps({"stream": name, "ts": T0 + 60 * i, "value": 50 + 10 * (s + 1) * rng.random()})
                         for i in range(220)]  # warm-up is 150 ticks: the last 70 score for real
    long_name = "L" * 60_000
    streams[long_name] = [orjson.dumps({"stream": long_name, "ts": T0 + 60 * i, "value": float(i)}) for i in range(3)]
    at_limit = orjson.dumps({"stream": "at-limit", "ts": T0, "value": 1.0, "pad": ""})
    at_limit = at_limit[:-2] + b"x" * (LIMIT - len(at_limit)) + at_limit[-2:]
    assert len(at_limit) == LIMIT
    streams["at-limit"] = [at_limit]
    return streams


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024)


def _partition(stream: str) -> int:
    return sum(stream.encode()) % PARTITIONS  # deterministic, unlike hash()


def _wait(running, total: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while running.processed() < total:
        assert running.thread.is_alive(), "the daemon's loop died (see the traceback above)"
        assert time.monotonic() < deadline, f"processed {running.processed()} of {total} within {timeout}s"
        time.sleep(0.1)


def _topics(broker, stem: str) -> tuple[str, str, str]:
    topic = f"{stem}-{uuid.uuid4().hex[:8]}"
    for name, partitions in ((topic, PARTITIONS), (topic + "-scores", PARTITIONS), (topic + "-dlq", 1)):
        create_topic(broker.bootstrap, name, partitions)
    return topic, topic + "-scores", topic + "-dlq"


def test_hostile_input_is_counted_dead_lettered_and_skipped(broker, tmp_path, run_daemon, model, client):
    rng = random.Random(20260101)
    garbage = _garbage(rng)
    valid = _valid_ticks(rng)
    topic, scores_topic, dlq = _topics(broker, "hostile")

    # Interleave: each partition gets its streams' ticks in order with garbage at random places in between,
    # then 20 more valid ticks per stream after the last piece of garbage.
    events: list[tuple[int, bytes | None, bytes | None, str | None]] = []  # (partition, key, value, reason)
    tails = {}
    for stream, ticks in valid.items():
        cut = max(1, len(ticks) - 20)
        tails[stream] = ticks[cut:]
        events += [(_partition(stream), stream.encode(), t, None) for t in ticks[:cut]]
    positions = sorted(rng.sample(range(len(events) + len(garbage)), len(garbage)))
    for n, (pos, (key, value, reason)) in enumerate(zip(positions, garbage)):
        events.insert(pos, (n % PARTITIONS, key, value, reason))
    events += [(_partition(stream), stream.encode(), t, None) for stream, ticks in tails.items() for t in ticks]

    producer = _producer(broker.bootstrap)
    futures = [producer.send(topic, key=key, value=value, partition=p) for p, key, value, _ in events]
    producer.flush()
    metas = [f.get(timeout=30) for f in futures]
    producer.close()
    bad = {(m.partition, m.offset): (key, value, reason)
           for m, (_, key, value, reason) in zip(metas, events) if reason is not None}
    assert len(bad) == len(garbage) and {p for p, _ in bad} == set(range(PARTITIONS))
    assert len(garbage) >= 80, len(garbage)

    # Offline reference: the valid ticks alone, in per-stream order.
    reference_file = tmp_path / "valid.jsonl"
    reference_file.write_bytes(b"".join(t + b"\n" for ticks in valid.values() for t in ticks))
    offline, summary = score_file(reference_file, load_settings(None), model)
    n_valid = sum(len(t) for t in valid.values())
    assert summary.scored == n_valid
    assert sum(row.score > 0 for row in offline) > n_valid // 1000  # the comparison covers real scores

    settings = daemon_settings(broker.bootstrap, [topic], scores_topic=scores_topic, dead_letter_topic=dlq,
                               max_poll_records=97, client=client)
    started = time.monotonic()
    with run_daemon(settings) as running:
        _wait(running, len(events))
        metrics = running.scrape()
        assert running.thread.is_alive()
        from tests.chaos.processes import http_get

        assert http_get(running.daemon.http.port, "/healthz")[0] == 200
    elapsed = time.monotonic() - started

    # Counted by reason, and in the outcome counter.
    expected = Counter(reason for *_, reason in garbage)
    counted = {labels[0][1]: v for (name, labels), v in metrics.items() if name == "streamer_invalid_messages_total"}
    assert {r: int(v) for r, v in counted.items() if v} == dict(expected)
    assert metrics[("streamer_messages_total", (("outcome", "invalid"), ("topic", topic)))] == len(garbage)
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == n_valid
    assert metrics[("streamer_dead_lettered_messages_total", ())] == len(garbage)

    # Dead letters: one per bad message, original key and bytes, reason and source headers.
    letters = read_raw(broker.bootstrap, dlq, 1, expected=len(garbage), timeout_ms=5000)
    assert len(letters) == len(garbage)
    seen = set()
    for letter in letters:
        headers = dict(letter.headers)
        src_topic, src_partition, src_offset = headers["source"].decode().split("/")
        assert src_topic == topic
        source = (int(src_partition), int(src_offset))
        key, value, reason = bad[source]
        assert headers["reason"].decode() == reason, (source, value[:80] if value else value)
        assert letter.key == key
        assert letter.value == value  # byte for byte (None for the tombstone)
        seen.add(source)
    assert seen == set(bad)

    # Every valid tick scored, as offline: no partition stuck, no state touched by garbage.
    records = read_all(broker.bootstrap, scores_topic, PARTITIONS, expected=n_valid, timeout_ms=5000)
    reference = {(row.stream, float(row.timestamp)): row.score for row in offline}
    live = {(r["stream"], r["ts"]): r["anomaly_score"] for r in records}
    assert len(records) == n_valid and set(live) == set(reference)
    assert max(abs(live[k] - reference[k]) for k in reference) <= 1e-5
    print(f"hostile: {len(garbage)} bad + {n_valid} valid messages on {PARTITIONS} partitions, "
          f"{dict(expected)}; daemon {elapsed:.1f}s")


# --- poison pills: one message that stops the daemon ---------------------------------------------------------

HUGE_INT = b"1" + b"0" * 400  # orjson rejects it, json.loads makes it a Python int, float() overflows

PILLS = {
    # ticks.py: parse_ts/_number call float() on a Python int beyond float range -> OverflowError, which is
    # not an InvalidTick: _handle raises, the daemon exits, and on restart it dies on the same offset again.
    "huge_integer_value": ((None, b'{"stream": "p", "ts": 1760000005, "value": ' + HUGE_INT + b"}"), "non_finite"),
    "huge_integer_ts": ((None, b'{"stream": "p", "ts": ' + HUGE_INT + b', "value": 1.0}'), "non_finite"),
    # A lone surrogate (valid JSON escape, not encodable as UTF-8) becomes a stream name; publishing its
    # score record (tick.stream.encode()) raises UnicodeEncodeError and /metrics cannot be encoded either.
    "lone_surrogate_stream": ((None, b'{"stream": "\\ud800", "ts": 1760000005, "value": 1.0}'), "bad_type"),
    "lone_surrogate_value_name": ((None, b'{"stream": "p", "ts": 1760000005, "values": {"\\udfff": 1.0}}'),
                                  "bad_type"),
    # A record with neither key nor value (legal in Kafka, other clients produce it): _reject sends key=None,
    # value=None to the dead-letter topic and kafka-python raises ValueError("Need at least one: key or value").
    "null_key_and_value": ((None, None), "not_an_object"),
    # 2 MB: too_large, but the dead-letter producer (max_request_size 1 MB by default) raises
    # MessageSizeTooLargeError from send(): the daemon dies on every message larger than 1 MB.
    "beyond_producer_limit": ((b"huge", b"x" * (2 * 1024 * 1024)), "too_large"),
}


def _send_null_record(producer: KafkaProducer, topic: str, partition: int) -> None:
    """kafka-python refuses key=None, value=None in send(); the record format allows it, so append it directly."""
    producer._wait_on_metadata(topic, 10_000)
    future, *_ = producer._accumulator.append(TopicPartition(topic, partition), None, None, None, [],
                                              abort_on_new_batch=False)
    producer._sender.wakeup()
    producer.flush()
    future.get(timeout=10)


@pytest.mark.parametrize("pill", list(PILLS))
def test_poison_pill(broker, run_daemon, pill, client):
    """One bad message between valid ticks on a single partition: counted, dead-lettered, skipped."""
    (key, value), reason = PILLS[pill]
    topic, scores_topic, dlq = _topics(broker, f"pill-{pill.replace('_', '-')}")
    before = [orjson.dumps({"stream": "q", "ts": T0 + 60 * i, "value": float(i % 7)}) for i in range(30)]
    after = [orjson.dumps({"stream": "q", "ts": T0 + 60 * i, "value": float(i % 7)}) for i in range(30, 60)]
    producer = _producer(broker.bootstrap)
    for tick in before:
        producer.send(topic, key=b"q", value=tick, partition=0)
    producer.flush()
    if key is None and value is None:
        _send_null_record(producer, topic, 0)
    else:
        producer.send(topic, key=key, value=value, partition=0).get(timeout=30)
    for tick in after:
        producer.send(topic, key=b"q", value=tick, partition=0)
    producer.flush()
    producer.close()

    settings = daemon_settings(broker.bootstrap, [topic], scores_topic=scores_topic, dead_letter_topic=dlq,
                               client=client)
    with run_daemon(settings) as running:
        _wait(running, 61, timeout=60)
        assert running.thread.is_alive(), "the daemon's loop died (see the traceback above)"
        metrics = running.scrape()  # /metrics must stay scrapable whatever the stream names are
    assert metrics[("streamer_invalid_messages_total", (("reason", reason),))] == 1
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == 60
    letters = read_raw(broker.bootstrap, dlq, 1, expected=1, timeout_ms=3000)
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["source"] == f"{topic}/0/30".encode() and headers["reason"] == reason.encode()
    assert letters[0].value == value or (value is None and letters[0].value in (None, b""))
