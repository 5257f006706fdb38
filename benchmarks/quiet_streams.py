"""Alarms on long real streams without labels: the false-alarm side of detection, per detector variant.

    PYTHONPATH=. python benchmarks/quiet_streams.py default no_forecast "sd:season_evidence=false"

The lead's unseen NAB files lose mostly to false alarms on long streams (55-79 days), a failure the shared
labelled corpora are too short to show. This measures the same side on the longest real recordings in
`../shared/real`: the seven hourly columns of ETTh1 (transformer load and oil temperature, two years each)
and the minute volumes of SPY, IBM, BAC and AIG (bursty counts with a daily pattern, ~5 sessions each).
Nobody labelled them, so an alarm is not necessarily false; what a variant changes here is read next to
its leave-one-category-out scores (`loco.py`), never alone.

Per variant and recording: alarm episodes (alarms at `THRESHOLD` less than `EPISODE_S` apart are one,
`streamer.devtools.incidents`) per stream-week, past the detector's warm-up, and the share of them that only
the time-of-day evidence would have raised (absent with ``season_evidence=false``). One fresh detector per
stream, 2,000-tick batches, as `streamer score` runs it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clean_streams  # noqa: E402
from loco import detector_settings, model_path, variant  # noqa: E402

from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.devtools import incidents  # noqa: E402

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "real"
THRESHOLD = 0.30  # the README's recommended alarm threshold
EPISODE_S = 3600.0  # alarms less than an hour apart are one episode
WEEK = 7 * 86400.0


def ett() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ETTh1's seven columns as hourly streams (the file's times are UTC-naive)."""
    with open(REAL / "energy" / "ETTh1.csv") as f:
        rows = list(csv.DictReader(f))
    ts = np.array([datetime.fromisoformat(r["date"] + "+00:00").timestamp() for r in rows])
    return {f"etth1/{col}": (ts, np.array([float(r[col]) for r in rows])) for col in rows[0] if col != "date"}


def volumes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Minute volumes of the four tickers (the files' times are New York time)."""
    zone, out = ZoneInfo("America/New_York"), {}
    for path in sorted((REAL / "stocks").glob("*_minute_trade_ET.csv")):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        ts = np.array([datetime.fromisoformat(r["datetime_et"]).replace(tzinfo=zone).timestamp() for r in rows])
        out[f"volume/{path.name.split('_')[0]}"] = (ts, np.array([float(r["volume"]) for r in rows]))
    return out


def scores(ts: np.ndarray, values: np.ndarray, overrides: dict, model: Forecaster) -> np.ndarray:
    """One stream's scores from a fresh detector, as `streamer score` gives them (`clean_streams.scores`)."""
    names = np.full(len(ts), "s", dtype=object)
    return clean_streams.scores(Detector(model, detector_settings(overrides)), names, ts, values)


def episodes(ts: np.ndarray, score: np.ndarray) -> list[float]:
    """The first alarm time of each episode."""
    return incidents.report(ts, score, THRESHOLD, [], EPISODE_S).false_alarm_times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    groups = {"ETTh1 (7 hourly streams, 2 years)": ett(), "minute volumes (4 tickers)": volumes()}
    print(f"alarm episodes per stream-week (alarms at {THRESHOLD}, episodes {EPISODE_S / 3600:.0f} h apart), "
          "and the share only time-of-day evidence raised")
    print("| variant | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for spec in args.variants:
        (name, overrides), = variant(spec).items()
        model = Forecaster.load(model_path(overrides))
        quiet = {**overrides, "season_evidence": False}
        cells = []
        for streams in groups.values():
            total = seasonal = weeks = 0.0
            for ts, values in streams.values():
                found = episodes(ts, scores(ts, values, overrides, model))
                without = np.array(episodes(ts, scores(ts, values, quiet, model)))
                total += len(found)
                seasonal += sum(1 for t in found if not (np.abs(without - t) <= EPISODE_S).any())
                weeks += (ts[-1] - ts[0]) / WEEK
            cells.append(f"{total / weeks:.2f} ({seasonal / total if total else 0:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
