"""Numenta Anomaly Benchmark (NAB) scoring.

The specification is `shared/nab/README.md`, section "How the score is computed"; this module follows it
literally. Where the README is silent, the choices are:

- Window edges are located on row indices by timestamp (`locate_windows`): the first row equal to the edge,
  else the first row after it for a start and the last row before it for an end. Rows stay in file order; a
  late or repeated row (one the detector skips as out of order, scored 0) and a row without a readable
  timestamp stand at the latest time reached before them, so they never move an edge.
- A false positive after a one-row window (`L_prev == 1`, so `x = (i - e_prev) / 0`) is treated as infinitely
  far past it and costs the full `fp`, which is the limit of the formula as the window shrinks.
- The raw score is maximised over every distinct score in the corpus, probationary rows included; among
  thresholds whose raw scores are within `TIE_TOLERANCE` of the best, the highest wins, so that float rounding
  in the sums cannot break a tie.

Two known differences from the upstream NAB code, both following the README instead: upstream charges the
full `fp` from `x >= 3` (here `x > 3`; the two differ by `fp * (1 - tanh(7.5)) ≈ 6e-7 * fp` at exactly
`x == 3`), and upstream also tries a threshold above every score (the null detector) while leaving out
probationary scores.
"""

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

import numpy as np

PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
TIE_TOLERANCE = 1e-9

_TANH_2_5 = np.tanh(2.5)  # numpy's, as in `_tp_reward`, so a detection at a window start earns exactly tp


@dataclass(frozen=True)
class Profile:
    """The weights of one NAB scoring profile: reward for a detected window, costs of false alarms/misses."""

    name: str
    tp: float
    fp: float
    fn: float


def load_profiles(path: str | PathLike[str]) -> list[Profile]:
    """Read `profiles.json`, the three NAB profiles first in their customary order, any others after."""
    try:
        raw = json.loads(Path(path).read_text())
        rank = {name: i for i, name in enumerate(PROFILE_NAMES)}
        return [
            Profile(name, float(matrix["tpWeight"]), float(matrix["fpWeight"]), float(matrix["fnWeight"]))
            for name in sorted(raw, key=lambda name: rank.get(name, len(rank)))
            for matrix in (raw[name]["CostMatrix"],)
        ]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: expected {{profile: {{CostMatrix: {{tpWeight, fpWeight, fnWeight}}}}}}: "
                         f"{type(exc).__name__} {exc}") from None


def load_windows(path: str | PathLike[str]) -> dict[str, list[tuple[datetime, datetime]]]:
    """Read `windows.json`: inclusive `(start, end)` timestamps per `"<category>/<file>.csv"`.

    Times with a UTC offset are converted to naive UTC, the timestamps' convention. A file that is not of that
    shape raises `ValueError` naming the file and what is wrong.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of file name -> [[start, end], ...]")
    return {name: [(_naive(path, name, start), _naive(path, name, end)) for start, end in _pairs(path, name, windows)]
            for name, windows in raw.items()}


def _pairs(path: object, name: str, windows: object) -> list:
    if not isinstance(windows, list) or not all(isinstance(w, list) and len(w) == 2 for w in windows):
        raise ValueError(f"{path}: {name!r}: expected a list of [start, end] pairs, got {windows!r:.80}")
    return windows


def _naive(path: object, name: str, text: object) -> datetime:
    try:
        moment = datetime.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {name!r}: not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def locate_windows(
    timestamps: Sequence[object] | np.ndarray, windows: Iterable[tuple[object, object]]
) -> list[tuple[int, int]]:
    """Turn timestamp windows into inclusive row-index windows of a file.

    An edge is located at the first row whose timestamp equals it (a few NAB files repeat a timestamp). If no
    row equals it, a start moves forward to the first row after it and an end back to the last row before it,
    so the located window never holds a row outside the labelled span. Timestamps may be `datetime64` values,
    `datetime`s or ISO strings, NaT (or None) where a row has none. A window that holds no row is an error.

    Rows are taken in file order, each at the latest timestamp up to and including it: the time the stream
    has reached, as the daemon sees it. A row earlier than or equal to one before it (which the detector
    skips as out of order) and a row without a timestamp stand at that time (before every window if no time
    has been reached yet), so they never move an edge:
    after `02:55, 02:00 (again), ..., 02:55, 03:00` a window edge at 02:00 is the first 02:00 row, and the
    late rows lie inside a window only between its edges. For non-decreasing timestamps this is plainly
    "the first row equal to the edge".
    """
    ts = np.asarray(timestamps, dtype="datetime64[ns]").view(np.int64)  # NaT is the smallest int64
    if len(ts):
        ts = np.maximum.accumulate(ts)
    located = []
    for start, end in windows:
        start64 = np.datetime64(start, "ns").view(np.int64)
        end64 = np.datetime64(end, "ns").view(np.int64)
        first = int(np.searchsorted(ts, start64, side="left"))  # the first equal row if there is one
        last = int(np.searchsorted(ts, end64, side="left"))
        if last == len(ts) or ts[last] != end64:
            last = int(np.searchsorted(ts, end64, side="right")) - 1
        if first > last:
            raise ValueError(f"window {start} .. {end} holds no row")
        located.append((first, last))
    return located


def probation_rows(n: int) -> int:
    """Rows at the start of an n-row file whose detections are ignored: `min(floor(0.15 n), 750)`."""
    return min(n * 15 // 100, 750)  # integer arithmetic: 0.15 is not exact in binary


@dataclass(frozen=True)
class Series:
    """One scored file: a detector's score per row and the file's windows as inclusive row-index pairs.

    Validated on construction (scores finite, windows ordered, disjoint and inside the file) because every
    scoring rule below assumes it, and the arrays are frozen copies so a result cannot change under a caller.
    """

    name: str
    scores: np.ndarray
    windows: Sequence[tuple[int, int]]  # stored as a tuple

    def __post_init__(self) -> None:
        scores = np.array(self.scores, dtype=float)
        if scores.ndim != 1 or not np.all(np.isfinite(scores)):
            raise ValueError(f"{self.name}: scores must be a 1-D array of finite numbers")
        scores.setflags(write=False)
        windows = tuple((int(start), int(end)) for start, end in self.windows)
        previous_end = -1
        for start, end in windows:
            if not previous_end < start <= end < len(scores):
                raise ValueError(
                    f"{self.name}: windows must be ordered, disjoint and within rows 0..{len(scores) - 1}; "
                    f"got {windows}"
                )
            previous_end = end
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "windows", windows)


def _tp_reward(d: float | np.ndarray, profile: Profile) -> float | np.ndarray:
    """Reward of a window's earliest detection, `d = (e - i + 1) / L` from 1 (left edge) down to 1/L."""
    return profile.tp * (np.tanh(2.5 * d) / _TANH_2_5)


def _fp_cost(x: float | np.ndarray, profile: Profile) -> float | np.ndarray:
    """Cost (positive) of a false positive `x` window-lengths past the preceding window.

    `x` is `inf` when there is no preceding window or it is one row long: the full `fp`.
    """
    return profile.fp * np.where(x > 3, 1.0, np.tanh(2.5 * x))


def file_raw_score(series: Series, threshold: float, profile: Profile) -> float:
    """The raw NAB score of one file at one threshold: a plain walk over the rows, `sweep`'s reference.

    The terms are summed with `math.fsum`, so the result carries no rounding from the order of summation.
    """
    windows = series.windows
    credited: set[int] = set()  # windows whose earliest detection has been rewarded
    terms: list[float] = []
    current = 0  # index of the first window that has not ended before row i
    for i in range(probation_rows(len(series.scores)), len(series.scores)):
        while current < len(windows) and windows[current][1] < i:
            current += 1
        if series.scores[i] < threshold:
            continue
        if current < len(windows) and windows[current][0] <= i:
            if current not in credited:
                credited.add(current)
                start, end = windows[current]
                terms.append(float(_tp_reward((end - i + 1) / (end - start + 1), profile)))
        elif current == 0:
            terms.append(-profile.fp)
        else:
            start, end = windows[current - 1]
            x = math.inf if start == end else (i - end) / (end - start)
            terms.append(-float(_fp_cost(x, profile)))
    terms.extend([-profile.fn] * (len(windows) - len(credited)))
    return math.fsum(terms)


def _threshold_events(series: Series, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """What lowering the threshold does to a file's raw score, starting from "no detection at all".

    Returns `(at, delta)`: once the threshold is at or below `at[k]`, `delta[k]` is added. A row outside every
    window adds its (negative) false-positive cost at its own score. A window's value depends only on its
    earliest detection, and as the threshold falls that row moves only to the rows that beat every earlier
    score in the window (its running maxima), so each of those is an event whose delta is the change in the
    window's value. Rows before `probation_rows` make no event.
    """
    scores = series.scores
    skip = probation_rows(len(scores))
    # A virtual one-row window at row -1 precedes every file, so a row before the first real window is "past a
    # one-row window": x = inf and the full fp, just as the README's rule for such rows says.
    starts = np.array([-1, *(start for start, _ in series.windows)])
    ends = np.array([-1, *(end for _, end in series.windows)])

    rows = np.arange(skip, len(scores))
    latest = np.searchsorted(starts, rows, side="right") - 1  # the last window starting at or before the row
    outside = rows > ends[latest]
    rows, latest = rows[outside], latest[outside]
    with np.errstate(divide="ignore"):
        x = (rows - ends[latest]) / (ends[latest] - starts[latest])
    at = [scores[rows]]
    delta = [-_fp_cost(x, profile)]

    for start, end in series.windows:
        window_scores = scores[max(start, skip) : end + 1]
        if window_scores.size == 0:
            continue  # entirely probationary: stays a miss at every threshold
        running_max = np.maximum.accumulate(window_scores)
        record = np.flatnonzero(np.r_[True, window_scores[1:] > running_max[:-1]])
        rows = max(start, skip) + record
        value = _tp_reward((end - rows + 1) / (end - start + 1), profile)
        at.append(window_scores[record])
        delta.append(value - np.r_[value[1:], -profile.fn])
    return np.concatenate(at), np.concatenate(delta)


def raw_scores_by_threshold(corpus: Sequence[Series], profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """The corpus raw score at every distinct score of the corpus, as `(thresholds, raw)`, highest first.

    Every file contributes `_threshold_events`; sorting them by threshold and taking a running sum gives the
    raw score at any threshold as the null score plus the sum of the events at or above it, so the whole sweep
    is O(N log N) in the number of rows instead of O(N) per threshold. The running sum rounds like any long
    float sum (relative error ~1e-12 at thresholds with ~1e5 detections; far less near the best threshold).
    """
    if not any(len(series.scores) for series in corpus):
        raise ValueError("the corpus has no scored rows")
    events = [_threshold_events(series, profile) for series in corpus]
    at = np.concatenate([a for a, _ in events])
    delta = np.concatenate([d for _, d in events])
    order = np.argsort(-at, kind="stable")
    running = np.r_[0.0, np.cumsum(delta[order])]

    thresholds = np.unique(np.concatenate([series.scores for series in corpus]))[::-1]
    reached = np.searchsorted(-at[order], -thresholds, side="right")  # events with at >= threshold
    null = -profile.fn * sum(len(series.windows) for series in corpus)
    return thresholds, null + running[reached]


@dataclass(frozen=True)
class SweepResult:
    """The corpus score of one profile at its best threshold.

    `raw` and `per_file` come from `file_raw_score` at `threshold` (exact sums); the sweep only picks it.
    `normalised` is None for a corpus without windows (e.g. one category), where it is undefined.
    """

    profile: Profile
    threshold: float
    raw: float
    normalised: float | None
    per_file: dict[str, float]


def sweep(corpus: Sequence[Series], profile: Profile) -> SweepResult:
    """Choose the threshold that maximises the corpus raw score (ties: the highest) and score it."""
    names = [series.name for series in corpus]
    if len(set(names)) != len(names):
        raise ValueError("series names must be unique")
    thresholds, raw = raw_scores_by_threshold(corpus, profile)
    best = int(np.flatnonzero(raw >= raw.max() - TIE_TOLERANCE)[0])  # thresholds are highest first
    threshold = float(thresholds[best])
    per_file = {series.name: file_raw_score(series, threshold, profile) for series in corpus}
    total = math.fsum(per_file.values())
    normalised = normalise(total, corpus, profile) if any(series.windows for series in corpus) else None
    return SweepResult(profile, threshold, total, normalised, per_file)


RANDOM_SEEDS = 5  # the random detector's figure is a mean over this many seeds


def random_corpus(corpus: Sequence[Series], seed: int) -> list[Series]:
    """The random detector on ``corpus``: uniform scores in [0, 1) on the same rows and windows (``seed``)."""
    rng = np.random.default_rng(seed)
    return [Series(series.name, rng.random(len(series.scores)), series.windows) for series in corpus]


def random_baseline(corpus: Sequence[Series], profile: Profile) -> float:
    """The random detector's normalised score on ``corpus`` at its own best threshold, the mean over
    `RANDOM_SEEDS` seeds: what a detector's score is to be compared with. Where anomaly windows cover much of
    every file, alarming at random scores high (a third of each file: ~70 standard), and a detector that
    alarms only on evidence can score below it."""
    return float(np.mean([sweep(random_corpus(corpus, seed), profile).normalised for seed in range(RANDOM_SEEDS)]))


def normalise(raw: float, corpus: Sequence[Series], profile: Profile) -> float:
    """Rescale a raw score so that the null detector (never detects) scores 0 and a perfect one 100."""
    windows = sum(len(series.windows) for series in corpus)
    if windows == 0:
        raise ValueError("a corpus without windows has no normalised score")
    null = -profile.fn * windows
    perfect = profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null)
