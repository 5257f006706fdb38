"""examples/energy through a real broker and the daemon: four weeks of half-hourly demand and six of hourly
transformer oil temperature, with dropouts to zero injected and an 8-hour outage of the demand feed, read with
the example's config.toml (a gap over 6 hours restarts the stream's LSTM state).

The daemon must count the outage as one gap reset (after which the stream goes on with its state, no new
warm-up), publish the same scores as ``streamer score`` gives offline, and alarm on a stream's first dropout
(the kind examples/energy/README.md reports as caught most; one dropout a stream: the zeros of a first one are
learnt, and a second one can score below the threshold, as the README says)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from streamer.core.ticks import parse_ts
from streamer.devtools.broker import create_topic
from streamer.devtools.faults import inject
from streamer.offline.score import score_file
from tests.conftest import daemon_settings, example_module, require_shared
from tests.integration.kafka_helpers import produce, read_all

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "energy"
DAY = 86400.0
THRESHOLD, SLACK_S = 0.30, 7200.0
SLICES = {"taylor": 28, "etth1/OT": 42}  # days of each stream
OUTAGE = ("taylor", 24 * DAY, 24 * DAY + 8 * 3600)  # readings removed: the feed was down


def feed(tmp_path: Path, prepare) -> tuple[Path, dict]:
    series, labels = {}, {}
    for k, (stream, (ts, values)) in enumerate(prepare.read_series(require_shared(prepare.SHARED)).items()):
        if stream not in SLICES:
            continue
        age = ts - ts[0]
        keep = age < SLICES[stream] * DAY
        ts, values, age = ts[keep], values[keep], age[keep]
        step = ts[1] - ts[0]
        ts, values, faults = inject(ts, values, ("dropout",), 1, seed=200 + k, guard=int(DAY / step),
                                    eligible=(age >= 10 * DAY) & (age < 22 * DAY))
        if stream == OUTAGE[0]:
            down = (ts - ts[0] >= OUTAGE[1]) & (ts - ts[0] < OUTAGE[2])
            ts, values = ts[~down], values[~down]
        series[stream], labels[stream] = (ts, values), faults
    path = tmp_path / "faulted.jsonl"
    prepare.write_feed(path, series)
    return path, labels


def test_meter_dropouts_and_an_outage_through_the_daemon(broker, topic, run_daemon, model, tmp_path):
    prepare = example_module(EXAMPLE / "prepare.py")
    path, labels = feed(tmp_path, prepare)
    lines = path.read_bytes().splitlines()
    produce(broker.bootstrap, topic, [(orjson.loads(line)["stream"].encode(), line) for line in lines])
    scores_topic = topic + "-scores"
    create_topic(broker.bootstrap, scores_topic, partitions=3)
    settings = daemon_settings(broker.bootstrap, [topic], config=EXAMPLE / "config.toml", scores_topic=scores_topic)
    offline, summary = score_file(path, settings, model)

    with run_daemon(settings) as running:
        running.wait_scored(len(lines))
        metrics = running.scrape()
    assert metrics[("streamer_state_resets_total", (("reason", "gap"),))] == 1 and summary.resets == {"gap": 1}
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == len(lines)
    back = next(i for i, r in enumerate(offline) if r.note == "reset:gap")
    assert offline[back].stream == OUTAGE[0] and np.isfinite(offline[back].forecast)  # its forecast kept

    records = read_all(broker.bootstrap, scores_topic, 3, expected=len(lines))
    published = {(r["stream"], r["ts"]): r["anomaly_score"] for r in records}
    zone = settings.ticks.zone
    expected = {(r.stream, parse_ts(r.timestamp, zone)): r.score for r in offline}
    assert published.keys() == expected.keys()
    np.testing.assert_allclose([published[k] for k in expected], list(expected.values()), atol=1e-6)

    for stream, faults in labels.items():
        for fault in faults:
            peak = max(score for (s, ts), score in published.items()
                       if s == stream and fault.start_ts <= ts <= fault.end_ts + SLACK_S)
            assert peak >= THRESHOLD, f"{stream} dropout at {fault.start_ts}: peak {peak}"
