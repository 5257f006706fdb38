"""`streamer replay`: daemon wire format, keyed by stream, paced by the recorded timestamps."""

from __future__ import annotations

import time

import orjson
from kafka import KafkaConsumer, TopicPartition

from streamer.cli import main

ROWS = "timestamp,value\n" + "".join(f"2024-01-01 00:{m:02d}:00,{m * 1.5}\n" for m in range(0, 10))


def consume_all(bootstrap, topic, partitions, expected):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = []
    for message in consumer:
        out.append(message)
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_replay_paces_filters_and_keys(broker, topic, tmp_path, capsys):
    path = tmp_path / "machine.csv"
    path.write_text(ROWS)
    started = time.monotonic()
    code = main(["replay", str(path), "--topic", topic, "--bootstrap-servers", broker.bootstrap, "--speed", "120",
                 "--start", "2024-01-01T00:02:00", "--end", "2024-01-01T00:07:00"])
    elapsed = time.monotonic() - started
    assert code == 0
    assert "produced 6 messages" in capsys.readouterr().out
    assert 2.3 <= elapsed <= 8  # 5 recorded minutes at 120x: 2.5 s of pacing, plus start-up

    messages = consume_all(broker.bootstrap, topic, 3, expected=6)
    assert len(messages) == 6 and {m.key for m in messages} == {b"machine"}
    assert len({m.partition for m in messages}) == 1  # one stream, one partition, in order
    decoded = [orjson.loads(m.value) for m in sorted(messages, key=lambda m: m.offset)]
    assert [d["value"] for d in decoded] == [m * 1.5 for m in range(2, 8)]
    assert all(set(d) == {"stream", "ts", "value"} for d in decoded)


def test_replay_names_a_bad_row_or_skips_it(broker, topic, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text(ROWS + "2024-01-01 00:11:00,oops\n2024-01-01 00:12:00,\n")
    assert main(["replay", str(path), "--topic", topic, "--bootstrap-servers", broker.bootstrap]) == 2
    assert "bad.csv:12" in capsys.readouterr().err
    path.write_text(ROWS + "2024-01-01 00:11:00,bad-timestamp-below\nnot-a-time,3\n")
    assert main(["replay", str(path), "--topic", topic + "-skip", "--bootstrap-servers", broker.bootstrap,
                 "--skip-invalid"]) == 0
    assert "produced 10 messages" in capsys.readouterr().out
