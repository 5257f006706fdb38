"""The examples' report plumbing: scores CSVs read back per stream, warm-up counts, the fault table."""

import math
from zoneinfo import ZoneInfo

import numpy as np

from streamer.devtools.faults import Fault
from streamer.devtools.incidents import report
from streamer.devtools.usecase import arrival, fault_table, read_scores


def test_scores_csv_read_per_stream_in_the_ticks_zone(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("timestamp,stream,value,anomaly_score,error,forecast,note\n"
                    "2013-10-08 09:30:00,SPY,1,0.0,,,\n"
                    "2013-10-08 09:31:00,SPY,2,0.5,,,\n"
                    "2013-10-08 09:30:00,SPY,1,,,,out_of_order\n"
                    "2013-10-09 04:00:00,SPY,3,0.0,,,reset:session\n"
                    "2013-10-09 04:01:00,SPY,3,0.0,,,\n"
                    "2013-10-09 09:00:00,SPY,3,0.0,,,reset:gap\n"
                    "2013-10-09 09:01:00,SPY,3,0.0,,,reset:explicit\n"
                    "2013-10-09 09:02:00,SPY,3,0.0,,,\n"
                    "2013-10-09 09:03:00,SPY,3,0.0,,,reset:segment\n"
                    "1381239000,IBM,4,0.1,,,\n")
    scored = read_scores(path, ZoneInfo("America/New_York"))
    spy = scored["SPY"]
    assert spy.ts[0] == 1381239000.0 and scored["IBM"].ts.tolist() == [1381239000.0]  # 09:30 EDT = 13:30 UTC
    assert math.isnan(spy.score[2]) and spy.note[3] == "reset:session"
    # A skipped row does not count; a session or gap reset keeps the stream (and its count), an explicit or
    # segment reset starts a new one.
    assert spy.warm.tolist() == [1, 2, 2, 3, 4, 5, 1, 2, 1]
    assert arrival(spy.ts).tolist() == [spy.ts[0], spy.ts[1], spy.ts[1], *spy.ts[3:]]


def test_fault_table_lists_each_kind_for_both_detectors():
    ts = np.arange(0.0, 100.0)
    faults = [Fault("spike", 10, 10), Fault("stale", 50, 60)]
    detector = report(ts, np.where(ts == 10, 1.0, 0.0), 0.3, faults, 5)
    rule = report(ts, np.where(ts == 62, 1.0, 0.0), 0.5, faults, 5)
    table = fault_table(detector, rule, ["spike", "stale"], delay_unit=(1, "s"), notes={"stale": "flat"})
    lines = table.splitlines()
    assert lines[2] == "| spike | 1 | 1 (100%) | 0 s (0 s) | 0 (0%) | – (–) |  |"
    assert lines[3] == "| stale | 1 | 0 (0%) | – (–) | 1 (100%) | 12 s (12 s) | flat |"
    assert lines[-1].startswith("| precision") and "1/1 = 100%" in lines[-1]


def test_stocks_report_summary_rows_and_notes():
    from collections import Counter
    from pathlib import Path

    from streamer.devtools.faults import MARKET_KINDS
    from streamer.devtools.incidents import KindReport, Report
    from tests.conftest import example_module

    stocks = example_module(Path(__file__).resolve().parents[2] / "examples" / "stocks" / "report.py")
    detector = Report({k: KindReport(n=8, caught=7 if k == "unit_x100" else 0) for k in MARKET_KINDS}, episodes=10,
                      false_alarm_episodes=3)
    rule = Report({k: KindReport(n=8, caught=1) for k in MARKET_KINDS}, episodes=20, false_alarm_episodes=13)
    lines = stocks.summary("(a)", detector, rule, (0.48, 1.71), Counter(fat_finger=3, halt=1)).splitlines()
    assert lines[0] == ("| run | detector | " + " | ".join(MARKET_KINDS) + " | all | precision | "
                        "pages per ticker-session (untouched) | faults in warm-up |")
    n = len(MARKET_KINDS)
    assert MARKET_KINDS[0] == "unit_x100"
    assert lines[2] == f"| (a) | streamer | 7/8 | {'0/8 | ' * (n - 1)}7/{8 * n} | 7/10 = 70% | 0.48 | 4 |"
    assert lines[3] == f"| (a) | median/MAD rule | {'1/8 | ' * n}{n}/{8 * n} | 7/20 = 35% | 1.71 |  |"
    notes = stocks.notes(Counter(fat_finger=3), Counter(late=8), gap_reset=False)
    assert notes["fat_finger"] == "3 in warm-up (score 0)" and notes["late"] == "8 counted as out_of_order, not scored"
    assert notes["halt"].startswith("a gap") and not stocks.notes(Counter(), Counter(), gap_reset=True)["halt"]
