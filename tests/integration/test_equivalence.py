"""Scoring a recorded file offline equals replaying it through Kafka into the daemon, tick for tick."""

from __future__ import annotations

import gzip

import numpy as np
import orjson

from streamer.config import load_settings
from streamer.devtools.broker import create_topic
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.conftest import daemon_settings
from tests.integration.kafka_helpers import read_all


def write_recording(path, streams=40, length=250, seed=0, prefix="s"):
    """Many streams interleaved by time, with segment changes, explicit resets and a few anomalies."""
    rng = np.random.default_rng(seed)
    t0 = 1_760_000_000
    with gzip.open(path, "wb") as out:
        for i in range(length):
            for s in range(streams):
                value = 100 * (s + 1) + 10 * np.sin(i / (5 + s % 7)) + rng.normal(0, 1)
                if s % 9 == 0 and 180 <= i < 185:
                    value += 80
                rec = {"stream": f"{prefix}{s:02d}", "ts": t0 + 60 * i + s, "value": float(value),
                       "segment": f"run-{i // 100}" if s % 3 == 0 else None}
                if s % 5 == 1 and i == 120:
                    rec["reset"] = True
                out.write(orjson.dumps(rec) + b"\n")
    return streams * length


def test_offline_scores_equal_daemon_scores(broker, tmp_path, run_daemon, model, client):
    path = tmp_path / "recording.jsonl.gz"
    total = write_recording(path)
    offline, summary = score_file(path, load_settings(None), model)
    assert summary.scored == total and sum(summary.resets.values()) > 0

    topic = f"equivalence-{client}"
    create_topic(broker.bootstrap, topic, partitions=3)
    create_topic(broker.bootstrap, topic + "-scores", partitions=3)
    settings = daemon_settings(broker.bootstrap, [topic], scores_topic=topic + "-scores", max_poll_records=317,
                               client=client)
    report = replay(path, topic, settings, speed=None, progress=False)
    assert report.produced == total
    with run_daemon(settings) as running:
        running.wait_scored(total)
    live = read_all(broker.bootstrap, topic + "-scores", 3, expected=total)

    live_scores = {(r["stream"], r["ts"]): r["anomaly_score"] for r in live}
    assert len(live_scores) == total
    diffs = [abs(live_scores[(row.stream, float(row.timestamp))] - row.score) for row in offline]
    assert max(diffs) <= 1e-5
    assert max(row.score for row in offline) > 0.3  # the comparison covers real alarms, not only zeros
    # the kind of evidence behind each score above 0 too (a record without one: a score of 0)
    live_evidence = {(r["stream"], r["ts"]): r.get("evidence", "") for r in live}
    assert {(row.stream, float(row.timestamp)): row.evidence for row in offline} == live_evidence
    assert {row.evidence for row in offline if row.score > 0.3} >= {"range"}


def test_a_stacked_gru_scores_the_same_in_the_daemon(broker, tmp_path):
    """The cell and the layers travel with the model into the daemon: two GRU layers (the furthest from the
    default) score a replay as they score the file offline."""
    from streamer.core.model import Forecaster, ModelSpec
    from tests.conftest import RunningDaemon

    model = Forecaster.random(ModelSpec(hidden_size=16, cell="gru", layers=2), seed=2)
    path = tmp_path / "recording.jsonl.gz"
    total = write_recording(path)
    # The recording's streams are young (4 hours): an untrained model's surprise never reaches the young
    # streams' novelty gate, here set to the older streams' one, and without alarms the comparison below
    # would only cover low scores.
    def ungated(settings):
        detector = settings.detector.model_copy(update={"novelty_gate_young": 1.0})
        return settings.model_copy(update={"detector": detector})

    offline, _ = score_file(path, ungated(load_settings(None)), model)
    topic = "equivalence-gru2"
    create_topic(broker.bootstrap, topic, partitions=2)
    create_topic(broker.bootstrap, topic + "-scores", partitions=2)
    settings = ungated(daemon_settings(broker.bootstrap, [topic], scores_topic=topic + "-scores",
                                       max_poll_records=97))
    assert replay(path, topic, settings, speed=None, progress=False).produced == total
    with RunningDaemon(settings, model) as running:
        running.wait_scored(total)
    live = {(r["stream"], r["ts"]): r["anomaly_score"]
            for r in read_all(broker.bootstrap, topic + "-scores", 2, expected=total)}
    assert max(abs(live[(row.stream, float(row.timestamp))] - row.score) for row in offline) <= 1e-5
    assert max(row.score for row in offline) > 0.3


def test_each_topic_is_scored_with_its_own_detector_settings(broker, tmp_path, run_daemon, model):
    """`[detector.topics.<topic>]`: one daemon serves sensor metrics and prices, and scores each topic's ticks
    as `streamer score --topic` scores its file: the prices without range novelty or time-of-day evidence."""
    from streamer.config import DetectorSettings

    sensors, prices = "topics-sensors", "topics-prices"
    settings = daemon_settings(broker.bootstrap, [sensors, prices], scores_topic="topics-scores", max_poll_records=211)
    detector = settings.detector.model_copy(update={"topics": {prices: DetectorSettings(
        range_evidence=False, season_evidence=False, protect_decades=4)}})
    settings = settings.model_copy(update={"detector": detector})
    create_topic(broker.bootstrap, "topics-scores", partitions=2)
    offline, total = {}, 0
    for topic in (sensors, prices):
        path = tmp_path / f"{topic}.jsonl.gz"
        total += write_recording(path, prefix=topic[7:])  # streams "sensors00", "prices00", ...
        offline[topic], _ = score_file(path, settings, model, topic=topic)
        create_topic(broker.bootstrap, topic, partitions=2)
        assert replay(path, topic, settings, speed=None, progress=False).produced == len(offline[topic])
    with run_daemon(settings) as running:
        running.wait_scored(total)
    live = {(r["stream"], r["ts"]): (r["anomaly_score"], r.get("evidence", ""))
            for r in read_all(broker.bootstrap, "topics-scores", 2, expected=total)}
    assert len(live) == total
    for topic, rows in offline.items():
        assert max(abs(live[(row.stream, float(row.timestamp))][0] - row.score) for row in rows) <= 1e-5, topic
        assert all(live[(row.stream, float(row.timestamp))][1] == row.evidence for row in rows), topic
    alarms = {topic: {row.evidence for row in rows if row.score > 0.3} for topic, rows in offline.items()}
    assert "range" in alarms[sensors] and alarms[prices] == {"forecast"}
