"""Smoke tests of `make bench` pieces at tiny sizes: ticks, state accounting, profile summary, the table.

Nothing here asserts a speed: the numbers depend on the machine. They check that the table has every row and
that the ratios are computed against the right ceiling.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import pytest

from benchmarks import bench
from streamer.config import load_settings
from streamer.core.ticks import TickDecoder
from tests.conftest import require


def test_tick_payloads_are_small_keyed_json_ticks_in_order():
    decoder = TickDecoder(load_settings(None).ticks, clock=lambda: 4e9)
    payloads = bench.tick_payloads(0, 300, streams=7)
    last_ts = defaultdict(lambda: -math.inf)
    for key, value in payloads:
        (tick,) = decoder.decode(value, key)
        assert tick.stream == key.decode()
        assert tick.ts > last_ts[tick.stream]
        last_ts[tick.stream] = tick.ts
        assert 40 <= len(value) <= 64
    assert len(last_ts) == 7
    # A chunk boundary does not change the sequence.
    assert bench.tick_payloads(100, 200, 7)[0][0] == payloads[100][0]


def test_state_worker_counts_arrays_exactly_and_python_side_by_tracemalloc():
    settings = load_settings(None)
    state = bench._worker_state({"settings": bench._settings_data(settings), "streams": 300})
    assert state["streams"] == 300
    arrays = state["arrays"]
    assert arrays["h"] == arrays["c"] == state["capacity"] * 64 * 4  # float32 x hidden
    assert arrays["scalars"] > 0 and arrays["profile"] > 0
    assert state["live_per_stream"] == sum(arrays.values()) / state["capacity"]
    assert state["alloc_per_stream"] >= state["live_per_stream"]
    assert 50 < state["python_per_stream"] < 2000


def test_profile_summary_counts_self_and_inclusive_and_drops_the_harness():
    raw = "\n".join([
        "thread (1): MainThread;run (streamer/daemon.py:10);process (streamer/detector.py:5) 6",
        "thread (1): MainThread;run (streamer/daemon.py:10);process (streamer/detector.py:7);step (x.py:1) 3",
        "thread (2): bench-monitor;_monitor (streamer/bench.py:1) 50",
        "thread (3): kafka-io;poll (kafka/client.py:3) 1",
    ])
    top = bench.summarise_collapsed(raw)
    assert top["total"] == 10
    assert top["self"]["process (streamer/detector.py)"] == 6
    assert top["inclusive"]["process (streamer/detector.py)"] == 9  # two lines, one function
    assert top["inclusive"]["run (streamer/daemon.py)"] == 9
    assert not any("bench-monitor" in t for t in top["threads"])
    text = bench.format_profile(top, {"seconds": 1.0, "messages": 10, "rate": 10.0})
    assert "90.0%  run (streamer/daemon.py)" in text


def _row(row, rate):
    return {"row": row, "label": row, "rate": rate, "seconds": 1.0, "messages": int(rate), "cpu_seconds": 1.0,
            "note": f"{row} note"}


def _variant(streams, main, run_rate):
    rows = [_row("ceiling", 100_000.0), _row("run", run_rate)]
    if main:
        rows.insert(1, _row("naive", 10_000.0))
    for r in rows:
        r["ratio"] = r["rate"] / rows[0]["rate"]
    daemon = {"peak_rss": 300 << 20, "base_rss": 250 << 20, "metrics_bytes": 50_000, "metrics_series": 1000,
              "scrape_idle_ms": [5.0, 6.0], "scrape_load_ms": [300.0 if streams >= 100_000 else 9.0]}
    state = {"alloc_per_stream": 970.0, "live_per_stream": 592.0, "python_per_stream": 200.0,
             "rss_per_stream": 1500.0}
    v = {"streams": streams, "main": main, "rows": rows, "daemon": daemon, "state": state,
         "produce": {"rate": 1e5, "messages": 1000, "mean_bytes": 50.0, "backend": "kafka-python"}}
    if main:
        v["latency"] = {"rate": 20_000.0, "target_rate": 20_000.0, "seconds": 10.0, "count": 200_000,
                        "p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 120.0, "max_ms": 200.0, "mean_poll": 500.0}
    return v


def test_render_has_every_row_and_a_verdict_per_target():
    results = {"env": {"cpus": 2, "python": "3.11", "kafka_python": "3", "torch": "2", "numba": "0.68",
                       "broker": "tansu", "partitions": 4, "producer": "kafka-python"},
               "plan": {}, "variants": [_variant(10_000, True, 80_000.0), _variant(100_000, False, 50_000.0)]}
    text = bench.render(results)
    for needle in ("ceiling", "naive", "run", "(producer, for reference)", "0.80", "0.10", "0.50", "Cost",
                   "Latency (10,000 streams)", "p99 120.0 ms", "NAB score", bench.NAB_COMMAND):
        assert needle in text
    verdicts = bench.targets(results)
    assert [ok for ok, _, _ in verdicts] == [True, False, True, False, True]


def test_confluent_rows_have_their_own_ratios_and_targets():
    main = _variant(10_000, True, 80_000.0)
    rows = {r["row"]: r for r in main["rows"]}
    extra = [_row("ceiling-confluent", 500_000.0), _row("naive-confluent", 10_000.0), _row("run-confluent", 160_000.0)]
    for r in extra:
        r["ratio"] = r["rate"] / rows["ceiling"]["rate"]
    main["rows"] += extra
    main["confluent"] = {"ratio": 160_000.0 / 500_000.0, "cpu_ratio": 0.2, "naive_factor": 16.0}
    results = {"env": {"cpus": 2, "python": "3.11", "kafka_python": "3", "confluent_kafka": "2.16.1", "torch": "2",
                       "numba": "0.68", "broker": "tansu", "partitions": 4, "producer": "kafka-python"},
               "plan": {}, "variants": [main]}
    text = bench.render(results)
    assert "confluent-kafka 2.16.1" in text and "run-confluent" in text
    assert "streamer run = 0.32 x the confluent ceiling (CPU ratio 0.20) and 16.0 x the naive" in " ".join(text.split())
    verdicts = {target: ok for ok, target, _ in bench.targets(results)}
    assert verdicts["confluent streamer run >= 0.3 x confluent ceiling (10,000 streams)"] is True
    assert verdicts["confluent streamer run >= 20 x confluent naive"] is False


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_plan_is_small_and_explicit_values_win():
    plan = bench.make_plan(_args("--quick", "--producer", "kafka-python", "--no-confluent-ceiling"))
    assert plan.messages == 100_000 and plan.naive_messages == 20_000 and plan.also_streams == [100, 100_000]
    plan = bench.make_plan(_args("--messages", "5000", "--naive-messages", "9000", "--also-streams", "",
                                 "--producer", "kafka-python", "--no-confluent-ceiling"))
    assert plan.messages == 5000 and plan.naive_messages == 5000 and plan.also_streams == []


@pytest.mark.slow
def test_tiny_end_to_end_run_prints_the_whole_table(broker, capsys, tmp_path):
    """Every measurement once against the session's Tansu broker, at a size that takes seconds."""
    args = _args("--messages", "3000", "--streams", "40", "--also-streams", "", "--naive-messages", "500",
                 "--latency-seconds", "1.5", "--producer", "kafka-python", "--no-confluent-ceiling",
                 "--scrape-every", "0", "--bootstrap-servers", broker.bootstrap, "--json", str(tmp_path / "r.json"))
    assert bench.run(args, load_settings(None)) == 0
    out = capsys.readouterr().out
    for label in ("ceiling: kafka-python + orjson", "naive: per msg LSTMCell + Gauge", "streamer run (Daemon)",
                  "Cost", "Latency (40 streams)", "Targets", "NAB score"):
        assert label in out
    import json

    (variant,) = json.loads((tmp_path / "r.json").read_text())["variants"]
    rows = {r["row"]: r for r in variant["rows"]}
    assert rows["ceiling"]["ratio"] == 1.0
    assert rows["ceiling"]["messages"] == rows["run"]["messages"] == 3000
    assert rows["naive"]["messages"] == 500
    for r in rows.values():
        assert math.isfinite(r["ratio"]) and 0 < r["ratio"] < 100
    assert variant["daemon"]["streams_in_memory"] == 40
    assert variant["latency"]["count"] >= 1 and variant["latency"]["p50_ms"] >= 0


@pytest.mark.slow
def test_tiny_run_with_the_confluent_rows(broker, capsys, tmp_path):
    """The ceiling, naive and streamer run rows once more with kafka.client = confluent-kafka."""
    require("confluent_kafka", install="pip install -e '.[dev]'")
    args = _args("--messages", "3000", "--streams", "40", "--also-streams", "", "--naive-messages", "500",
                 "--latency-seconds", "1", "--producer", "kafka-python", "--confluent", "--scrape-every", "0",
                 "--bootstrap-servers", broker.bootstrap, "--json", str(tmp_path / "r.json"))
    assert bench.run(args, load_settings(None)) == 0
    out = capsys.readouterr().out
    for label in ("ceiling: confluent-kafka + orjson", "naive with confluent-kafka",
                  "streamer run, kafka.client=confluent-kafka", "confluent streamer run >= 0.3 x confluent ceiling",
                  "confluent streamer run >= 20 x confluent naive"):
        assert label in out
    import json

    (variant,) = json.loads((tmp_path / "r.json").read_text())["variants"]
    rows = {r["row"]: r for r in variant["rows"]}
    assert rows["ceiling-confluent"]["messages"] == rows["run-confluent"]["messages"] == 3000
    assert rows["naive-confluent"]["messages"] == 500
    assert 0 < variant["confluent"]["ratio"] < 100 and variant["confluent"]["naive_factor"] > 0
