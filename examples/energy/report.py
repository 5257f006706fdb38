"""The energy example's result tables: meter faults caught, alarms on the untouched data, and the warm-up.

    python examples/energy/report.py OUT_DIR [--plot examples/energy/taylor.png]

OUT_DIR is the folder `prepare.py` wrote. Scores ``faulted.jsonl`` and ``clean.jsonl`` with ``streamer score``
and this folder's config.toml (the daemon's detector core, offline), then prints, in Markdown:

1. per injected fault kind: how many the detector caught at the README's alert threshold (0.30), and how
   late, next to the rolling median/MAD rule's (`streamer.devtools.incidents`); an alarm counts within
   SLACK after the fault's span; precision is the share of alarm episodes that fall on a fault;
2. the warm-up, on the untouched recording: when a stream's first score comes (the first
   ``detector.warmup`` ticks score 0), its alarm episodes week by week, and when they settle: the end of
   the last of the first EARLY_WEEKS weeks with more episodes than twice the stream's rate from then on
   (episodes per week over the rest of the recording); then alarm episodes per day before and after.

With ``--plot``, also draws the faulted demand stream (``streamer score --plot``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

from streamer.config import load_settings
from streamer.devtools.faults import ENERGY_KINDS
from streamer.devtools.incidents import median_mad_rule, report
from streamer.devtools.usecase import THRESHOLD, Scored, compare, fault_table, score, score_both

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"
SLACK_S = 7200.0  # an alarm up to 2 hours after a fault's span still counts
EARLY_WEEKS = 8
WEEK = 7 * 86400.0
PLOT_STREAM = "taylor"


def warmup_row(stream: str, s: Scored, warmup: int) -> tuple[str, float]:
    """One stream's warm-up line, and the seconds from its first tick until its alarms settled."""
    start = s.ts[0]
    first_score = s.ts[np.flatnonzero(s.warm > warmup)[0]] - start
    det = report(s.ts, s.score, THRESHOLD, [], SLACK_S)
    rule = report(s.ts, median_mad_rule(s.ts, s.value), 0.5, [], SLACK_S)
    weeks = int(np.ceil((s.ts[-1] - start) / WEEK))
    per_week = np.bincount(((np.array(det.false_alarm_times) - start) // WEEK).astype(int), minlength=weeks)
    later = per_week[EARLY_WEEKS:].mean() if weeks > EARLY_WEEKS else 0.0
    noisy = np.flatnonzero(per_week[:EARLY_WEEKS] > 2 * later)
    settled = (noisy[-1] + 1) * WEEK if len(noisy) else first_score
    days = (s.ts[-1] - start) / 86400
    before = int((np.array(det.false_alarm_times) - start < settled).sum())
    settled_days = settled / 86400
    cells = [stream, f"{days:.0f}", f"{first_score / 86400:.1f}",
             " ".join(str(n) for n in per_week[:EARLY_WEEKS]), f"{later:.2f}", f"**{settled_days:.0f}**",
             f"{before / settled_days:.2f}", f"{(det.episodes - before) / max(days - settled_days, 1e-9):.3f}",
             f"{det.episodes / days:.3f} / {rule.episodes / days:.3f}"]
    return "| " + " | ".join(cells) + " |", settled


def warmup_table(clean: dict[str, Scored], warmup: int) -> str:
    header = ["stream", "days", "first score after (days)", f"alarm episodes in weeks 1-{EARLY_WEEKS}",
              "per week after", "settled after (days)", "per day until settled", "per day after",
              "per day, all: streamer / median-MAD rule"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [warmup_row(stream, s, warmup)[0] for stream, s in clean.items()]
    return "\n".join(lines)


def plot(out: Path, png: Path) -> None:
    one = out / f"plot-{PLOT_STREAM}.jsonl"
    with open(out / "faulted.jsonl", "rb") as src, open(one, "wb") as dst:
        dst.writelines(line for line in src if orjson.loads(line)["stream"] == PLOT_STREAM)
    score(CONFIG, one, out / "plot_scores.csv", plot=png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder prepare.py wrote")
    parser.add_argument("--plot", type=Path, help=f"PNG of the faulted {PLOT_STREAM} stream")
    args = parser.parse_args(argv)
    settings = load_settings(CONFIG)
    faults, faulted, clean = score_both(CONFIG, args.out)
    detector, rule = compare(faulted, faults, SLACK_S)
    print(f"\nInjected faults, alarms at score >= {THRESHOLD} (rule: |x - median| > 8 x 1.4826 MAD of the previous "
          f"60 readings), caught within {SLACK_S / 3600:.0f} h after the fault:\n")
    print(fault_table(detector, rule, ENERGY_KINDS, delay_unit=(3600, "h")))
    print(f"\nWarm-up on the untouched recording (detector.warmup = {settings.detector.warmup} ticks score 0; "
          "alarm episodes at the same threshold):\n")
    print(warmup_table(clean, settings.detector.warmup))
    if args.plot:
        print()
        plot(args.out, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
