"""Alarms on long clean streams by the week of their life: does a steady stream's false-alarm rate grow with age?

    PYTHONPATH=. python benchmarks/clean_streams.py default "e0:tail_envelope=0"

The lead's unseen NAB files (55-79 days) lose mostly to false alarms, and the shared labelled files (4-16
days) are too short to show a failure that grows with a stream's age. Here every alarm is false by
construction: 100 clean streams of the demo's recipe (`streamer.devtools.synth`, seed 11: seasonal, trends,
walks, counts, AR noise; no injected anomaly, no segment change) at 5-minute ticks for 8 weeks, scored as
`streamer score` would (one detector, 2,000-tick polls). Per variant (the ``name:key=value`` syntax of
`loco.py`): alarm ticks (score >= 0.30, the recommended alert threshold) per week of the streams' age, and
how many of the 100 streams alarm that week. A calibrated detector's counts stay flat after the first week
or two (the warm-up and young-stream weeks alarm more).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loco import detector_settings, model_path, variant  # noqa: E402

from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.core.ticks import TickBatch  # noqa: E402
from streamer.devtools.synth import DEMO, generate  # noqa: E402

THRESHOLD = 0.30
STREAMS, WEEKS, INTERVAL = 100, 8, 300.0
POLL = 2_000
WEEK = 7 * 86400.0


def recording() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The streams' ticks (names, timestamps, values) in time order, interleaved as a recording would hold them,
    and each tick's week of age."""
    series = generate(**dict(DEMO, n_streams=STREAMS, length=int(WEEKS * WEEK / INTERVAL), anomalies=False,
                             segment_fraction=0.0, interval=INTERVAL))
    names = np.repeat(np.array([s.name for s in series], dtype=object), len(series[0].values))
    ts = np.concatenate([s.timestamps for s in series])
    values = np.concatenate([s.values for s in series])
    order = np.argsort(ts, kind="stable")
    names, ts, values = names[order], ts[order], values[order]
    return names, ts, values, ((ts - ts.min()) // WEEK).astype(int)


def scores(detector: Detector, names: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Every tick's score, as `streamer score` would give it: one detector, `POLL`-tick polls, in order."""
    polls = (TickBatch(names[k:k + POLL].tolist(), ts[k:k + POLL], values[k:k + POLL])
             for k in range(0, len(ts), POLL))
    return np.concatenate([detector.process(poll).score for poll in polls])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    names, ts, values, age_week = recording()
    print(f"{STREAMS} clean streams, {INTERVAL / 60:.0f}-minute ticks, {WEEKS} weeks: alarm ticks (>= {THRESHOLD}) "
          "per week of age, and streams alarming that week")
    print("| variant | " + " | ".join(f"week {w + 1}" for w in range(WEEKS)) + " |")
    print("|---|" + "---|" * WEEKS)
    for spec in args.variants:
        (name, overrides), = variant(spec).items()
        detector = Detector(Forecaster.load(model_path(overrides)), detector_settings(overrides))
        alarm = scores(detector, names, ts, values) >= THRESHOLD
        cells = [f"{int(alarm[age_week == w].sum())} ({len(set(names[alarm & (age_week == w)]))})"
                 for w in range(WEEKS)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
