"""The detector core: per-stream state, reset rules, and scoring with one LSTM step per tick.

Pure computation, no I/O: the Kafka daemon and the offline commands (score, evaluate, replay checks) drive
this same class, which is why replaying a file through Kafka gives the scores of scoring it offline.

A batch is a `TickBatch` (ticks as columns) or a list of ticks, in arrival order. Each stream must advance
one step per tick in its own order; different streams are independent. The bookkeeping of a batch is
vectorised in numpy (slots, out-of-order ticks, reset reasons, each judged against the stream's previous
accepted tick), and the per-tick arithmetic, scoring and the LSTM step, is one compiled call over the
whole batch (`kernel.advance`), each stream's ticks in order. A batch of 50 ticks from each of 100 streams
costs about what 5,000 ticks of 5,000 streams do per tick. State lives in four tables indexed by slot: float64
scalars (values in the stream's units, timestamps), a float32 profile (tail rates, the daily profile),
888 bytes a stream, and the forecaster's float32 h and c (every layer's; a GRU's c has no columns:
`ModelSpec.state_sizes`).

Scoring, per stream. Three kinds of evidence, each turned into a tail probability p *calibrated on that
stream's own history*, so that one threshold means the same rarity on every stream:
1. forecast surprise |value - forecast| / forecast_std, the LSTM's own predicted uncertainty (with
   `forecast_evidence`, the default: this is the LSTM's part in the score, and through the gates of 2. and 3.
   its say over the other two kinds; docs/detection.md measures what it adds on each corpus. Its tail is kept
   either way, so switching it needs no warm-up);
2. time-of-day surprise: the value in units of the stream's slow mean and standard deviation (memory
   `season_memory_days`, not the LSTM's fast normaliser, which would flatten a daily pattern) against that
   stream's daily profile (24 hourly UTC bins of EW mean and variance, same memory), instantly and as a
   short EW mean (`season_window` ticks); it sees a missing or misplaced daily pattern that a short-memory
   forecaster cannot. During the stream's first `season_gate_days` its bins are a running level, not yet a
   daily profile: only the short mean counts then, and only as far as the LSTM is surprised too;
3. range novelty: a value beyond the stream's [min, max] so far by more than `range_margin` of the range
   (Numenta's "spatial anomaly" rule) is taken as certain, p = 1e-10, if the LSTM is surprised too: its
   (undamped) forecast evidence reaches `novelty_gate` decades (a new extreme within the forecast's usual
   error, such as a random walk's or a trend's, is no anomaly), `novelty_gate_young` decades during the
   stream's first `season_gate_days` (a few hours' range is left routinely); either way such a tick is
   learned neither into the surprise tails (it would teach the stream that its anomalies are usual, for the
   rest of the incident and the next ones) nor into the slow level (it would inflate the yardstick of 2. for
   days), though it widens the range and is learned into the daily profile.
A surprise statistic's tail P(S >= s) is estimated from EW exceedance rates at the levels 1, 2, 4, ... 2^31 for
the forecast surprise (a stream that idles flat and bursts routinely makes surprises of 10^9 and must be able to
learn them as usual) and ... 2048 for the time-of-day ones, log-log interpolated, and beyond the largest level
the stream has exceeded extrapolated as a Pareto tail of index `tail_index`: a spiky stream learns that its
spikes are usual, a quiet one that any jump is not. Each rate is the larger of two estimates: one with a memory
of `tail_memory` ticks, which follows a stream that turns turbulent, and one whose memory is `tail_slow_share`
of the stream's life, which keeps a long-lived stream's rare surprises known. Forecast evidence is refractory:
it counts only by how much it exceeds its own recent maximum (decaying with half-life `refractory_halflife` ticks),
so one incident raises one alarm, not one per tick while the forecaster catches up. score = -log10(p) / 10 of the
strongest evidence, clipped to [0, 1]: 0.5 means a 1-in-100,000 event. One incident, one alarm, whatever the
evidence: while a stream's incident is open, a tick scores only if it beats the score that opened (or last
raised) it, else 0; it closes after `incident_ticks` ticks in a row without a tick scoring `incident_hold` of
that score. The first `warmup` ticks after a (re)start score 0, and the first `SETTLE` ticks' surprises, while
the normaliser and LSTM state settle, are not learned.

Resets. An explicit reset or a new segment restarts a stream from nothing; a new session or a long gap
restarts only its LSTM's hidden and cell state, and the stream is scored on at once with everything else it
had learned (`kernel.NEW_STREAM`).

Devices. The channels of one multivariate reading (a tick with ``values``) are scored as streams of their
own; the reading's device score combines them, calibrated like them (`streamer.core.devices`).
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

from streamer.config import DetectorSettings, ResetRules
from streamer.core import devices, kernel
from streamer.core.kernel import N_PROFILE, N_SCALARS, S
from streamer.core.model import Forecaster
from streamer.core.ticks import Tick, TickBatch, object_array

SCORED, OUT_OF_ORDER = 0, 1
RESET_REASONS = ("explicit", "segment", "session", "gap")  # reset code k + 1 is RESET_REASONS[k]; 0: none
# The kernel starts a new stream for codes up to `kernel.NEW_STREAM`, and restarts only the LSTM for the others
# (tests/unit/test_detector.py holds the two together).
NO_DAY = np.iinfo(np.int64).min  # the session day of a stream without sessions


@dataclass
class BatchResult:
    """Per-tick outputs aligned with the input ticks (NaN where a tick was skipped or had no forecast)."""

    score: np.ndarray
    error: np.ndarray
    forecast: np.ndarray
    evidence: np.ndarray  # int8: the kind of evidence that made the score, `kernel.EVIDENCE_KINDS` (0: none)
    outcome: np.ndarray
    reset_code: np.ndarray  # int8: 0, or k + 1 where the stream was reset for RESET_REASONS[k] before this tick
    device_score: np.ndarray  # the score of the device reading a tick belongs to (`devices.tick_scores`)
    resets: Counter
    evicted: int

    @property
    def reset(self) -> np.ndarray:
        """True where the stream was reset before this tick, whatever the reason (`reset_code`)."""
        return self.reset_code > 0

    def reset_reason(self, i: int) -> str:
        """Why tick i's stream was reset before it (one of `RESET_REASONS`), "" if it was not."""
        code = int(self.reset_code[i])
        return RESET_REASONS[code - 1] if code else ""


class ResetPolicy:
    """Decides whether a stream's state resets before a tick, from the tick and the stream's previous tick:
    shared by the detector and the trainer, so a model is trained on exactly the sequences the daemon will
    run it on. Vectorised: one call judges a batch of ticks, or a whole recorded stream."""

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
    h: np.ndarray  # float32 [n, layers * hidden]
    c: np.ndarray  # float32 [n, layers * hidden], [n, 0] for a GRU
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


class Detector:
    """Holds the state of every stream in flat arrays indexed by slot, and advances them in batches.

    The contract, by caller (River's AnomalyDetector has score / learn / reset; here one call does all
    three per tick, because scoring a tick and learning it are one pass over the stream's state):
    - drivers (the daemon's loop, `streamer score` / `evaluate`): `process(ticks, rules, owners, topic)` scores
      each tick against its stream's state (with its topic's settings), learns it, and resets streams where the
      rules say so;
    - checkpoints: `owned_by(owner)` names the streams of one partition, `export(streams)` returns their
      state as plain arrays (`StreamStates`), `restore(states, owner)` puts it back, `forget(stream)` drops
      one stream;
    - metrics: `top_scores(n)`, `top_devices(n)`, `max_peak()` and `len(detector)` read the state, never
      change it;
    - housekeeping: `expire(before_batch)` forgets streams not seen since a batch (`batches` counts them).
    Everything else is internal: the state tables (`scalars`, `profile`, `h`, `c`) belong to `kernel`.
    """

    def __init__(self, model: Forecaster, settings: DetectorSettings):
        self.model = model
        self.settings = settings
        self._weights = kernel.step_weights(model)
        self._scoring: dict[str, tuple[kernel.Params, bool]] = {}  # per topic: `_scoring_of`
        self.slots: dict[str, int] = {}
        self.names: list[str | None] = []
        self._free: list[int] = []
        self._last_ts = np.zeros(0)  # the last accepted tick's time (-inf: a free slot)
        self._segment = object_array([])
        self._day = np.zeros(0, dtype=np.int64)
        self._last_seen = np.zeros(0, dtype=np.int64)  # batch number
        self._owner = np.zeros(0, dtype=np.int64)  # e.g. the Kafka partition a stream came from
        # The device of each channel stream (ticks from a ``values`` object), for `top_devices`. Not in
        # checkpoints: a restored channel rejoins its device at the device's next reading.
        self._device_of: dict[str, str] = {}
        self.scalars = np.zeros((0, N_SCALARS))
        self.profile = np.zeros((0, N_PROFILE), dtype=np.float32)
        h_width, c_width = model.spec.state_sizes
        self.h = np.zeros((0, h_width), dtype=np.float32)
        self.c = np.zeros((0, c_width), dtype=np.float32)
        self._batches = 0
        self.process([])  # compiles the kernel now, not on the first batch

    # --- state table -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    def _grow(self) -> None:
        old = len(self.names)
        more = max(16, old // 8)  # grow by an eighth: at most ~11% idle slots (state per stream matters)
        self.names.extend([None] * more)
        self._last_ts = np.concatenate([self._last_ts, np.full(more, -math.inf)])
        self._segment = np.concatenate([self._segment, np.full(more, None, dtype=object)])
        self._day = np.concatenate([self._day, np.full(more, NO_DAY, dtype=np.int64)])
        self._last_seen = np.concatenate([self._last_seen, np.zeros(more, dtype=np.int64)])
        self._owner = np.concatenate([self._owner, np.full(more, -1, dtype=np.int64)])
        self.scalars = np.concatenate([self.scalars, np.zeros((more, N_SCALARS))])
        self.profile = np.concatenate([self.profile, np.zeros((more, N_PROFILE), dtype=np.float32)])
        self.h = np.concatenate([self.h, np.zeros((more, self.h.shape[1]), dtype=np.float32)])
        self.c = np.concatenate([self.c, np.zeros((more, self.c.shape[1]), dtype=np.float32)])
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
        self._device_of.pop(stream, None)
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
        return StreamStates(
            names=list(streams),
            h=self.h[slots],
            c=self.c[slots],
            scalars=self.scalars[slots],
            profile=self.profile[slots],
            last_ts=self._last_ts[slots],
            segment=self._segment[slots].tolist(),
            day=[None if d == NO_DAY else d for d in self._day[slots].tolist()])

    def restore(self, states: StreamStates, owner: int = -1) -> None:
        """Install exported state, replacing whatever these streams had."""
        slots = np.array([self._slot_for(s)[0] for s in states.names], dtype=np.int64)
        self.h[slots] = states.h
        self.c[slots] = states.c
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
        peaks = self.scalars[slots, S.PEAK]
        if slots.size > n:
            slots = slots[np.argpartition(-peaks, n - 1)[:n]]
        rows = self.scalars[slots]
        return [(self.names[s], latest, peak)
                for s, latest, peak in zip(slots.tolist(), rows[:, S.SCORE].tolist(), rows[:, S.PEAK].tolist())]

    def top_devices(self, n: int) -> list[tuple[str, float, float]]:
        """(device, latest score, held peak) of the ``n`` devices with the highest held peaks, each combined
        from its channels' latest scores and held peaks (`devices.device_table`)."""
        if n <= 0 or not self._device_of:
            return []
        slots = np.fromiter(map(self.slots.__getitem__, self._device_of), dtype=np.int64,
                            count=len(self._device_of))
        table = devices.device_table(self._device_of, self.scalars[slots, S.SCORE], self.scalars[slots, S.PEAK])
        if len(table) > n:
            table = sorted(table, key=lambda row: row[2], reverse=True)[:n]
        return table

    def max_peak(self) -> float:
        """The highest held peak over all streams."""
        if not self.slots:
            return 0.0
        return float(self.scalars[list(self.slots.values()), S.PEAK].max())

    # --- the batched step --------------------------------------------------------------------------

    def _scoring_of(self, topic: str) -> tuple[kernel.Params, bool]:
        """The kernel's parameters for ticks of ``topic`` (`DetectorSettings.for_topic`), and whether its ticks
        stamped at their stream's last time are scored, made once per topic."""
        if topic not in self._scoring:
            settings = self.settings.for_topic(topic)
            self._scoring[topic] = kernel.params(settings, self.model.spec.normaliser), settings.equal_timestamps
        return self._scoring[topic]

    def process(self, ticks: TickBatch | Sequence[Tick], rules: ResetRules | None = None,
                owners: np.ndarray | None = None, topic: str = "") -> BatchResult:
        """Advance every stream by its ticks in this batch and score each tick.

        A tick not later than its stream's last accepted one is skipped as out of order (one at the same time
        is accepted with `equal_timestamps`); the others are
        checked for a reset against their stream's previous accepted tick (in this batch, or the last one
        before it) and stepped, each stream's in arrival order. ``owners`` (one int per tick) tags each
        stream with where its ticks come from, so a driver can export or drop the streams of one Kafka
        partition (`owned_by`). ``topic`` picks the scoring settings (`DetectorSettings.topics`).
        """
        batch = ticks if isinstance(ticks, TickBatch) else TickBatch.of(ticks)
        self._batches += 1
        count = len(batch)
        slot, evicted = self._slots_of(batch.stream)
        # Each stream's ticks side by side, in arrival order: "previous tick" is then the neighbour, and the
        # kernel walks the state table in slot order.
        order = np.argsort(slot, kind="stable")
        params, equal_timestamps = self._scoring_of(topic)
        order = order[kernel.in_order(slot[order], batch.ts[order], self._last_ts, equal_timestamps)]
        rows, ts = slot[order], batch.ts[order]
        first = np.ones(len(rows), dtype=bool)  # a stream's first accepted tick in this batch
        first[1:] = rows[1:] != rows[:-1]
        last = np.append(first[1:], True)[:len(rows)]  # ... and its last (the slice: an empty batch)

        def previous(now: np.ndarray, table: np.ndarray) -> np.ndarray:
            """Each tick's stream's previous accepted tick's value: the neighbour's, or the table's."""
            before = np.empty_like(now)
            before[1:] = now[:-1]
            before[first] = table[rows[first]]
            return before

        policy = ResetPolicy(rules or ResetRules())
        day = policy.days(ts)
        segment = np.full(len(rows), None, dtype=object) if batch.segment is None else batch.segment[order]
        explicit = np.zeros(len(rows), dtype=bool) if batch.reset is None else batch.reset[order]
        prev_ts = previous(ts, self._last_ts)
        reasons = policy.reasons(explicit, segment, previous(segment, self._segment), day,
                                 previous(day, self._day), ts, prev_ts)
        reasons[prev_ts == -math.inf] = 0  # a stream's first tick has nothing to reset

        score, error, forecast = np.empty(len(rows)), np.empty(len(rows)), np.empty(len(rows))
        evidence = np.empty(len(rows), dtype=np.int8)
        kernel.advance(rows, batch.value[order], ts, reasons, self.scalars, self.profile, self.h, self.c,
                       self._weights, params, score, error, forecast, evidence)
        ends = rows[last]
        self._last_ts[ends], self._segment[ends], self._day[ends] = ts[last], segment[last], day[last]
        if owners is not None:
            self._owner[ends] = owners[order[last]]
        if batch.device is not None:  # polls with a multivariate tick: once per stream, its last tick's device
            for i in order[last][np.not_equal(batch.device[order[last]], None)].tolist():
                self._device_of[batch.stream[i]] = batch.device[i]

        def in_arrival_order(accepted: np.ndarray, skipped) -> np.ndarray:
            """A column of the accepted ticks (in `order`) back in the batch's order, ``skipped`` elsewhere."""
            column = np.full(count, skipped, dtype=accepted.dtype)
            column[order] = accepted
            return column

        counts = np.bincount(reasons, minlength=len(RESET_REASONS) + 1)[1:].tolist()
        scores = in_arrival_order(score, np.nan)
        return BatchResult(
            score=scores, error=in_arrival_order(error, np.nan),
            forecast=in_arrival_order(forecast, np.nan), evidence=in_arrival_order(evidence, kernel.NO_EVIDENCE),
            outcome=in_arrival_order(np.full(len(rows), SCORED, dtype=np.int8), OUT_OF_ORDER),
            reset_code=in_arrival_order(reasons, 0),
            device_score=devices.tick_scores(batch.device, batch.ts, scores),
            resets=Counter({reason: n for reason, n in zip(RESET_REASONS, counts) if n}), evicted=evicted)
