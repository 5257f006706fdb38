"""examples/stocks through a real broker and the daemon: two sessions of SPY and BAC minute bars with bad
ticks injected, read with the example's config.toml (naive New York times, a session reset each morning:
the LSTM's state restarts, the stream goes on).

The daemon must count one session reset per ticker and session boundary, count the late and repeated ticks
as out_of_order, publish the same scores as ``streamer score`` gives offline, and alarm on the price-unit
errors and fat fingers (the kinds examples/stocks/README.md reports as caught outside the warm-up), two of
them in every session: a second bad print the same session is caught as the first was."""

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

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stocks"
DAYS = ("2013-10-07", "2013-10-08")
CAUGHT = ("unit_x100", "unit_div100", "fat_finger")
SKIPPED = ("late", "duplicate")
THRESHOLD, SLACK_S = 0.30, 300.0


def feed(tmp_path: Path, prepare) -> tuple[Path, dict]:
    """SPY and BAC on DAYS, in each session two caught kinds and one skipped kind, after 11:00 (past the
    first day's warm-up; a session reset starts none). Two caught kinds a session, a unit error among them in
    each: the normaliser's clip (detector.normaliser_clip) keeps the forecast on the price after one, and
    protect_decades keeps the stream's surprise tail from learning it, so the next bad print the same session
    scores as high (examples/stocks/README.md)."""
    series, labels = {}, {}
    pairs = [("unit_x100", "unit_div100"), ("fat_finger", "unit_x100"), ("unit_div100", "fat_finger"),
             ("unit_x100", "unit_div100")]
    kinds = iter((*pair, skipped) for pair, skipped in zip(pairs, SKIPPED * 2))
    for ticker in ("SPY", "BAC"):
        ts, values = prepare.read_bars(ticker, require_shared(prepare.SHARED))
        days = np.array([prepare.eastern(t)[:10] for t in ts])
        parts, labels[ticker] = [], []
        for k, day in enumerate(DAYS):
            day_ts, day_values = ts[days == day], values[days == day]
            hours = np.array([int(prepare.eastern(t)[11:13]) for t in day_ts])
            new_ts, new_values, faults = inject(day_ts, day_values, next(kinds), 1, seed=100 + k, guard=20,
                                                eligible=prepare.regular_session(day_ts) & (hours >= 11))
            parts.append((new_ts, new_values))
            labels[ticker] += faults
        series[ticker] = tuple(np.concatenate(column) for column in zip(*parts))
    path = tmp_path / "faulted.jsonl"
    prepare.write_feed(path, series)
    return path, labels


def test_stock_sessions_and_bad_ticks_through_the_daemon(broker, topic, run_daemon, model, tmp_path):
    prepare = example_module(EXAMPLE / "prepare.py")
    path, labels = feed(tmp_path, prepare)
    lines = path.read_bytes().splitlines()
    messages = [(orjson.loads(line)["stream"].encode(), line) for line in lines]
    produce(broker.bootstrap, topic, messages)
    scores_topic = topic + "-scores"
    create_topic(broker.bootstrap, scores_topic, partitions=3)
    settings = daemon_settings(broker.bootstrap, [topic], config=EXAMPLE / "config.toml", scores_topic=scores_topic)
    offline, summary = score_file(path, settings, model)

    with run_daemon(settings) as running:
        running.wait_processed(len(messages))
        metrics = running.scrape()
    skipped = sum(f.kind in SKIPPED for faults in labels.values() for f in faults)
    assert metrics[("streamer_state_resets_total", (("reason", "session"),))] == 2  # one per ticker, the 8th
    assert summary.resets == {"session": 2}
    assert metrics[("streamer_messages_total", (("outcome", "out_of_order"), ("topic", topic)))] == skipped == 4
    assert metrics[("streamer_messages_total", (("outcome", "scored"), ("topic", topic)))] == len(lines) - skipped

    records = read_all(broker.bootstrap, scores_topic, 3, expected=len(lines) - skipped)
    published = {(r["stream"], r["ts"]): r["anomaly_score"] for r in records}
    zone = settings.ticks.zone
    expected = {(r.stream, parse_ts(r.timestamp, zone)): r.score for r in offline if r.note != "out_of_order"}
    assert published.keys() == expected.keys()
    np.testing.assert_allclose([published[k] for k in expected], list(expected.values()), atol=1e-6)

    for ticker, faults in labels.items():
        for fault in (f for f in faults if f.kind in CAUGHT):
            peak = max(score for (stream, ts), score in published.items()
                       if stream == ticker and fault.start_ts <= ts <= fault.end_ts + SLACK_S)
            assert peak >= THRESHOLD, f"{ticker} {fault.kind} at {prepare.eastern(fault.start_ts)}: peak {peak}"
