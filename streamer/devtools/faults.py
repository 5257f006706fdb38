"""Labelled faults injected into a real recorded series: the bad ticks and meter faults the use-case examples
(examples/stocks, examples/energy) score the detector on.

`inject` takes one stream's real ticks and returns them with faults of the requested kinds, ``per_kind`` of
each, at random places drawn from ``numpy.random.default_rng(seed)``: the same inputs and seed give the same
output, so a report is reproducible. Each fault is labelled with its kind and the span of time a detector
should flag (`Fault`, `windows_json`).

What each kind does (spans in ticks of the series, drawn uniformly from `SPANS`, overridable):

Market data
  ``unit_x100``, ``unit_div100``  1-5 consecutive prices ×100 / ÷100 (a feed quoting cents, or dollars where
                                  cents were meant)
  ``unit_x10``                    1-5 consecutive prices ×10 (a decimal point one place off)
  ``fat_finger``                  one price off by 1.5-4 %, up or down (a mistyped order that traded)
  ``glitch``                      5 consecutive prices off by the same 1.5-4 % (a feed's level glitch)
  ``stale``                       the last good price repeated for 10-30 ticks (a frozen feed), timestamps real
  ``late``                        a copy of a tick 2-30 ticks back re-sent after the current one (its old
                                  timestamp and price): labelled at its arrival, the time of the tick it follows
  ``duplicate``                   one tick sent twice in a row (same timestamp and price)
  ``halt``                        5-30 consecutive ticks removed (a gap); labelled from the first removed tick
                                  to the tick where trading resumes

Energy / meters
  ``dropout``                     2-12 values at zero (an outage or a lost feed read as 0)
  ``stuck``                       12-48 values frozen at the first one's value (a stuck meter)
  ``level_shift``                 48-144 values moved by ±20-40 % of the series' 5-95 % range (a mis-scaled
                                  or re-wired meter, a large consumer gone)
  ``missing_weekly``              one weekday (Monday-Friday, UTC calendar day) replaced by the values, tick
                                  for tick, of the latest Sunday before it (a holiday-like day that is none)

Placement: faults never overlap, and ``guard`` untouched ticks (default 100) separate any two, so each
fault is judged on its own and a detector's reaction to one (its incident hold, its damping) does not spill
into the next. Only ticks where ``eligible`` is true may be touched (e.g. the regular trading session, or
after the detector's warm-up); a request that does not fit raises ValueError instead of silently placing
fewer faults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

MARKET_KINDS = ("unit_x100", "unit_div100", "unit_x10", "fat_finger", "glitch", "stale", "late", "duplicate", "halt")
ENERGY_KINDS = ("dropout", "stuck", "level_shift", "missing_weekly")
KINDS = MARKET_KINDS + ENERGY_KINDS

# Inclusive ranges of each fault's span in ticks of the base series (for `late`: how far back the re-sent
# tick is; `missing_weekly` always spans one day).
SPANS: dict[str, tuple[int, int]] = {
    "unit_x100": (1, 5), "unit_div100": (1, 5), "unit_x10": (1, 5), "fat_finger": (1, 1), "glitch": (5, 5),
    "stale": (10, 30), "late": (2, 30),
    "duplicate": (1, 1), "halt": (5, 30), "dropout": (2, 12), "stuck": (12, 48), "level_shift": (48, 144),
    "missing_weekly": (1, 1),
}
FAT_FINGER = (0.015, 0.04)  # relative size of a fat-finger error
LEVEL_SHIFT = (0.2, 0.4)  # size of a level shift, as a share of the series' 5-95 % range
ATTEMPTS = 10_000  # random placements tried per fault before giving up


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: its kind and the span of time (epoch seconds, inclusive) it should be flagged in."""

    kind: str
    start_ts: float
    end_ts: float


@dataclass(frozen=True, slots=True)
class _Placed:
    kind: str
    first: int  # index of the first tick touched, in the base series
    last: int  # index of the last tick touched (inclusive)
    back: int = 0  # `late`: how many ticks back the re-sent tick is


def inject(ts: np.ndarray, values: np.ndarray, kinds: Sequence[str], per_kind: int, seed: int, *,
           guard: int = 100, eligible: np.ndarray | None = None,
           spans: Mapping[str, tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray, list[Fault]]:
    """``per_kind`` faults of each of ``kinds`` injected into one stream's ticks (``ts`` increasing).

    Returns the new timestamps and values (longer with `late`/`duplicate`, shorter with `halt`; not
    increasing where a late tick was re-sent) and the faults sorted by start time. The inputs are not modified.
    """
    ts = np.asarray(ts, dtype=np.float64)
    values = np.array(values, dtype=np.float64)
    if ts.shape != values.shape or ts.ndim != 1:
        raise ValueError("ts and values must be 1-d arrays of the same length")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("ts must be strictly increasing (one stream's ticks in order)")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    span_of = {**SPANS, **(spans or {})}
    allowed = np.ones(len(ts), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    if allowed.shape != ts.shape:
        raise ValueError("eligible must have one flag per tick")
    rng = np.random.default_rng(seed)
    free = allowed.copy()  # ticks that no fault nor guard zone holds yet
    placed: list[_Placed] = []
    order = [kind for kind in kinds for _ in range(per_kind)]
    for k in rng.permutation(len(order)):
        kind = order[k]
        place = _place_day if kind == "missing_weekly" else _place_span
        spot = place(kind, ts, free, guard, span_of[kind], rng)
        if spot is None:
            raise ValueError(f"no room for {per_kind} x {len(kinds)} faults with guard {guard} in {len(ts)} "
                             f"ticks (placing a {kind!r}); ask for fewer or lower the guard")
        free[max(0, spot.first - guard):spot.last + guard + 1] = False
        placed.append(spot)
    return _apply(ts, values, sorted(placed, key=lambda p: p.first), rng)


def _place_span(kind: str, ts: np.ndarray, free: np.ndarray, guard: int, span: tuple[int, int],
                rng: np.random.Generator) -> _Placed | None:
    length = int(rng.integers(span[0], span[1] + 1))
    if kind == "late":  # touches one arrival point but needs `back` real ticks before it
        back, length = length, 1
    else:
        back = 0
    n = len(ts)
    lo = max(back, 1 if kind in ("stale", "halt") else 0)  # stale repeats, halt resumes from, a tick before
    hi = n - length - (1 if kind == "halt" else 0)  # a halt ends at a tick that is still there
    if hi <= lo:
        return None
    for _ in range(ATTEMPTS):
        first = int(rng.integers(lo, hi + 1))
        last = first + length - 1
        if free[max(0, first - guard):last + guard + 1].all() and first - guard >= 0 and last + guard < n:
            return _Placed(kind, first, last, back)
    return None


def _place_day(kind: str, ts: np.ndarray, free: np.ndarray, guard: int, span: tuple[int, int],
               rng: np.random.Generator) -> _Placed | None:
    """A whole UTC weekday of the series whose latest Sunday before it is in the series with as many ticks."""
    days = (ts // 86400).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    ends = np.r_[starts[1:], len(ts)]
    count = dict(zip(days[starts].tolist(), (ends - starts).tolist()))
    first_of = dict(zip(days[starts].tolist(), starts.tolist()))
    candidates = []
    for day, first in first_of.items():
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        sunday = day - (weekday + 1)
        if weekday < 5 and count.get(sunday) == count[day]:
            candidates.append((first, first + count[day] - 1, first_of[sunday]))
    for k in rng.permutation(len(candidates)):
        first, last, source = candidates[k]
        if first - guard >= 0 and last + guard < len(ts) and free[first - guard:last + guard + 1].all():
            return _Placed(kind, first, last, back=first - source)
    return None


def _apply(ts: np.ndarray, values: np.ndarray, placed: list[_Placed],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[Fault]]:
    """Value faults in place, then the rows of the series rebuilt with re-sent ticks added and halts removed.

    What a fault copies (the price a stale feed repeats, a late tick, a Sunday) is taken from the recording
    as it was, never from another fault."""
    base = values.copy()
    low, high = np.percentile(values, [5, 95])
    faults: list[Fault] = []
    keep = np.ones(len(ts), dtype=bool)
    extra: dict[int, tuple[float, float]] = {}  # row sent after tick i: (ts, value)
    for p in placed:
        a, b = p.first, p.last + 1
        start, end = ts[a], ts[p.last]
        if p.kind == "unit_x100":
            values[a:b] *= 100
        elif p.kind == "unit_div100":
            values[a:b] /= 100
        elif p.kind == "unit_x10":
            values[a:b] *= 10
        elif p.kind in ("fat_finger", "glitch"):
            values[a:b] *= 1 + rng.choice([-1, 1]) * rng.uniform(*FAT_FINGER)
        elif p.kind == "stale":
            values[a:b] = base[a - 1]
        elif p.kind == "late":
            extra[a] = (ts[a - p.back], base[a - p.back])
        elif p.kind == "duplicate":
            extra[a] = (ts[a], base[a])
        elif p.kind == "halt":
            keep[a:b] = False
            end = ts[b]  # trading resumes: the first tick after the gap
        elif p.kind == "dropout":
            values[a:b] = 0.0
        elif p.kind == "stuck":
            values[a:b] = base[a]
        elif p.kind == "level_shift":
            values[a:b] += rng.choice([-1, 1]) * rng.uniform(*LEVEL_SHIFT) * (high - low)
        elif p.kind == "missing_weekly":
            values[a:b] = base[a - p.back:b - p.back]
        faults.append(Fault(p.kind, float(start), float(end)))
    out_ts: list[float] = []
    out_values: list[float] = []
    for i in range(len(ts)):
        if keep[i]:
            out_ts.append(ts[i])
            out_values.append(values[i])
        if i in extra:
            out_ts.append(extra[i][0])
            out_values.append(extra[i][1])
    return np.array(out_ts), np.array(out_values), sorted(faults, key=lambda f: (f.start_ts, f.kind))


def windows_json(faults_by_file: Mapping[str, Sequence[Fault]], path: Path | None = None) -> dict:
    """Labels in the NAB windows format ``{file: [[start, end], ...]}`` (ISO-8601 UTC with an explicit offset,
    so ``ticks.timezone`` cannot shift them), for `streamer evaluate`; written to ``path`` if given."""

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()

    labels = {name: [[iso(f.start_ts), iso(f.end_ts)] for f in faults] for name, faults in faults_by_file.items()}
    if path is not None:
        Path(path).write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    return labels


def faults_json(faults_by_stream: Mapping[str, Sequence[Fault]], path: Path) -> None:
    """The labels with their kinds, ``{stream: [{kind, start_ts, end_ts}, ...]}``: what `read_faults` reads."""
    data = {stream: [{"kind": f.kind, "start_ts": f.start_ts, "end_ts": f.end_ts} for f in faults]
            for stream, faults in faults_by_stream.items()}
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_faults(path: Path) -> dict[str, list[Fault]]:
    """The labels written by `faults_json`."""
    data = json.loads(Path(path).read_text())
    return {stream: [Fault(f["kind"], float(f["start_ts"]), float(f["end_ts"])) for f in faults]
            for stream, faults in data.items()}
