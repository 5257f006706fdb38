"""Smoke tests of `make bench` pieces at tiny sizes: ticks, state accounting, profile summary, the table.

Nothing here asserts a speed: the numbers depend on the machine. They check that the table has every row,
that ceiling and streamer run rows are measured interleaved, and that each ratio is the median of per-round
ratios against the right ceiling.
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


def test_a_workers_peak_rss_is_its_own_not_the_harness_s():
    """ru_maxrss of a child started by vfork + exec holds its parent's peak; the workers report VmHWM."""
    import subprocess
    import sys

    ballast = bytearray(256 << 20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touched: resident
    probe = "from benchmarks.bench import _peak_rss; print(_peak_rss())"
    child = int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                               cwd=bench.REPO).stdout)
    assert 0 < child < 256 << 20 <= bench._peak_rss()
    del ballast


def test_startup_reads_the_daemons_steps_from_its_log(tmp_path):
    from benchmarks import startup

    log = tmp_path / "run.log"
    log.write_text("\n".join([
        '{"ts": 100.9, "level": "info", "msg": "metrics listening"}',
        "not json (a traceback line)",
        '{"ts": 104.0, "level": "info", "msg": "partitions assigned"}',
        '{"ts": 109.0, "level": "info", "msg": "partitions assigned"}',
    ]))
    marks = startup._log_marks(log, wall=100.0)
    assert marks == pytest.approx({"built_s": 0.9, "assigned_s": 4.0})  # the first of each
    assert startup._median_range([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00)"
    assert startup._median_range([2 << 20], 2**20, "{:.0f}") == "2"


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


def _result(rate, cpu_seconds=1.0):
    """One worker's result for a row measured over one second."""
    return {"rate": rate, "seconds": 1.0, "messages": int(rate), "cpu_seconds": cpu_seconds}


def _row(row, *rates):
    rounds = [_result(rate) for rate in rates]
    return {**bench.summarise_rounds(rounds), "row": row, "label": row, "note": f"{row} note"}


def test_interleave_runs_the_steps_a_b_a_b_and_keeps_each_steps_rounds():
    calls = []

    def step(name):
        def measure():
            calls.append(name)
            return {"rate": float(len(calls))}
        return measure

    results = bench.interleave(3, {"ceiling": step("ceiling"), "run": step("run")})
    assert calls == ["ceiling", "run"] * 3
    assert [r["rate"] for r in results["ceiling"]] == [1.0, 3.0, 5.0]
    assert [r["rate"] for r in results["run"]] == [2.0, 4.0, 6.0]


def test_ratio_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # Round 2 ran while the machine was busy: both sides slow. Round by round the run is 0.8, 0.9, 0.7 x.
    ceiling = _row("ceiling", 100_000.0, 50_000.0, 100_000.0)
    run = _row("run", 80_000.0, 45_000.0, 70_000.0)
    assert run["rate"] == 70_000.0 and ceiling["rate"] == 100_000.0  # medians of the rounds
    bench._ratios(run, ceiling)
    assert run["ratio"] == pytest.approx(0.8)  # not 70,000 / 100,000
    assert run["ratio_range"] == pytest.approx((0.7, 0.9))
    assert bench._ratio_text(run) == "0.80 (0.70-0.90)"
    assert bench._ratios(ceiling, ceiling)["ratio"] == 1.0 and bench._ratio_text(ceiling) == "1.00"
    # CPU per message: the ceiling's over the row's, per round, median.
    cpu_run = {**run, "rounds": [_result(80_000.0, 2.0), _result(45_000.0, 1.0), _result(70_000.0, 1.4)]}
    assert bench._ratios(cpu_run, ceiling)["cpu_ratio"] == pytest.approx(0.5)  # of 0.4, 0.9, 0.5
    # Two rounds (--quick): the median is the mean of the two.
    pair = bench._ratios(_row("run", 60_000.0, 90_000.0), _row("ceiling", 100_000.0, 100_000.0))
    assert pair["ratio"] == pytest.approx(0.75) and pair["ratio_range"] == pytest.approx((0.6, 0.9))


def test_a_row_measured_once_is_taken_against_every_ceiling_round():
    naive = bench._ratios(_row("naive", 10_000.0), _row("ceiling", 100_000.0, 50_000.0, 200_000.0))
    assert naive["ratio"] == pytest.approx(0.1)
    assert naive["ratio_range"] == pytest.approx((0.05, 0.2))


def test_a_row_summarises_its_rounds():
    rounds = [{**_result(r), "peak_rss": rss, "scored": int(r)} for r, rss in
              [(90_000.0, 100), (70_000.0, 300), (80_000.0, 200)]]
    row = bench.summarise_rounds(rounds)
    assert row["rate"] == 80_000.0 and row["scored"] == 80_000  # the median round stands for the rest
    assert row["peak_rss"] == 300  # the highest
    assert row["rounds"] == rounds


def _variant(streams, main, run_rate):
    rows = [_row("ceiling", 100_000.0), _row("run", run_rate)]
    if main:
        rows.insert(1, _row("naive", 10_000.0))
    for r in rows:
        bench._ratios(r, rows[0])
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


def test_render_shows_the_median_ratio_its_range_and_the_rounds():
    main = _variant(10_000, True, 80_000.0)
    ceiling = _row("ceiling", 100_000.0, 50_000.0, 100_000.0)
    run = bench._ratios(_row("run", 80_000.0, 45_000.0, 70_000.0), ceiling)
    run["note"] = bench._row_note({**run, "scored": run["messages"]})
    main["rows"] = [bench._ratios(ceiling, ceiling), bench._ratios(_row("naive", 10_000.0), ceiling), run]
    results = {"env": {"cpus": 2, "python": "3.11", "kafka_python": "3", "torch": "2", "numba": "0.68",
                       "broker": "tansu", "partitions": 4, "producer": "kafka-python"},
               "plan": {"rounds": 3}, "variants": [main]}
    text = bench.render(results)
    (line,) = [x for x in text.splitlines() if x.split()[:2] == ["10,000", "run"]]
    assert "70,000" in line and "0.80 (0.70-0.90)" in line and "3 rounds, 45,000-80,000 msg/s" in line
    measured = {target: (ok, m) for ok, target, m in bench.targets(results)}
    ok, text = measured["streamer run >= 0.7 x ceiling (10,000 streams)"]
    assert ok and text == "0.80 x (median of 3 rounds, 0.70-0.90)"


def test_confluent_rows_have_their_own_ratios_and_targets():
    main = _variant(10_000, True, 80_000.0)
    rows = {r["row"]: r for r in main["rows"]}
    extra = [_row("ceiling-confluent", 500_000.0), _row("naive-confluent", 10_000.0), _row("run-confluent", 160_000.0)]
    for r in extra:
        bench._ratios(r, rows["ceiling"])
    main["rows"] += extra
    main["confluent"] = {"ratio": 160_000.0 / 500_000.0, "ratio_range": (0.32, 0.32), "rounds": [{}],
                         "cpu_ratio": 0.2, "naive_factor": 16.0}
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
    assert plan.rounds == 2
    plan = bench.make_plan(_args("--messages", "5000", "--naive-messages", "9000", "--also-streams", "",
                                 "--producer", "kafka-python", "--no-confluent-ceiling"))
    assert plan.messages == 5000 and plan.naive_messages == 5000 and plan.also_streams == []
    assert plan.rounds == 3
    assert bench.make_plan(_args("--quick", "--rounds", "5", "--producer", "kafka-python",
                                 "--no-confluent-ceiling")).rounds == 5


@pytest.mark.slow
def test_tiny_end_to_end_run_prints_the_whole_table(broker, capsys, tmp_path):
    """Every measurement once against the session's Tansu broker, at a size that takes seconds."""
    args = _args("--messages", "3000", "--streams", "40", "--also-streams", "", "--naive-messages", "500",
                 "--latency-seconds", "1.5", "--producer", "kafka-python", "--no-confluent-ceiling", "--rounds", "2",
                 "--scrape-every", "0", "--bootstrap-servers", broker.bootstrap, "--json", str(tmp_path / "r.json"),
                 "--workdir", str(tmp_path / "work"))
    assert bench.run(args, load_settings(None)) == 0
    out = capsys.readouterr().out
    for label in ("ceiling: kafka-python + orjson", "naive: per msg LSTMCell + Gauge", "streamer run (Daemon)",
                  "Cost", "Latency (40 streams)", "Targets", "NAB score", "2 rounds"):
        assert label in out
    import json

    # Workers in the order they ran: ceiling and streamer run interleaved, then the rows measured once.
    order = [p.name.split(".")[0] for p in sorted((tmp_path / "work").glob("*.spec.json"))]
    assert order == ["01-ceiling", "02-daemon", "03-ceiling", "04-daemon", "05-naive", "06-state", "07-latency"]
    (variant,) = json.loads((tmp_path / "r.json").read_text())["variants"]
    rows = {r["row"]: r for r in variant["rows"]}
    assert rows["ceiling"]["ratio"] == 1.0
    assert len(rows["ceiling"]["rounds"]) == len(rows["run"]["rounds"]) == 2 and len(rows["naive"]["rounds"]) == 1
    per_round = [r["rate"] / c["rate"] for r, c in zip(rows["run"]["rounds"], rows["ceiling"]["rounds"])]
    assert rows["run"]["ratio"] == pytest.approx(sum(per_round) / 2)  # the median of two
    assert rows["run"]["ratio_range"] == pytest.approx([min(per_round), max(per_round)])
    assert all(r["messages"] == 3000 for r in rows["ceiling"]["rounds"] + rows["run"]["rounds"])
    assert all(r["scored_rate"] >= r["rate"] for r in rows["run"]["rounds"])  # scored, then committed
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
