"""examples/sensors end to end: two real SKAB valve experiments of the pump rig, as the example prepares them,
replayed through a real Tansu broker into the daemon with the example's configuration. The device score is
published (metric and score records) and equals what `streamer score` computes offline for the same ticks,
the reset between the experiments is counted, and both valve closures raise the device score above the
recommended threshold."""

from __future__ import annotations

import json
import uuid

import pytest

from examples.sensors.prepare import DEVICE, SKAB, read_experiment
from examples.sensors.report import CONFIG
from streamer.config import load_settings
from streamer.core.detector import Detector
from streamer.core.ticks import TickDecoder
from streamer.devtools.broker import create_topic
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.conftest import FAST_GROUP, require_shared
from tests.integration.kafka_helpers import read_all

THRESHOLD = 0.30  # the recommended alert threshold (README, deploy/prometheus/streamer-rules.yml)
SLACK_S = 60  # an alarm this soon after the operators' window still catches it (examples/sensors/report.py)
EXPERIMENTS = ("valve1/0", "valve1/1")


def test_the_device_score_of_the_pump_rig_is_published_and_equals_the_offline_one(broker, topic, run_daemon,
                                                                                    model, tmp_path):
    skab = require_shared(SKAB)
    ticks, labelled = [], []
    for name in EXPERIMENTS:
        rows, experiment = read_experiment(name, skab / f"{name}.csv", DEVICE, skab)
        ticks += rows
        labelled.append(experiment)
    path = tmp_path / "ticks.jsonl"
    path.write_text("".join(json.dumps(tick) + "\n" for tick in ticks))
    channels = len(ticks[0]["values"])
    total = len(ticks) * channels

    base = load_settings(CONFIG)
    scores_topic = topic + "-scores"
    create_topic(broker.bootstrap, scores_topic, partitions=3)
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": [broker.bootstrap], "topics": [topic],
                                               "group_id": f"g-{uuid.uuid4().hex[:8]}", "consumer": FAST_GROUP,
                                               "scores_topic": scores_topic}),
        "metrics": base.metrics.model_copy(update={"port": 0})})

    offline, summary = score_file(path, settings, model)
    assert summary.scored == total and dict(summary.resets) == {"segment": channels}  # one per channel

    assert replay(path, topic, settings, speed=None, progress=False).produced == len(ticks)
    with run_daemon(settings) as running:
        running.wait_scored(total)
        metrics = running.scrape()
    live = read_all(broker.bootstrap, scores_topic, 3, expected=total)

    # Tick by tick, the score records carry the offline device score.
    live_scores = {(r["stream"], r["ts"]): (r["device"], r["device_score"]) for r in live}
    assert len(live_scores) == total
    for row in offline:
        device, score = live_scores[(row.stream, float(row.timestamp))]
        assert device == row.device == DEVICE and score == pytest.approx(row.device_score, abs=1e-9)

    # The metric: the latest reading's device score, and the held peak of the same ticks scored offline.
    detector = Detector(model, settings.detector)
    decoder = TickDecoder(settings.ticks)
    for start in range(0, len(ticks), settings.kafka.max_poll_records):
        batch = [t for tick in ticks[start:start + settings.kafka.max_poll_records] for t in decoder.decode_obj(tick)]
        detector.process(batch, settings.resets.for_topic(topic))
    [(device, latest, peak)] = detector.top_devices(settings.metrics.max_stream_series)
    assert device == DEVICE and latest == pytest.approx(offline[-1].device_score, abs=1e-9)
    assert metrics[("streamer_device_score", (("device", DEVICE),))] == pytest.approx(latest, abs=1e-9)
    assert metrics[("streamer_device_score_peak", (("device", DEVICE),))] == pytest.approx(peak, abs=1e-9)
    assert metrics[("streamer_state_resets_total", (("reason", "segment"),))] == channels

    # Each valve closure (the operators' anomaly window) raises the device score above the threshold.
    for experiment in labelled:
        [(start, end)] = experiment.anomalies
        window = [row.device_score for row in offline if start <= float(row.timestamp) <= end + SLACK_S]
        assert max(window) >= THRESHOLD, experiment.name
