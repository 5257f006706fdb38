"""Score labelled recordings and report the Numenta Anomaly Benchmark score and the best alert threshold.

`streamer evaluate DATA --labels WINDOWS.json [--output DIR]` scores every CSV/JSONL file under DATA as a
fresh detector would (exactly as `streamer score` does; all files in one pass, see `score_files`), then
sweeps the threshold once per profile over the whole corpus. The best threshold is the one to put in an
alert rule on ``streamer_anomaly_score``.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from streamer import nab
from streamer.config import Settings
from streamer.model import Forecaster
from streamer.offline import ScoredRow, score_files, write_scores_csv
from streamer.ticks import parse_ts

# NAB's three profiles, used when no profiles.json lies beside the labels.
DEFAULT_PROFILES = [nab.Profile("standard", 1.0, 0.11, 1.0), nab.Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
                    nab.Profile("reward_low_FN_rate", 1.0, 0.11, 2.0)]
SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="folder of recorded files (searched recursively)")
    parser.add_argument("--labels", type=Path, required=True, help="windows.json: anomaly windows per file")
    parser.add_argument("--profiles", type=Path, help="profiles.json (default: beside --labels, else NAB's)")
    parser.add_argument("--output", type=Path, help="write one scores CSV per input file here")


def run(args: argparse.Namespace, settings: Settings) -> int:
    windows = nab.load_windows(args.labels)
    profiles_path = args.profiles or args.labels.with_name("profiles.json")
    profiles = nab.load_profiles(profiles_path) if profiles_path.is_file() else DEFAULT_PROFILES
    files = sorted(p for p in args.data.rglob("*") if p.name.endswith(SUFFIXES))
    if not files:
        raise ValueError(f"no recorded files under {args.data}")
    model = Forecaster.load(settings.model.path)

    labelled = [p for p in files if p.relative_to(args.data).as_posix() in windows]
    unlabelled = [p.relative_to(args.data).as_posix() for p in files if p not in labelled]
    started = time.perf_counter()
    scored = score_files(labelled, settings, model)
    elapsed = time.perf_counter() - started
    corpus: list[nab.Series] = []
    for path, rows in zip(labelled, scored):
        key = path.relative_to(args.data).as_posix()
        if args.output:
            write_scores_csv(rows, args.output / key)
        corpus.append(_series(key, rows, windows[key]))
    rows_total = sum(map(len, scored))
    if not corpus:
        raise ValueError(f"none of the files under {args.data} has labels in {args.labels}")

    results = [nab.sweep(corpus, profile) for profile in profiles]
    _print_files(corpus, results[0])
    print(f"\n{len(corpus)} files, {rows_total} rows scored in {elapsed:.1f}s "
          f"({rows_total / elapsed:,.0f} rows/s)")
    if unlabelled:
        print(f"not in the labels, skipped: {', '.join(unlabelled)}")
    print(f"\n{'profile':<22} {'NAB score':>9} {'threshold':>10}")
    for result in results:
        score = "n/a" if result.normalised is None else f"{result.normalised:.2f}"
        print(f"{result.profile.name:<22} {score:>9} {result.threshold:>10.4f}")
    return 0


def _series(key: str, rows: list[ScoredRow], file_windows) -> nab.Series:
    """One row per input row; a skipped (out-of-order) row scores 0: it raised no alarm."""
    timestamps = np.array([datetime.fromtimestamp(parse_ts(r.timestamp), timezone.utc).replace(tzinfo=None)
                           for r in rows], dtype="datetime64[us]")
    scores = np.array([0.0 if math.isnan(r.score) else r.score for r in rows])
    return nab.Series(key, scores, nab.locate_windows(timestamps, file_windows))


def _print_files(corpus: list[nab.Series], standard: nab.SweepResult) -> None:
    print(f"{'file':<58} {'rows':>6} {'windows':>7} {'max score':>9} {'raw (standard)':>14}")
    for series in corpus:
        print(f"{series.name:<58} {len(series.scores):>6} {len(series.windows):>7} "
              f"{series.scores.max():>9.3f} {standard.per_file[series.name]:>14.3f}")
