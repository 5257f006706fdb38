"""Window by window: where in each labelled window a variant first alarms, what it misses, and its false alarms.

    PYTHONPATH=. python benchmarks/windows.py nab default no_forecast

NAB's score is a sum over windows and false alarms, so two variants that score alike can differ window by window;
this table shows where. Per file of the corpus, for each variant (the names and ``name:key=value`` syntax of
`loco.py`, scores from its cache) at that variant's own best standard threshold on the corpus: for each window
the position of the first alarm in it (0: the window's first row, 0.5 its middle, where NAB puts the labelled
anomaly; ``MISS``: none) and the number of alarm rows outside the windows past the probationary period (``fp``).

With ``--forecast``, each missed window also shows the most decades of forecast surprise any of its rows had
(undamped, without the other evidence: the LSTM's raw view of it) against the most outside the windows: a miss
whose surprise stays below the file's ordinary ones is one the forecast cannot see at any threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loco  # noqa: E402

from streamer.core.kernel import DECADES  # noqa: E402
from streamer.offline import nab  # noqa: E402

# The forecast evidence alone, undamped and unsuppressed: score = decades / 10 of every tick's surprise.
FORECAST_ONLY = {"season_evidence": False, "range_evidence": False, "incident_ticks": 0,
                 "refractory_halflife": 1e-6, "novelty_gate": 0, "novelty_gate_young": 0}


def first_alarms(series: nab.Series, threshold: float) -> tuple[list[float | None], int]:
    """Per window the relative position of its first alarm (None: missed), and the alarm rows outside the
    windows after the probationary period."""
    alarms = np.flatnonzero(series.scores >= threshold)
    alarms = alarms[alarms >= nab.probation_rows(len(series.scores))]
    inside = np.zeros(len(series.scores), dtype=bool)
    positions: list[float | None] = []
    for start, end in series.windows:
        inside[start:end + 1] = True
        hits = alarms[(alarms >= start) & (alarms <= end)]
        positions.append((hits[0] - start) / (end - start + 1) if len(hits) else None)
    return positions, int((~inside[alarms]).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", choices=loco.CORPORA)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--forecast", action="store_true", help="the forecast surprise in missed windows")
    args = parser.parse_args()
    standard = loco.PROFILES[0]
    scored = {}
    for spec in args.variants:
        (name, overrides), = loco.variant(spec).items()
        series = loco.score(name, overrides, args.corpus).series()
        result = nab.sweep(series, standard)
        scored[name] = (series, result.threshold)
        print(f"{name}: standard {result.normalised:.2f} at threshold {result.threshold:.4f}")
    surprise = loco.score("forecast_only", FORECAST_ONLY, args.corpus) if args.forecast else None
    first, first_threshold = next(iter(scored.values()))
    for i, file in enumerate(first):
        cells = []
        for series, threshold in scored.values():
            positions, false_alarms = first_alarms(series[i], threshold)
            shown = ",".join("MISS" if p is None else f"{p:.2f}" for p in positions)
            cells.append(f"{shown:<24} fp {false_alarms:<3d}")
        line = f"{file.name[:48]:<48} " + " | ".join(cells)
        if surprise is not None and None in first_alarms(file, first_threshold)[0]:
            decades = surprise.scores[i] * DECADES
            outside = np.ones(len(decades), dtype=bool)
            for start, end in file.windows:
                outside[start:end + 1] = False
            outside[:nab.probation_rows(len(decades))] = False
            inside = [f"{decades[s:e + 1].max():.1f}" for s, e in file.windows]
            line += f"   forecast decades in windows {','.join(inside)}, outside max {decades[outside].max():.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
