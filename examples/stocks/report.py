"""The stocks example's result table: bad ticks caught, and the alarms a trader's pager would have shown.

    python examples/stocks/report.py OUT_DIR [--plot examples/stocks/spy-2013-10-09.png] [--summary LABEL]

OUT_DIR is the folder `prepare.py` wrote. Scores ``faulted.jsonl`` and ``clean.jsonl`` with ``streamer score``
and this folder's config.toml (the daemon's detector core, offline), then prints, in Markdown:

1. per injected fault kind: how many the detector caught at the README's alert threshold (0.30), and how
   late, next to the rolling median/MAD rule's (`streamer.devtools.incidents`); an alarm counts within
   SLACK after the fault's span; precision is the share of alarm episodes that fall on a fault;
2. on the untouched recording, alarm episodes per session and ticker (nothing is labelled there: each one
   would have paged someone), detector then rule;
3. with ``--summary LABEL``, the same in two compact rows (streamer, rule) named LABEL, to set configurations
   side by side: ``streamer score`` runs in a subprocess and inherits the environment, so a ``STREAMER_*``
   override (``STREAMER_RESETS__SESSION_TIMEZONE=`` turns the session resets off) applies on top of
   config.toml; the overrides in effect are printed with the rows.

With ``--plot``, also draws one session of SPY with its faults from the faulted feed's scores (as ``streamer
score --plot`` draws them).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from streamer.config import load_settings
from streamer.devtools.faults import MARKET_KINDS
from streamer.devtools.incidents import median_mad_rule, report
from streamer.devtools.usecase import THRESHOLD, arrival, compare, fault_table, score_both
from streamer.offline.score import ScoredRow, plot_scores

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"
EASTERN = ZoneInfo("America/New_York")
SLACK_S = 300.0  # an alarm up to 5 minutes after a fault's span still counts: one-minute bars, a pager's patience
PLOT_DAY, PLOT_TICKER = "2013-10-09", "SPY"  # a session with two fat fingers (seed 16)


def session(ts: float) -> str:
    return datetime.fromtimestamp(ts, EASTERN).strftime("%Y-%m-%d")


def fault_counts(scored, faults, warmup: int) -> tuple[Counter, Counter]:
    """Per kind: how many faults fell in a warm-up (scored 0), and how many late or repeated ticks the daemon
    counted as out_of_order."""
    in_warmup, out_of_order = Counter(), Counter()
    for stream, s in scored.items():
        at, warm = arrival(s.ts), s.warm
        for f in faults.get(stream, []):
            rows = np.flatnonzero(at >= f.start_ts)
            if f.kind not in ("late", "duplicate"):
                in_warmup[f.kind] += bool(len(rows)) and warm[rows[0]] <= warmup
            else:
                out_of_order[f.kind] += any(s.note[i] == "out_of_order" for i in np.flatnonzero(at == f.start_ts))
    return in_warmup, out_of_order


def notes(in_warmup: Counter, out_of_order: Counter, gap_reset: bool) -> dict[str, str]:
    """Per kind: what else the daemon says about it (out_of_order counts) and how many fell in warm-up."""
    text = {}
    for kind in MARKET_KINDS:
        parts = []
        if kind in ("late", "duplicate"):
            parts.append(f"{out_of_order[kind]} counted as out_of_order, not scored")
        if kind == "halt" and not gap_reset:
            parts.append("a gap; resets.max_gap_seconds is off (config.toml)")
        if in_warmup[kind]:
            parts.append(f"{in_warmup[kind]} in warm-up (score 0)")
        text[kind] = "; ".join(parts)
    return text


def pager(clean) -> tuple[str, float, float]:
    """Alarm episodes on the untouched data per session and ticker, detector / rule: the table, and the
    episodes per ticker-session of each."""
    per: dict[tuple[str, str], list[int]] = {}
    days: set[str] = set()
    for stream, s in clean.items():
        days |= {session(t) for t in s.ts}
        det = report(arrival(s.ts), s.score, THRESHOLD, [], SLACK_S)
        rule = report(s.ts, median_mad_rule(s.ts, s.value), 0.5, [], SLACK_S)
        for k, times in enumerate((det.false_alarm_times, rule.false_alarm_times)):
            for t in times:
                per.setdefault((session(t), stream), [0, 0])[k] += 1
    streams = list(clean)
    lines = ["| session | " + " | ".join(streams) + " | all |", "|---" * (len(streams) + 2) + "|"]
    total = [0, 0]
    for day in sorted(days):
        cells = []
        day_total = [0, 0]
        for stream in streams:
            d, r = per.get((day, stream), [0, 0])
            present = any(session(t) == day for t in clean[stream].ts)
            cells.append(f"{d} / {r}" if present else "–")
            day_total[0] += d
            day_total[1] += r
        total = [total[0] + day_total[0], total[1] + day_total[1]]
        lines.append(f"| {day} | " + " | ".join(cells) + f" | {day_total[0]} / {day_total[1]} |")
    sessions = sum(len({session(t) for t in s.ts}) for s in clean.values())
    lines.append(f"| **per ticker-session** | | | | | **{total[0] / sessions:.2f} / {total[1] / sessions:.2f}** |")
    return "\n".join(lines), total[0] / sessions, total[1] / sessions


def summary(label: str, detector, rule, pages: tuple[float, float], in_warmup: Counter) -> str:
    """Two Markdown rows, streamer then the median/MAD rule, to set configurations side by side: caught /
    injected per fault kind, precision (alarm episodes on a fault / all), alarm episodes per ticker-session on
    the untouched recording, faults that fell in a warm-up."""
    header = ["run", "detector", *MARKET_KINDS, "all", "precision", "pages per ticker-session (untouched)",
              "faults in warm-up"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r, per, warm in (("streamer", detector, pages[0], str(sum(in_warmup.values()))),
                               ("median/MAD rule", rule, pages[1], "")):
        kinds = [f"{r.kinds[k].caught}/{r.kinds[k].n}" for k in MARKET_KINDS]
        caught = sum(k.caught for k in r.kinds.values())
        good = r.episodes - r.false_alarm_episodes
        lines.append("| " + " | ".join([label, name, *kinds, f"{caught}/{sum(k.n for k in r.kinds.values())}",
                                        f"{good}/{r.episodes} = {r.precision:.0%}", f"{per:.2f}", warm]) + " |")
    return "\n".join(lines)


def plot(scores: Path, png: Path) -> None:
    """One session of one ticker, from the full run's scores CSV (``streamer score``'s output for the faulted
    feed), drawn as ``streamer score --plot`` draws a file (`plot_scores`). Not by scoring that day alone: a
    session continues its stream (a session reset restarts only the LSTM's state), so a file of one day would
    be scored as a new stream, with a warm-up and none of the days before."""
    rows = []
    with open(scores, newline="") as handle:
        for line, r in enumerate(csv.DictReader(handle), start=2):
            if r["stream"] == PLOT_TICKER and r["timestamp"].startswith(PLOT_DAY):
                numbers = (float(r[k]) if r[k] else math.nan for k in ("value", "anomaly_score", "error", "forecast"))
                rows.append(ScoredRow(line, r["timestamp"], r["stream"], *numbers, r["note"]))
    plot_scores(rows, png, THRESHOLD)
    print(f"plot: {PLOT_TICKER} on {PLOT_DAY}, {len(rows)} rows of {scores.name} -> {png}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder prepare.py wrote")
    parser.add_argument("--plot", type=Path, help=f"PNG of {PLOT_TICKER} on {PLOT_DAY} with its faults")
    parser.add_argument("--summary", metavar="LABEL", help="also print two compact rows named LABEL (streamer, "
                        "rule): caught per fault kind, precision, pages per ticker-session, faults in warm-up; "
                        "to set configurations (STREAMER_* environment overrides) side by side")
    args = parser.parse_args(argv)
    settings = load_settings(CONFIG)
    faults, faulted, clean = score_both(CONFIG, args.out)
    detector, rule = compare(faulted, faults, SLACK_S)
    print(f"\nInjected faults, alarms at score >= {THRESHOLD} (rule: |x - median| > 8 x 1.4826 MAD of the previous "
          f"60 bars), caught within {SLACK_S / 60:.0f} min after the fault:\n")
    in_warmup, out_of_order = fault_counts(faulted, faults, settings.detector.warmup)
    print(fault_table(detector, rule, MARKET_KINDS, notes=notes(in_warmup, out_of_order,
                                                                settings.resets.max_gap_seconds > 0)))
    print("\nAlarm episodes on the untouched recording (streamer / median-MAD rule):\n")
    table, *pages = pager(clean)
    print(table)
    if args.summary:
        overrides = " ".join(f"{k}={v!r}" for k, v in sorted(os.environ.items()) if k.startswith("STREAMER_"))
        print(f"\nSummary ({overrides or 'no STREAMER_* environment overrides'}):\n")
        print(summary(args.summary, detector, rule, tuple(pages), in_warmup))
    if args.plot:
        print()
        plot(args.out / "faulted_scores.csv", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
