"""The detector core: per-stream state, reset rules, one batched LSTM step per wave, and scoring.

Pure computation, no I/O: the Kafka daemon and the offline commands (score, evaluate, replay checks) drive
this same class, which is why replaying a file through Kafka gives the scores of scoring it offline.

A batch is a list of ticks in arrival order. Each stream must advance one step per tick in its own order,
but different streams are independent, so the batch is cut into *waves*: wave k holds the k-th tick of
every stream present. A wave is one vectorised step (one LSTM call) over all its streams; a stream that
appears k times takes k consecutive steps. A poll of 2,000 ticks over 1,000 streams is about 2 torch calls.

Scoring, per stream (HTM's "anomaly likelihood" idea, Ahmad et al. 2017):
1. surprise = log1p(|value - forecast| / forecast_std), the model's own predicted uncertainty;
2. a short EW mean of surprise is compared with the long-run EW distribution of that stream's surprise;
3. score = -log10(tail probability) / 10, clipped to [0, 1]: 0.5 means a 1-in-100,000 event.
The first `warmup` ticks after a (re)start score 0 while the statistics settle.
"""

from __future__ import annotations

import math
import zoneinfo
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch

from streamer.config import DetectorSettings, ResetRules
from streamer.model import Forecaster, Normaliser
from streamer.ticks import Tick

SCORED, OUT_OF_ORDER = 0, 1
RESET_REASONS = ("explicit", "segment", "session", "gap")

# Columns of the per-stream float64 statistics table.
N, MEAN, VAR, PRED, PRED_STD, SHORT, LMEAN, LVAR, SCORE = range(9)
N_STATS = 9

_LN_1E10 = math.log(1e10)


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


@dataclass
class StreamStates:
    """Exported state of some streams, row i belonging to ``names[i]``."""

    names: list[str]
    h: np.ndarray  # float32 [n, hidden]
    c: np.ndarray
    stats: np.ndarray  # float64 [n, N_STATS]
    last_ts: np.ndarray  # float64 [n]
    segment: list  # scalars
    day: list  # session day numbers or None


class Detector:
    """Holds the state of every stream in flat arrays indexed by slot, and advances them in batches."""

    def __init__(self, model: Forecaster, settings: DetectorSettings):
        self.model = model.eval()
        self.settings = settings
        self.normaliser = Normaliser(model.spec.normaliser)
        self.slots: dict[str, int] = {}
        self.names: list[str | None] = []
        self._free: list[int] = []
        self._last_ts: list[float] = []
        self._segment: list = []
        self._day: list[int | None] = []
        self._last_seen: np.ndarray = np.zeros(0, dtype=np.int64)
        self._owner: np.ndarray = np.zeros(0, dtype=np.int64)  # e.g. the Kafka partition a stream came from
        self.stats = np.zeros((0, N_STATS))
        self.h = torch.zeros(0, model.hidden_size)
        self.c = torch.zeros(0, model.hidden_size)
        self._batches = 0
        self._zones: dict[str, zoneinfo.ZoneInfo] = {}

    # --- state table -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    def _grow(self) -> None:
        old = len(self.names)
        new = max(64, old * 2)
        self.names.extend([None] * (new - old))
        self._last_ts.extend([-math.inf] * (new - old))
        self._segment.extend([None] * (new - old))
        self._day.extend([None] * (new - old))
        self._last_seen = np.concatenate([self._last_seen, np.zeros(new - old, dtype=np.int64)])
        self._owner = np.concatenate([self._owner, np.full(new - old, -1, dtype=np.int64)])
        self.stats = np.concatenate([self.stats, np.zeros((new - old, N_STATS))])
        hidden = self.model.hidden_size
        self.h = torch.cat([self.h, torch.zeros(new - old, hidden)])
        self.c = torch.cat([self.c, torch.zeros(new - old, hidden)])
        self._free.extend(range(new - 1, old - 1, -1))

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
        self._day[slot] = None
        self._owner[slot] = -1
        self.stats[slot] = 0.0
        self.h[slot] = 0.0
        self.c[slot] = 0.0
        self._free.append(slot)

    def owned_by(self, owner: int) -> list[str]:
        """Streams whose latest tick came with ``owner`` (see `process`)."""
        return [name for name, slot in self.slots.items() if self._owner[slot] == owner]

    def export(self, streams: Sequence[str]) -> StreamStates:
        """The complete state of ``streams`` (for checkpoints); `restore` of it recreates them exactly."""
        slots = [self.slots[s] for s in streams]
        index = torch.tensor(slots, dtype=torch.long)
        return StreamStates(
            names=list(streams),
            h=self.h.index_select(0, index).numpy().copy(),
            c=self.c.index_select(0, index).numpy().copy(),
            stats=self.stats[slots].copy(),
            last_ts=np.array([self._last_ts[s] for s in slots]),
            segment=[self._segment[s] for s in slots],
            day=[self._day[s] for s in slots])

    def restore(self, states: StreamStates, owner: int = -1) -> None:
        """Install exported state, replacing whatever these streams had."""
        for i, stream in enumerate(states.names):
            slot = self.slots.get(stream)
            if slot is None:
                slot, _ = self._slot_for(stream)
            self.h[slot] = torch.from_numpy(states.h[i])
            self.c[slot] = torch.from_numpy(states.c[i])
            self.stats[slot] = states.stats[i]
            self._last_ts[slot] = float(states.last_ts[i])
            self._segment[slot] = states.segment[i]
            self._day[slot] = states.day[i]
            self._last_seen[slot] = self._batches
            self._owner[slot] = owner

    def _slot_for(self, stream: str) -> tuple[int, int]:
        """Slot of a new stream, and how many streams were evicted to make room."""
        evicted = self._evict() if len(self.slots) >= self.settings.max_streams else 0
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.slots[stream] = slot
        self.names[slot] = stream
        return slot, evicted

    def top_scores(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` streams with the highest current score (for the bounded per-stream metric)."""
        if n <= 0 or not self.slots:
            return []
        slots = np.fromiter(self.slots.values(), dtype=np.int64, count=len(self.slots))
        scores = self.stats[slots, SCORE]
        if slots.size > n:
            keep = np.argpartition(-scores, n - 1)[:n]
            slots, scores = slots[keep], scores[keep]
        return [(self.names[s], float(v)) for s, v in zip(slots.tolist(), scores.tolist())]

    def max_score(self) -> float:
        if not self.slots:
            return 0.0
        return float(self.stats[list(self.slots.values()), SCORE].max())

    # --- reset rules -------------------------------------------------------------------------------

    def _session_day(self, ts: float, rules: ResetRules) -> int:
        zone = self._zones.get(rules.session_timezone)
        if zone is None:
            zone = self._zones[rules.session_timezone] = zoneinfo.ZoneInfo(rules.session_timezone)
        hours, minutes = map(int, rules.session_start.split(":"))
        local = datetime.fromtimestamp(ts, zone)
        return (local.toordinal() * 1440 + local.hour * 60 + local.minute - hours * 60 - minutes) // 1440

    # --- the batched step --------------------------------------------------------------------------

    def process(self, ticks: Sequence[Tick], rules: ResetRules | None = None,
                owners: np.ndarray | None = None) -> BatchResult:
        """Advance every stream by its ticks in this batch and score each tick.

        ``owners`` (one int per tick) tags each stream with where its ticks come from, so a driver can
        export or drop the streams of one Kafka partition (`owned_by`).
        """
        rules = rules or ResetRules()
        self._batches += 1
        count = len(ticks)
        outcome = np.full(count, SCORED, dtype=np.int8)
        slot_of = np.full(count, -1, dtype=np.int64)
        wave_of = np.full(count, -1, dtype=np.int64)
        reset_of = np.zeros(count, dtype=bool)
        resets: Counter = Counter()
        evicted = 0
        seen: dict[int, int] = {}
        max_gap = rules.max_gap_seconds
        sessions = bool(rules.session_timezone)
        last_ts, segment, day, last_seen = self._last_ts, self._segment, self._day, self._last_seen
        batch = self._batches

        # Sequential bookkeeping: ordering, resets and wave assignment need each stream's previous tick.
        for i, tick in enumerate(ticks):
            slot = self.slots.get(tick.stream)
            today = self._session_day(tick.ts, rules) if sessions else None
            if slot is None:
                slot, dropped = self._slot_for(tick.stream)
                evicted += dropped
                last_seen = self._last_seen  # the table may have grown
                reason = None
            elif tick.ts <= last_ts[slot]:
                outcome[i] = OUT_OF_ORDER
                continue
            elif tick.reset:
                reason = "explicit"
            elif tick.segment != segment[slot]:
                reason = "segment"
            elif sessions and today != day[slot]:
                reason = "session"
            elif max_gap and tick.ts - last_ts[slot] > max_gap:
                reason = "gap"
            else:
                reason = None
            if reason is not None:
                resets[reason] += 1
                reset_of[i] = True
            wave = seen.get(slot, 0)
            seen[slot] = wave + 1
            slot_of[i], wave_of[i] = slot, wave
            last_ts[slot], segment[slot], day[slot] = tick.ts, tick.segment, today
            last_seen[slot] = batch

        valid = np.flatnonzero(wave_of >= 0)
        if owners is not None:
            self._owner[slot_of[valid]] = owners[valid]
        score = np.full(count, np.nan)
        error = np.full(count, np.nan)
        forecast = np.full(count, np.nan)
        if valid.size:
            values = np.fromiter((ticks[i].value for i in valid.tolist()), dtype=np.float64, count=valid.size)
            order = np.argsort(wave_of[valid], kind="stable")
            waves = wave_of[valid][order]
            bounds = np.flatnonzero(np.diff(waves)) + 1
            for part in np.split(order, bounds):
                idx = valid[part]
                s, e, f = self._step(slot_of[idx], values[part], reset_of[idx])
                score[idx], error[idx], forecast[idx] = s, e, f
        return BatchResult(score, error, forecast, outcome, reset_of, resets, evicted)

    @torch.inference_mode()
    def _step(self, rows: np.ndarray, value: np.ndarray, reset: np.ndarray):
        """One step for distinct streams ``rows``: score each value against its forecast, then advance."""
        cfg = self.settings
        st = self.stats[rows]
        rows_t = torch.from_numpy(rows)
        h = self.h.index_select(0, rows_t)
        c = self.c.index_select(0, rows_t)
        if reset.any():
            st[reset] = 0.0
            keep = torch.from_numpy(~reset).unsqueeze(1)
            h, c = h * keep, c * keep

        n = st[:, N]
        has_forecast = n >= 1
        forecast = np.where(has_forecast, st[:, PRED], np.nan)
        error = np.abs(value - forecast)
        surprise = np.log1p(np.where(has_forecast, error / np.where(has_forecast, st[:, PRED_STD], 1.0), 0.0))

        # Short-term mean surprise vs the stream's long-run surprise distribution (before this tick).
        seen = n - 1  # surprises observed before this one
        short = np.where(seen >= 1, st[:, SHORT] + cfg.short_alpha * (surprise - st[:, SHORT]), surprise)
        z = (short - st[:, LMEAN]) / np.sqrt(st[:, LVAR] + 1e-4)
        log_tail = torch.special.log_ndtr(torch.from_numpy(-z)).numpy()
        score = np.clip(-log_tail / _LN_1E10, 0.0, 1.0)
        score = np.where(n >= cfg.warmup, score, 0.0)
        alpha = np.where(has_forecast, np.maximum(1.0 / np.maximum(seen + 1, 1), cfg.long_alpha), 0.0)
        delta = surprise - st[:, LMEAN]
        st[:, LMEAN] += alpha * delta
        st[:, LVAR] = (1.0 - alpha) * (st[:, LVAR] + alpha * delta * delta)
        st[:, SHORT] = np.where(has_forecast, short, 0.0)
        st[:, SCORE] = score

        # Advance: normalise, one LSTM step, and keep the forecast for the next tick.
        count, mean, var = self.normaliser.update(n, st[:, MEAN], st[:, VAR], value)
        scale = self.normaliser.scale(mean, var)
        x = torch.from_numpy((value - mean) / scale).float()
        mu, log_std, h, c = self.model.step(x, h, c)
        self.h.index_copy_(0, rows_t, h)
        self.c.index_copy_(0, rows_t, c)
        st[:, N], st[:, MEAN], st[:, VAR] = count, mean, var
        st[:, PRED] = mean + scale * mu.double().numpy()
        st[:, PRED_STD] = scale * np.exp(log_std.double().numpy())
        self.stats[rows] = st
        return score, error, forecast
