"""Score labelled recordings and report the Numenta Anomaly Benchmark score and the best alert threshold.

`streamer evaluate DATA --labels WINDOWS.json [--output DIR]` scores every CSV/JSONL file under DATA as a
fresh detector would (exactly as `streamer score` does; all files in one pass, see `score_files`), then
sweeps the threshold once per profile over the whole corpus. The best threshold is the one to put in an
alert rule on ``streamer_anomaly_score``.

Rows the daemon would skip are skipped here too, and never stop the run: a late or repeated row (not later
than its stream's last one: ``out_of_order``) and a row that is not a valid tick (``invalid:<reason>``) keep
their place in the file with an empty score in the output CSVs and score 0 for NAB (they raise no alarm);
the table counts both per file. Windows are located in file order, each row at the latest time of a tick
scored up to it, so such rows never move a window edge (`_series`, `nab.locate_windows`). A file that cannot
be read or has no rows, a window that holds no row, a file without labels and a labelled file missing from
DATA are reported and left out. ``--strict`` makes the first three an error instead (the labelling mismatches
stay reports), and an invalid row too.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from datetime import datetime, timezone, tzinfo
from pathlib import Path

import numpy as np

from streamer.config import Settings
from streamer.core.model import Forecaster
from streamer.core.ticks import InvalidTick, parse_ts
from streamer.offline import nab
from streamer.offline.score import ScoredRow, ScoreSummary, score_files, write_scores_csv

# NAB's three profiles, used when no profiles.json lies beside the labels.
DEFAULT_PROFILES = [nab.Profile("standard", 1.0, 0.11, 1.0), nab.Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
                    nab.Profile("reward_low_FN_rate", 1.0, 0.11, 2.0)]
SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="folder of recorded files (searched recursively)")
    parser.add_argument("--labels", type=Path, required=True, help="windows.json: anomaly windows per file")
    parser.add_argument("--profiles", type=Path, help="profiles.json (default: beside --labels, else NAB's)")
    parser.add_argument("--output", type=Path, help="write one scores CSV per input file here")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first invalid row, unreadable file or window that holds no row "
                             "(default: count, skip and report them)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    windows = nab.load_windows(_existing(args.labels, "labels"))
    profiles_path = args.profiles or args.labels.with_name("profiles.json")
    profiles = nab.load_profiles(_existing(profiles_path, "profiles")) if args.profiles or profiles_path.is_file() \
        else DEFAULT_PROFILES
    if not args.data.is_dir():
        raise ValueError(f"{args.data}: no such folder")
    files = sorted(p for p in args.data.rglob("*") if p.name.endswith(SUFFIXES) and p.is_file())
    if not files:
        raise ValueError(f"no recorded files ({', '.join(SUFFIXES)}) under {args.data}")
    names = {path: path.relative_to(args.data).as_posix() for path in files}
    labelled = [path for path in files if names[path] in windows]
    unlabelled = [names[path] for path in files if names[path] not in windows]
    missing = sorted(set(windows) - set(names.values()))
    if not labelled:
        raise ValueError(f"none of the {len(files)} files under {args.data} has labels in {args.labels}"
                         + (f" (it names files such as {next(iter(windows))!r})" if windows else ""))
    model = Forecaster.load(settings.model.path)

    started = time.perf_counter()
    scored = score_files(labelled, settings, model, strict=args.strict)
    elapsed = time.perf_counter() - started
    corpus: list[nab.Series] = []
    summaries: list[ScoreSummary] = []
    left_out: list[str] = []  # files
    dropped: list[str] = []  # windows
    for path, (rows, summary) in zip(labelled, scored):
        key = names[path]
        if summary.unreadable is not None:
            left_out.append(f"{key} ({summary.unreadable})")
            continue
        if args.output:
            write_scores_csv(rows, args.output / key)
        if not rows:
            left_out.append(f"{key} (no rows; {len(windows[key])} windows)")
            continue
        corpus.append(file_series(key, rows, windows[key], dropped=None if args.strict else dropped,
                                  zone=settings.ticks.zone))
        summaries.append(summary)
    if not corpus:
        raise ValueError(f"no labelled file under {args.data} could be scored: {'; '.join(left_out)}")

    results = [nab.sweep(corpus, profile) for profile in profiles]
    _print_files(corpus, summaries, results[0])
    rows_total = sum(len(series.scores) for series in corpus)
    print(f"\n{len(corpus)} files, {rows_total} rows scored in {elapsed:.1f}s "
          f"({rows_total / max(elapsed, 1e-9):,.0f} rows/s)")
    _print_skipped(summaries)
    if left_out:
        print(f"not scored: {'; '.join(left_out)}")
    if dropped:
        print(f"windows that hold no row, not scored: {'; '.join(dropped)}")
    if unlabelled:
        print(f"not in the labels, skipped: {', '.join(unlabelled)}")
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        print(f"in the labels but not under {args.data}, not scored: {len(missing)} files: {shown}")
    print(f"\n{'profile':<22} {'NAB score':>9} {'threshold':>10} {'random detector':>16}")
    for result in results:
        score, chance = "n/a", "n/a"
        if result.normalised is not None:
            score, chance = f"{result.normalised:.2f}", f"{nab.random_baseline(corpus, result.profile):.2f}"
        print(f"{result.profile.name:<22} {score:>9} {result.threshold:>10.4f} {chance:>16}")
    print(f"random detector: uniform random scores on the same rows, at its own best threshold, mean of "
          f"{nab.RANDOM_SEEDS} seeds; a score is worth what it gains over it")
    return 0


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    return path


def _time(raw: object, zone: tzinfo) -> datetime | None:
    """A row's timestamp as naive UTC (a time without an offset read in ``zone``, as the daemon reads it),
    None where it has none that parses (the row then stands at the time reached before it, see
    `nab.locate_windows`)."""
    try:
        return datetime.fromtimestamp(parse_ts(raw, zone), timezone.utc).replace(tzinfo=None)
    except (InvalidTick, OverflowError, OSError, ValueError):
        return None


def file_series(key: str, rows: list[ScoredRow], file_windows, dropped: list[str] | None = None,
                zone: tzinfo = timezone.utc) -> nab.Series:
    """One row per input row; a skipped row (out of order, invalid) scores 0: it raised no alarm.

    Windows are located in file order with each row at the latest time of a tick scored up to it (a skipped
    row's own timestamp is not one the daemon went by: it stands at the time reached; `nab.locate_windows`).
    A window that holds no row is an error naming the file, or, given a ``dropped`` list, reported there
    and left out. A row's time without an offset is read in ``zone`` (``ticks.timezone``); a label's, as
    `nab.load_windows` reads it, is UTC.
    """
    skipped = ("out_of_order", "invalid:")
    timestamps = np.array([None if r.note.startswith(skipped) else _time(r.timestamp, zone) for r in rows],
                          dtype="datetime64[us]")
    scores = np.array([0.0 if math.isnan(r.score) else r.score for r in rows])
    located: list[tuple[int, int]] = []
    for window in file_windows:
        try:
            located += nab.locate_windows(timestamps, [window])
        except ValueError as exc:
            if dropped is None:
                raise ValueError(f"{key}: {exc}") from None
            dropped.append(f"{key}: {exc}")
    return nab.Series(key, scores, located)


def _print_files(corpus: list[nab.Series], summaries: list[ScoreSummary], standard: nab.SweepResult) -> None:
    print(f"{'file':<58} {'rows':>6} {'windows':>7} {'out of order':>12} {'invalid':>7} {'max score':>9} "
          f"{'raw (standard)':>14}")
    for series, summary in zip(corpus, summaries):
        print(f"{series.name:<58} {len(series.scores):>6} {len(series.windows):>7} {summary.out_of_order:>12} "
              f"{sum(summary.invalid.values()):>7} {series.scores.max():>9.3f} "
              f"{standard.per_file[series.name]:>14.3f}")


def _print_skipped(summaries: list[ScoreSummary]) -> None:
    """The rows the daemon would have skipped, over the corpus (they are in the table per file)."""
    late = sum(summary.out_of_order for summary in summaries)
    invalid = sum((summary.invalid for summary in summaries), Counter())
    if not late and not invalid:
        return
    print(f"skipped as the daemon skips them (empty score in the output, 0 for NAB): {late} out of order, "
          f"{sum(invalid.values())} invalid {dict(invalid) if invalid else ''}".rstrip())
    examples = [example for summary in summaries for example in summary.examples]
    if examples:
        more = sum(invalid.values()) - len(examples[:5])
        print("  " + "\n  ".join(examples[:5]) + (f"\n  ... and {more} more" if more else ""))
