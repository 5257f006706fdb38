"""The detector core: per-stream state, reset rules, one batched LSTM step per wave, and scoring.

Pure computation, no I/O: the Kafka daemon and the offline commands (score, evaluate, replay checks) drive
this same class, which is why replaying a file through Kafka gives the scores of scoring it offline.

A batch is a `TickBatch` (ticks as columns) or a list of ticks, in arrival order. Each stream must advance
one step per tick in its own order, but different streams are independent, so the batch is cut into
*waves*: wave k holds the k-th tick of every stream present. A wave is one vectorised step (one LSTM call)
over all its streams; a stream that appears k times takes k consecutive steps. A poll of 2,000 ticks over
1,000 streams is about 2 waves. The bookkeeping is vectorised too (ordering, resets, slots), so no
Python code runs once per tick here beyond looking up each tick's stream. State lives in two tables:
float64 scalars (values in the stream's units, timestamps) and a float32 profile (tail rates, the daily
profile), 568 bytes a stream besides h and c.

Scoring, per stream. Three kinds of evidence, each turned into a tail probability p *calibrated on that
stream's own history*, so that one threshold means the same rarity on every stream:
1. forecast surprise |value - forecast| / forecast_std, the LSTM's own predicted uncertainty (with
   `forecast_evidence`, the default: this is the LSTM's part in the score; on NAB it costs ~0.8 points, since
   it raised more false alarms than detections there, with a Gaussian or a Laplace head alike; its tail is
   kept either way, so switching it needs no warm-up);
2. time-of-day surprise: the value in units of the stream's slow mean and standard deviation (memory
   `season_memory_days`, not the LSTM's fast normaliser, which would flatten a daily pattern) against that
   stream's daily profile (24 hourly UTC bins of EW mean and variance, same memory), instantly and as a
   short EW mean (`season_window` ticks); it sees a missing or misplaced daily pattern that a short-memory
   forecaster cannot;
3. range novelty: a value beyond the stream's [min, max] so far by more than `range_margin` of the range
   (Numenta's "spatial anomaly" rule) is taken as certain, p = 1e-10; such a tick is learned neither into the
   surprise tails (it would teach the stream that its anomalies are usual, for the rest of the incident and
   the next ones) nor into the slow level (it would inflate the yardstick of 2. for days), though it widens
   the range and is learned into the daily profile.
A surprise statistic's tail P(S >= s) is estimated from EW exceedance rates at the levels 1, 2, 4, ... 2048
(memory `tail_memory` ticks), log-log interpolated, and beyond the largest level the stream has exceeded
extrapolated as a Pareto tail of index `tail_index`: a spiky stream learns that its spikes are usual, a
quiet one that any jump is not. Forecast evidence is refractory: it counts only by how much it exceeds its own
recent maximum (decaying with half-life `refractory_halflife` ticks), so one incident raises one alarm, not
one per tick while the forecaster catches up. score = -log10(p) / 10 of the strongest evidence, clipped to
[0, 1]: 0.5 means a 1-in-100,000 event. One incident, one alarm, whatever the evidence: within
`incident_ticks` ticks of the tick that opened (or last raised) a stream's incident, a tick scores only if it
beats that tick's score, else 0. The first `warmup` ticks after a (re)start score 0, and the first
`SETTLE` ticks' surprises, while the normaliser and LSTM state settle, are not learned.
"""

from __future__ import annotations

import math
import zoneinfo
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import ClassVar

import numpy as np
import torch

from streamer.config import DetectorSettings, ResetRules
from streamer.model import FastStep, Forecaster, Normaliser
from streamer.ticks import Tick, TickBatch, object_array

SCORED, OUT_OF_ORDER = 0, 1
RESET_REASONS = ("explicit", "segment", "session", "gap")  # reset code k + 1 is RESET_REASONS[k]; 0: none
NO_DAY = np.iinfo(np.int64).min  # the session day of a stream without sessions

# Per-stream scalars, float64 [slots, N_SCALARS]: values in the stream's own units and epoch timestamps need
# the precision (float32 resolves 1.7e9 s to 128 s).
N, MEAN, VAR, PRED, PRED_STD = range(5)  # normaliser state and the forecast of the next value
SEASON_SHORT, DAMP_FORECAST, LAST_TS, SCORE, LOW, HIGH = range(5, 11)
PEAK, PEAK_TS = 11, 12  # the highest score held for `peak_hold_seconds` (tick time), and its tick time
LEVEL_MEAN, LEVEL_VAR = 13, 14  # the stream's slow EW mean and variance (memory `season_memory_days`)
INCIDENT, INCIDENT_AGE = 15, 16  # the score that opened or last raised the current incident, and ticks since
N_SCALARS = 17

# Per-stream distributions, float32 [slots, N_PROFILE]: exceedance rates in [0, 1] and a profile of
# standardised values, where float32's 7 digits are plenty; they are most of a stream's state.
TAIL_LEVELS = 12  # exceedance levels 1, 2, 4, ..., 2048 of a surprise statistic
SEASON_BINS = 24  # time-of-day bins (hours, UTC)
TAILS = 0  # exceedance rates of the forecast surprise, the time-of-day surprise and its short mean
BIN_MEAN = TAILS + 3 * TAIL_LEVELS  # daily profile of the standardised value: EW mean per bin,
BIN_VAR = BIN_MEAN + SEASON_BINS  # EW variance per bin,
BIN_COUNT = BIN_VAR + SEASON_BINS  # visits per bin
N_PROFILE = BIN_COUNT + SEASON_BINS  # 108 columns: with the scalars, 568 bytes a stream besides h and c

SETTLE = 20  # surprises of the first ticks after a (re)start (normaliser and LSTM state settling) are not learned
SEASON_MIN_VISITS = 3  # a time-of-day bin scores once it has seen this many ticks
SEASON_FLOOR = 0.1  # floor on a bin's standard deviation, in slow standard deviations (flat or quantised streams)
DECADES = 10.0  # score = -log10(p) / DECADES: 1.0 is a 1-in-10^10 event
_LEVELS = 2.0 ** np.arange(TAIL_LEVELS)
_ONES = np.ones(TAIL_LEVELS)
_LOG10_2 = math.log10(2.0)
_DAY = 86400.0
_HOUR = _DAY / SEASON_BINS  # the span of a time-of-day bin


def tail_decades(rates: np.ndarray, s: np.ndarray, index: float) -> np.ndarray:
    """-log10 P(S >= s) for each row of ``s`` [m], from that row's exceedance rates [m, TAIL_LEVELS].

    The levels are 1, 2, 4, ... Between two levels the stream has exceeded, log P is interpolated linearly in
    log s; past the largest level it has exceeded, P falls as a Pareto tail, s^-index; below level 1 (or
    before any data) P is 1. Rates fall with the level (every exceedance of a level exceeds the ones below),
    so the number of positive rates is the index of the largest level exceeded, plus one.
    """
    m = len(s)
    top = ((rates > 0.0) @ _ONES).astype(np.int64) - 1  # a count per row: 3x faster than np.count_nonzero
    log2_s = np.log2(np.maximum(s, 1e-300))
    level = np.minimum(np.maximum(np.floor(log2_s), -1.0), TAIL_LEVELS - 1).astype(np.int64)  # largest level <= s
    lo = np.maximum(np.minimum(np.minimum(level, top - 1), TAIL_LEVELS - 2), 0)  # interpolate lo .. lo + 1 ...
    last = np.maximum(top, 0)  # ... or extrapolate from the largest level exceeded
    base = np.arange(m) * TAIL_LEVELS
    flat = rates.reshape(-1)
    log_rates = np.log2(np.maximum(flat[np.concatenate((base + lo, base + lo + 1, base + last))], 1e-300))
    at_lo, at_hi, at_last = log_rates[:m], log_rates[m:2 * m], log_rates[2 * m:]
    log2_p = np.where(level < top, at_lo + (log2_s - lo) * (at_hi - at_lo), at_last - index * (log2_s - last))
    return np.where((level < 0) | (top < 0), 0.0, np.maximum(-log2_p, 0.0) * _LOG10_2)


def learn_tail(rates: np.ndarray, s: np.ndarray, weight: np.ndarray) -> None:
    """Fold ``s`` [m] into the exceedance rates [m, TAIL_LEVELS] in place, with EW weight ``weight`` [m]
    (0: not learned)."""
    rates += weight[:, None] * ((s[:, None] >= _LEVELS) - rates)


@dataclass
class BatchResult:
    """Per-tick outputs aligned with the input ticks (NaN where a tick was skipped or had no forecast)."""

    score: np.ndarray
    error: np.ndarray
    forecast: np.ndarray
    outcome: np.ndarray
    reset: np.ndarray  # True where the stream's state was reset before this tick
    resets: Counter
    evicted: int


class ResetPolicy:
    """Decides whether a stream's state resets before a tick, from the tick and the stream's previous tick:
    shared by the detector and the trainer, so a model is trained on exactly the sequences the daemon will
    run it on. Vectorised: one call judges a wave of streams, or a whole recorded stream."""

    def __init__(self, rules: ResetRules):
        self.max_gap = rules.max_gap_seconds
        self.zone = zoneinfo.ZoneInfo(rules.session_timezone) if rules.session_timezone else None
        hours, minutes = map(int, rules.session_start.split(":"))
        self.start_minutes = hours * 60 + minutes

    def days(self, ts: np.ndarray) -> np.ndarray:
        """The session day of each tick (`NO_DAY` without sessions): days start at session_start, local time."""
        if self.zone is None:
            return np.full(len(ts), NO_DAY, dtype=np.int64)
        days = np.empty(len(ts), dtype=np.int64)
        for i, t in enumerate(ts.tolist()):
            local = datetime.fromtimestamp(t, self.zone)
            days[i] = (local.toordinal() * 1440 + local.hour * 60 + local.minute - self.start_minutes) // 1440
        return days

    def reasons(self, explicit: np.ndarray, segment: np.ndarray, prev_segment: np.ndarray, day: np.ndarray,
                prev_day: np.ndarray, ts: np.ndarray, prev_ts: np.ndarray) -> np.ndarray:
        """Per tick, 0 (no reset) or k + 1 for the first of `RESET_REASONS` that applies: an explicit
        ``reset``, a change of segment (object arrays, compared with Python's ``!=``), a new session day,
        a gap longer than ``max_gap_seconds``."""
        code = np.zeros(len(ts), dtype=np.int8)
        if self.max_gap:
            code[ts - prev_ts > self.max_gap] = 4
        code[day != prev_day] = 3
        code[segment != prev_segment] = 2
        code[explicit] = 1
        return code


@dataclass
class StreamStates:
    """Exported state of some streams, row i belonging to ``names[i]``."""

    names: list[str]
    h: np.ndarray  # float32 [n, hidden]
    c: np.ndarray
    scalars: np.ndarray  # float64 [n, N_SCALARS]
    profile: np.ndarray  # float32 [n, N_PROFILE]
    last_ts: np.ndarray  # float64 [n]
    segment: list  # scalars
    day: list  # session day numbers or None
    ARRAYS: ClassVar[tuple[str, ...]] = ("h", "c", "scalars", "profile", "last_ts")

    def part(self, rows: slice) -> StreamStates:
        return StreamStates(self.names[rows], self.h[rows], self.c[rows], self.scalars[rows], self.profile[rows],
                            self.last_ts[rows], self.segment[rows], self.day[rows])

    @staticmethod
    def join(parts: Sequence[StreamStates]) -> StreamStates:
        return StreamStates(
            [n for p in parts for n in p.names],
            *(np.concatenate([getattr(p, name) for p in parts]) for name in StreamStates.ARRAYS),
            [x for p in parts for x in p.segment], [x for p in parts for x in p.day])


def _waves(slot: np.ndarray) -> list[np.ndarray]:
    """Positions of every stream's first tick in the batch, then of every stream's second tick, and so on."""
    size = len(slot)
    if size == 0:
        return []
    order = np.argsort(slot, kind="stable")
    ordered = slot[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    if len(starts) == size:  # every stream once: one wave (the common case with many streams)
        return [np.arange(size)]
    rank = np.arange(size) - np.repeat(starts, np.diff(np.append(starts, size)))  # k for a stream's k-th tick
    by_rank = np.argsort(rank, kind="stable")
    return np.split(order[by_rank], np.flatnonzero(np.diff(rank[by_rank])) + 1)


class Detector:
    """Holds the state of every stream in flat arrays indexed by slot, and advances them in batches."""

    def __init__(self, model: Forecaster, settings: DetectorSettings):
        torch.set_num_threads(settings.torch_threads)  # process-wide, deliberately: see DetectorSettings
        self.model = model.eval()
        self._lstm = FastStep(model)
        self.settings = settings
        self.normaliser = Normaliser(model.spec.normaliser)
        self.slots: dict[str, int] = {}
        self.names: list[str | None] = []
        self._free: list[int] = []
        self._last_ts = np.zeros(0)  # the last accepted tick's time (-inf: a free slot)
        self._segment = object_array([])
        self._day = np.zeros(0, dtype=np.int64)
        self._last_seen = np.zeros(0, dtype=np.int64)  # batch number
        self._owner = np.zeros(0, dtype=np.int64)  # e.g. the Kafka partition a stream came from
        self.scalars = np.zeros((0, N_SCALARS))
        self.profile = np.zeros((0, N_PROFILE), dtype=np.float32)
        self.h = torch.zeros(0, model.hidden_size)
        self.c = torch.zeros(0, model.hidden_size)
        self._batches = 0

    # --- state table -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    def _grow(self) -> None:
        old = len(self.names)
        more = max(16, old // 8)  # grow by an eighth: at most ~11% idle slots (state per stream matters)
        self.names.extend([None] * more)
        self._last_ts = np.concatenate([self._last_ts, np.full(more, -math.inf)])
        self._segment = np.concatenate([self._segment, object_array([None] * more)])
        self._day = np.concatenate([self._day, np.full(more, NO_DAY, dtype=np.int64)])
        self._last_seen = np.concatenate([self._last_seen, np.zeros(more, dtype=np.int64)])
        self._owner = np.concatenate([self._owner, np.full(more, -1, dtype=np.int64)])
        self.scalars = np.concatenate([self.scalars, np.zeros((more, N_SCALARS))])
        self.profile = np.concatenate([self.profile, np.zeros((more, N_PROFILE), dtype=np.float32)])
        hidden = self.model.hidden_size
        self.h = torch.cat([self.h, torch.zeros(more, hidden)])
        self.c = torch.cat([self.c, torch.zeros(more, hidden)])
        self._free.extend(range(old + more - 1, old - 1, -1))

    def _evict(self) -> int:
        """Drop the least recently seen streams (about 1% of the table) to make room; never this batch's."""
        slots = np.fromiter(self.slots.values(), dtype=np.int64, count=len(self.slots))
        candidates = slots[self._last_seen[slots] < self._batches]
        if candidates.size == 0:
            return 0
        k = min(candidates.size, max(1, self.settings.max_streams // 100))
        oldest = candidates[np.argpartition(self._last_seen[candidates], k - 1)[:k]]
        for slot in oldest.tolist():
            self.forget(self.names[slot])
        return k

    def forget(self, stream: str) -> None:
        """Remove a stream's state; it starts fresh if it comes back."""
        slot = self.slots.pop(stream)
        self.names[slot] = None
        self._last_ts[slot] = -math.inf
        self._segment[slot] = None
        self._day[slot] = NO_DAY
        self._owner[slot] = -1
        self.scalars[slot] = 0.0
        self.profile[slot] = 0.0
        self.h[slot] = 0.0
        self.c[slot] = 0.0
        self._free.append(slot)

    @property
    def batches(self) -> int:
        """Batches processed so far: a clock for `expire`."""
        return self._batches

    def expire(self, before_batch: int) -> int:
        """Forget streams not seen since batch ``before_batch``; returns how many."""
        stale = [name for name, slot in self.slots.items() if self._last_seen[slot] < before_batch]
        for name in stale:
            self.forget(name)
        return len(stale)

    def owned_by(self, owner: int) -> list[str]:
        """Streams whose latest tick came with ``owner`` (see `process`)."""
        return [name for name, slot in self.slots.items() if self._owner[slot] == owner]

    def export(self, streams: Sequence[str]) -> StreamStates:
        """The complete state of ``streams`` (for checkpoints); `restore` of it recreates them exactly."""
        slots = np.array([self.slots[s] for s in streams], dtype=np.int64)
        index = torch.from_numpy(slots)
        return StreamStates(
            names=list(streams),
            h=self.h.index_select(0, index).numpy(),
            c=self.c.index_select(0, index).numpy(),
            scalars=self.scalars[slots],
            profile=self.profile[slots],
            last_ts=self._last_ts[slots],
            segment=self._segment[slots].tolist(),
            day=[None if d == NO_DAY else d for d in self._day[slots].tolist()])

    def restore(self, states: StreamStates, owner: int = -1) -> None:
        """Install exported state, replacing whatever these streams had."""
        slots = np.array([self._slot_for(s)[0] for s in states.names], dtype=np.int64)
        index = torch.from_numpy(slots)
        self.h.index_copy_(0, index, torch.from_numpy(states.h))
        self.c.index_copy_(0, index, torch.from_numpy(states.c))
        self.scalars[slots] = states.scalars
        self.profile[slots] = states.profile
        self._last_ts[slots] = states.last_ts
        self._segment[slots] = object_array(states.segment)
        self._day[slots] = [NO_DAY if d is None else d for d in states.day]
        self._last_seen[slots] = self._batches
        self._owner[slots] = owner

    def _slot_for(self, stream: str) -> tuple[int, int]:
        """The stream's slot (a new one for a new stream), and how many streams were evicted to make room."""
        known = self.slots.get(stream)
        if known is not None:
            return known, 0
        evicted = self._evict() if len(self.slots) >= self.settings.max_streams else 0
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.slots[stream] = slot
        self.names[slot] = stream
        self._last_seen[slot] = self._batches
        return slot, evicted

    def _slots_of(self, streams: list[str]) -> tuple[np.ndarray, int]:
        """The slot of each tick's stream (new streams get one), and how many streams were evicted."""
        slot = np.fromiter(map(self.slots.get, streams, repeat(-1)), dtype=np.int64, count=len(streams))
        self._last_seen[slot[slot >= 0]] = self._batches  # this batch's streams are not evicted for new ones
        evicted = 0
        for i in np.flatnonzero(slot < 0).tolist():  # new streams (a second tick of one finds its slot)
            slot[i], dropped = self._slot_for(streams[i])
            evicted += dropped
        return slot, evicted

    def top_scores(self, n: int) -> list[tuple[str, float, float]]:
        """(stream, latest score, held peak) of the ``n`` most recently anomalous streams (highest peaks)."""
        if n <= 0 or not self.slots:
            return []
        slots = np.fromiter(self.slots.values(), dtype=np.int64, count=len(self.slots))
        peaks = self.scalars[slots, PEAK]
        if slots.size > n:
            slots = slots[np.argpartition(-peaks, n - 1)[:n]]
        rows = self.scalars[slots]
        return [(self.names[s], latest, peak)
                for s, latest, peak in zip(slots.tolist(), rows[:, SCORE].tolist(), rows[:, PEAK].tolist())]

    def max_peak(self) -> float:
        """The highest held peak over all streams."""
        if not self.slots:
            return 0.0
        return float(self.scalars[list(self.slots.values()), PEAK].max())

    # --- the batched step --------------------------------------------------------------------------

    def process(self, ticks: TickBatch | Sequence[Tick], rules: ResetRules | None = None,
                owners: np.ndarray | None = None) -> BatchResult:
        """Advance every stream by its ticks in this batch and score each tick.

        Wave by wave (module docstring): a tick not later than its stream's last accepted one is skipped as
        out of order; the others are checked for a reset against their stream's previous tick and stepped.
        ``owners`` (one int per tick) tags each stream with where its ticks come from, so a driver can
        export or drop the streams of one Kafka partition (`owned_by`).
        """
        batch = ticks if isinstance(ticks, TickBatch) else TickBatch.of(ticks)
        policy = ResetPolicy(rules or ResetRules())
        self._batches += 1
        count = len(batch)
        ts, value = batch.ts, batch.value
        explicit = np.zeros(count, dtype=bool) if batch.reset is None else batch.reset
        segment = np.full(count, None, dtype=object) if batch.segment is None else batch.segment
        day = policy.days(ts)
        slot, evicted = self._slots_of(batch.stream)
        outcome = np.full(count, OUT_OF_ORDER, dtype=np.int8)
        code = np.zeros(count, dtype=np.int8)
        score, error, forecast = np.full(count, np.nan), np.full(count, np.nan), np.full(count, np.nan)
        for idx in _waves(slot):
            rows = slot[idx]
            prev_ts = self._last_ts[rows]
            later = ts[idx] > prev_ts
            if not later.all():
                idx, rows, prev_ts = idx[later], rows[later], prev_ts[later]
                if not idx.size:
                    continue
            reasons = policy.reasons(explicit[idx], segment[idx], self._segment[rows], day[idx], self._day[rows],
                                     ts[idx], prev_ts)
            reasons[prev_ts == -math.inf] = 0  # a stream's first tick has nothing to reset
            outcome[idx], code[idx] = SCORED, reasons
            score[idx], error[idx], forecast[idx] = self._step(rows, value[idx], ts[idx], reasons > 0)
            self._last_ts[rows], self._segment[rows], self._day[rows] = ts[idx], segment[idx], day[idx]
            if owners is not None:
                self._owner[rows] = owners[idx]
        counts = np.bincount(code, minlength=len(RESET_REASONS) + 1)[1:].tolist()
        resets = Counter({reason: n for reason, n in zip(RESET_REASONS, counts) if n})
        return BatchResult(score, error, forecast, outcome, code > 0, resets, evicted)

    @torch.inference_mode()
    def _step(self, rows: np.ndarray, value: np.ndarray, ts: np.ndarray, reset: np.ndarray):
        """One step for distinct streams ``rows``: score each value against its forecast, then advance."""
        st = self.scalars[rows]
        rates = self.profile[rows, TAILS:BIN_MEAN].astype(np.float64)  # the tails; the bins are read in place
        rows_t = torch.from_numpy(rows)
        h = self.h.index_select(0, rows_t)
        c = self.c.index_select(0, rows_t)
        if reset.any():
            st[reset] = 0.0
            rates[reset] = 0.0
            self.profile[rows[reset]] = 0.0
            keep = torch.from_numpy(~reset).unsqueeze(1)
            h, c = h * keep, c * keep

        n = st[:, N]
        has_forecast = n >= 1
        forecast = np.where(has_forecast, st[:, PRED], np.nan)
        error = np.abs(value - forecast)
        count, mean, var = self.normaliser.update(n, st[:, MEAN], st[:, VAR], value)
        scale = self.normaliser.scale(mean, var)
        normalised = (value - mean) / scale
        score = self._score(rows, st, rates, n, value, ts, np.where(has_forecast, error, 0.0))
        # Hold the peak: a one-tick alarm stays visible for peak_hold_seconds, so a scrape cannot miss it.
        renew = (ts - st[:, PEAK_TS] > self.settings.peak_hold_seconds) | (score >= st[:, PEAK])
        st[:, PEAK] = np.where(renew, score, st[:, PEAK])
        st[:, PEAK_TS] = np.where(renew, ts, st[:, PEAK_TS])

        # Advance: one LSTM step on the normalised value, and keep the forecast for the next tick.
        mu, log_std, h, c = self._lstm(normalised, h, c)
        self.h.index_copy_(0, rows_t, h)
        self.c.index_copy_(0, rows_t, c)
        st[:, N], st[:, MEAN], st[:, VAR] = count, mean, var
        st[:, PRED] = mean + scale * mu
        st[:, PRED_STD] = scale * np.exp(log_std, dtype=np.float64)
        self.scalars[rows] = st
        self.profile[rows, TAILS:BIN_MEAN] = rates
        return score, error, forecast

    def _score(self, rows: np.ndarray, st: np.ndarray, rates: np.ndarray, n: np.ndarray, value: np.ndarray,
               ts: np.ndarray, error: np.ndarray) -> np.ndarray:
        """Score one tick of each of the distinct slots ``rows`` from its three kinds of evidence (module
        docstring), learning it into the rows' scalars ``st`` and tail ``rates`` (copies, updated in place)
        and into the daily profile (in the table); ``n`` counts the ticks before this one, ``error`` is 0
        without a forecast."""
        cfg = self.settings
        size = len(n)
        flat = self.profile.reshape(-1)  # a view: flat indices address (slot, column)
        settle = min(SETTLE, cfg.warmup)
        learned = np.maximum(n - settle, 0.0)  # surprises learned before this one
        learn = n >= settle
        live = n >= cfg.warmup

        # Range novelty: beyond [LOW, HIGH] by more than range_margin of the range. A novel tick is already
        # a certain anomaly, so it is learned neither into the surprise tails nor into the slow level: it
        # would teach the stream that its anomalies are usual, and inflate the yardstick of the time-of-day
        # surprise, blunting it for days. It does widen the range and enter the daily profile.
        low, high = st[:, LOW], st[:, HIGH]
        beyond = np.maximum(value - high, low - value) / np.maximum(high - low, 1e-12)
        novel = learn & (learned >= 1) & (beyond > cfg.range_margin)
        first = learned < 1
        st[:, LOW] = np.where(learn, np.where(first, value, np.minimum(low, value)), low)
        st[:, HIGH] = np.where(learn, np.where(first, value, np.maximum(high, value)), high)

        # The value in units of the stream's slow statistics (memory in days, like the profile's, each tick
        # weighing the share of an hour it covers): the daily profile is kept in these units, which keep a
        # daily pattern's shape where the LSTM's fast normaliser (a memory of ~100 ticks) flattens it.
        hours = np.minimum(np.maximum(ts - st[:, LAST_TS], 0.0), _HOUR) * (1.0 / _HOUR)
        level_rate = np.where(novel, 0.0, np.maximum(1.0 / (n + 1.0),
                                                     hours * (1.0 / (SEASON_BINS * cfg.season_memory_days))))
        level_mean, level_var = st[:, LEVEL_MEAN], st[:, LEVEL_VAR]
        delta = value - level_mean
        level_mean = level_mean + level_rate * delta
        level_var = (1.0 - level_rate) * (level_var + level_rate * delta * delta)
        st[:, LEVEL_MEAN], st[:, LEVEL_VAR] = level_mean, level_var
        level = (value - level_mean) / self.normaliser.scale(level_mean, level_var)

        # Time-of-day profile of the level: this tick's bin.
        b = np.minimum((np.mod(ts, _DAY) * (SEASON_BINS / _DAY)).astype(np.int64), SEASON_BINS - 1)
        at = rows * N_PROFILE + b
        at_mean, at_var, at_count = at + BIN_MEAN, at + BIN_VAR, at + BIN_COUNT
        bin_mean, bin_var, visits = flat[np.concatenate((at_mean, at_var, at_count))].astype(np.float64).reshape(3, -1)
        seasoned = visits >= SEASON_MIN_VISITS

        # The three surprise statistics, their calibrated tails (-log10 p), and learning them.
        stats = np.empty((3, size))
        std = st[:, PRED_STD]
        np.divide(error, std, out=stats[0], where=std > 0)  # forecast surprise
        stats[0, std <= 0] = 0.0
        stats[1] = np.where(seasoned, np.abs(level - bin_mean) / np.sqrt(bin_var + SEASON_FLOOR ** 2), 0.0)
        log_season = np.log1p(stats[1])  # time-of-day surprise, and its short EW mean (of log1p)
        short = np.where(learned >= 1, st[:, SEASON_SHORT] + (2.0 / (cfg.season_window + 1.0))
                         * (log_season - st[:, SEASON_SHORT]), log_season)
        stats[2] = np.expm1(short)
        stats = stats.T.reshape(-1)  # row-major (row, statistic), as the rates are laid out
        rates = rates.reshape(3 * size, TAIL_LEVELS)  # a view: one row per (slot, statistic)
        decades = tail_decades(rates, stats, cfg.tail_index).reshape(size, 3)
        weight = np.where(learn & ~novel, np.maximum(1.0 / (learned + 1.0), 1.0 / cfg.tail_memory), 0.0)
        season_weight = np.where(seasoned, weight, 0.0)
        learn_tail(rates, stats, np.stack((weight, season_weight, season_weight), axis=1).reshape(-1))
        st[:, SEASON_SHORT] = np.where(learn & seasoned, short, st[:, SEASON_SHORT])
        season_part = np.where(seasoned, np.maximum(decades[:, 1], decades[:, 2]), 0.0)

        # The profile learns every tick, each weighing the share of its bin's hour it covers (a reset
        # stream's LAST_TS is 0: a full share), so its memory is in days whatever the tick rate.
        rate = np.maximum(1.0 / (visits + 1.0), hours * (1.0 / cfg.season_memory_days))
        delta = level - bin_mean
        flat[at_mean] = bin_mean + rate * delta
        flat[at_var] = (1.0 - rate) * (bin_var + rate * delta * delta)
        flat[at_count] = visits + 1.0
        st[:, LAST_TS] = ts

        # Refractory forecast evidence: only what exceeds its own decaying recent maximum counts.
        evidence, damp = decades[:, 0], st[:, DAMP_FORECAST]
        forecast_part = np.maximum(evidence - damp, 0.0) if cfg.forecast_evidence else 0.0
        decay = 0.5 ** (1.0 / cfg.refractory_halflife)
        st[:, DAMP_FORECAST] = np.where(live, np.maximum(damp * decay, evidence), damp)

        strongest = np.maximum(np.maximum(forecast_part, season_part), np.where(novel, DECADES, 0.0))
        score = np.where(live, np.minimum(strongest * (1.0 / DECADES), 1.0), 0.0)

        # One incident, one alarm: within `incident_ticks` of the tick that opened or last raised the
        # stream's incident, a tick scores only if it beats that tick's score (and then raises the incident).
        held, age = st[:, INCIDENT], st[:, INCIDENT_AGE] + 1.0
        raises = live & ((score > held) | (age > cfg.incident_ticks))
        score = np.where(raises, score, 0.0)
        st[:, INCIDENT] = np.where(raises, score, held)
        st[:, INCIDENT_AGE] = np.where(raises, 0.0, age)
        st[:, SCORE] = score
        return score
