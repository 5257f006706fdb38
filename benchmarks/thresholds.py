"""What an alert threshold costs and buys: false alarms on clean and unlabelled streams, detections on labelled ones.

    PYTHONPATH=. python benchmarks/thresholds.py [--variant SPEC] [--thresholds 0.3 0.4 0.5 0.7 1.0]

NAB scoring picks each detector's best threshold after the fact; a user alerting from Grafana fixes one before.
Per threshold, for one detector variant (the ``name:key=value`` syntax of `loco.py`; the default if none):

- **labelled corpora** (`../shared/nab`, `msl`, `skab`): the NAB standard score at that fixed threshold (no
  threshold chosen on the data), the windows with an alarm in them, and the alarm ticks outside any window
  (past NAB's probationary period) per 10,000 ticks;
- **clean synthetic streams** (`clean_streams.py`: 100 streams, 5-minute ticks, 8 weeks, no anomaly): alarm
  ticks per stream-week over weeks 3-8 of their life, every one false by construction;
- **ETTh1** (`quiet_streams.py`: seven hourly streams, two years, unlabelled): alarm episodes (alarms less
  than an hour apart are one) per stream-week;
- **the demo** (`demo_alarms.py`): clean streams that alarm, of 17, and injected anomalies caught, of 3.

A fleet's weekly pages at a threshold are about its streams times the clean streams' rate, for streams like
them; the labelled columns say what a higher threshold misses.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clean_streams  # noqa: E402
import quiet_streams  # noqa: E402
from demo_alarms import alarms, in_windows, scored  # noqa: E402
from loco import CORPORA, PROFILES, detector_settings, model_path, score, variant  # noqa: E402
from windows import first_alarms  # noqa: E402

from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.devtools import incidents, synth  # noqa: E402
from streamer.offline import nab  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.7, 1.0)
SETTLED_WEEKS = 2  # the clean streams' first two weeks (warm-up, a young stream's first day) are left out


def alarm_counts(series: list[nab.Series], threshold: float) -> tuple[int, int, int, int]:
    """Windows with an alarm at ``threshold`` in them (past the probationary period, which NAB ignores), windows,
    alarm ticks outside every window past that period, and ticks past it (`windows.first_alarms`, summed)."""
    caught = windows = outside = ticks = 0
    for s in series:
        positions, false_alarms = first_alarms(s, threshold)
        caught += sum(p is not None for p in positions)
        windows += len(positions)
        outside += false_alarms
        ticks += len(s.scores) - nab.probation_rows(len(s.scores))
    return caught, windows, outside, ticks


def labelled(series: list[nab.Series], threshold: float) -> str:
    """NAB standard score at ``threshold``, windows caught of all, alarm ticks outside windows per 10,000."""
    raw = math.fsum(nab.file_raw_score(s, threshold, PROFILES[0]) for s in series)
    caught, windows, outside, ticks = alarm_counts(series, threshold)
    return f"{nab.normalise(raw, series, PROFILES[0]):.2f}, {caught} of {windows}, {1e4 * outside / ticks:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="default")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    args = parser.parse_args()
    (name, overrides), = variant(args.variant).items()

    names, ts, values, age_week = clean_streams.recording()
    model = Forecaster.load(model_path(overrides))
    clean = clean_streams.scores(Detector(model, detector_settings(overrides)), names, ts, values)
    settled = age_week >= SETTLED_WEEKS
    stream_weeks = clean_streams.STREAMS * (clean_streams.WEEKS - SETTLED_WEEKS)
    ett = [(t, quiet_streams.scores(t, v, overrides, model)) for t, v in quiet_streams.ett().values()]
    ett_weeks = sum((t[-1] - t[0]) / quiet_streams.WEEK for t, _ in ett)
    truth = {s.name: s.windows() for s in synth.demo_series()}
    demo = scored(overrides)
    corpora = {corpus: score(name, overrides, corpus, quiet=True).series() for corpus in CORPORA}

    print(f"{name}: per alert threshold. Labelled corpora: NAB standard at that threshold, windows caught, alarm "
          "ticks outside windows per 10,000; clean 5-minute streams: alarm ticks a stream-week (weeks 3-8); "
          "ETTh1: alarm episodes a stream-week; the demo: clean streams alarmed, injected caught")
    print("| threshold | " + " | ".join(CORPORA) + " | clean streams | ETTh1 | demo |")
    print("|---|" + "---|" * (len(CORPORA) + 3))
    for threshold in args.thresholds:
        cells = [labelled(series, threshold) for series in corpora.values()]
        cells.append(f"{(clean[settled] >= threshold).sum() / stream_weeks:.2f}")
        episodes = sum(len(incidents.report(t, s, threshold, [], quiet_streams.EPISODE_S).false_alarm_times)
                       for t, s in ett)
        cells.append(f"{episodes / ett_weeks:.3f}")
        found = alarms(overrides, threshold, demo)
        noisy = sum(1 for stream, ticks in found.items() if ticks and not truth.get(stream))
        caught = sum(1 for stream, windows in truth.items() if windows and in_windows(found[stream], windows))
        cells.append(f"{noisy} of {sum(1 for w in truth.values() if not w)}, {caught} of "
                     f"{sum(1 for w in truth.values() if w)}")
        print(f"| {threshold:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
