"""The detector's per-tick arithmetic, compiled: score a tick, then advance its stream's forecaster one step.

`Detector` (detector.py) keeps the state table and does the bookkeeping of a batch in numpy (slots, out-of-
order ticks, reset reasons); everything that happens once per tick is `advance`, one compiled call for a
whole batch. Ticks of different streams are independent and a stream's ticks are taken in order, so a
batch of any shape costs about the same per tick: 100 streams with 50 ticks each in a poll cost what 5,000
streams with one do (the numpy version it replaced paid per wave of streams; docs/perf-history.md).

Written as plain scalar loops: each line is the formula of the detector's module docstring, for one tick.
Statistics are float64; the stored tail rates and daily profile are float32 (read, updated in float64,
stored back), as are the forecaster's state and weights (the model is trained in float32).

The forecaster is an LSTM or a GRU of one or two layers (`ModelSpec`): `advance` is compiled for the model's
cell and depth (the types of `Weights`), and a one-layer LSTM runs the same code, arithmetic and speed as
before GRUs and stacked layers existed.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple
from typing import NamedTuple

import numba
import numpy as np
from numba.extending import overload

from streamer.config import DetectorSettings
from streamer.core.model import INPUT_CLIP, LOG_STD_MAX, LOG_STD_MIN, Forecaster, NormaliserSpec, layer_name

# Per-stream scalars, float64 [slots, N_SCALARS]: values in the stream's own units and epoch timestamps need
# the precision (float32 resolves 1.7e9 s to 128 s). Declared once, here: a column's index is its place in
# this list, and the kernel reads it as `st[S.NAME]` (a constant to the compiler).
SCALAR_COLUMNS = (
    ("N", "ticks since the stream's (re)start"),
    ("MEAN", "the normaliser's EW mean"),
    ("VAR", "the normaliser's EW variance"),
    ("PRED", "the forecast of the next value"),
    ("PRED_STD", "its predicted standard deviation"),
    ("SEASON_SHORT", "short EW mean of log1p(time-of-day surprise)"),
    ("DAMP_FORECAST", "the forecast evidence's decaying recent maximum (refractory damping)"),
    ("LAST_TS", "the last tick's time"),
    ("SCORE", "the last score"),
    ("LOW", "the lowest value so far"),
    ("HIGH", "the highest value so far"),
    ("PEAK", "the highest score held for `peak_hold_seconds` (tick time)"),
    ("PEAK_TS", "its tick time"),
    ("LEVEL_MEAN", "the stream's slow EW mean (memory `season_memory_days`)"),
    ("LEVEL_VAR", "its slow EW variance"),
    ("INCIDENT", "the score that opened or last raised the current incident"),
    ("INCIDENT_AGE", "ticks since then, or since the last tick that kept the incident open (`incident_hold`)"),
    ("START_TS", "the time of the stream's first tick since its (re)start"),
    ("LOG_INTERVAL", "EW mean of log seconds between the stream's ticks (its usual pace)"),
)
S = namedtuple("Scalars", [name for name, _ in SCALAR_COLUMNS])(*range(len(SCALAR_COLUMNS)))
N_SCALARS = len(SCALAR_COLUMNS)

# Per-stream distributions, float32 [slots, N_PROFILE]: exceedance rates in [0, 1] and a profile of
# standardised values, where float32's 7 digits are plenty; they are most of a stream's state. Declared
# once, as blocks of columns: a block's offset is the sum of the widths before it (`PROF.NAME`).
# Exceedance levels 1, 2, 4, ... of a surprise statistic's tail. The forecast surprise needs 32 (to 2^31): its
# yardstick, the LSTM's predicted std, collapses on a stream that idles flat, so a burst from idle is a surprise
# of 10^6-10^10, which a stream that bursts routinely must be able to learn as usual (docs/detection.md, sixth
# round); the time-of-day surprises are in units of the stream's slow statistics, and 12 (to 2048) cover them.
# Each tail is kept twice: learned with a memory of `tail_memory` ticks, and with a slow one that grows with the
# stream's life (`tail_slow_share`); a level's rate is the larger of the two (`score_tick`).
FORECAST_LEVELS = 32
SEASON_LEVELS = 12
N_TAILS = FORECAST_LEVELS + 2 * SEASON_LEVELS  # the three tails, as stored: adjacent blocks of the profile
SEASON_BINS = 24  # time-of-day bins (hours, UTC)
PROFILE_BLOCKS = (
    ("FORECAST_TAIL", FORECAST_LEVELS, "exceedance rates of the forecast surprise"),
    ("SEASON_TAILS", 2 * SEASON_LEVELS, "exceedance rates of the time-of-day surprise, and of its short mean"),
    ("SLOW_TAILS", N_TAILS, "the same three tails, learned with the slow memory"),
    ("BIN_MEAN", SEASON_BINS, "daily profile of the standardised value: EW mean per bin"),
    ("BIN_VAR", SEASON_BINS, "EW variance per bin"),
    ("BIN_COUNT", SEASON_BINS, "visits per bin"),
)
PROF = namedtuple("Profile", [name for name, _, _ in PROFILE_BLOCKS])(
    *(sum(width for _, width, _ in PROFILE_BLOCKS[:k]) for k in range(len(PROFILE_BLOCKS))))
N_PROFILE = sum(width for _, width, _ in PROFILE_BLOCKS)  # 184: with the scalars, 888 bytes a stream besides h, c

PACE_RATE = 0.01  # EW weight of a stream's log tick interval (its pace) once 100 intervals were seen
SETTLE = 20  # surprises of the first ticks after a (re)start (normaliser and LSTM state settling) are not learned
SEASON_MIN_VISITS = 3  # a time-of-day bin scores once it has seen this many ticks
SEASON_FLOOR = 0.1  # floor on a bin's standard deviation, in slow standard deviations (flat or quantised streams)
DECADES = 10.0  # score = -log10(p) / DECADES: 1.0 is a 1-in-10^10 event
_LOG10_2 = math.log10(2.0)
_DAY = 86400.0
_HOUR = _DAY / SEASON_BINS  # the span of a time-of-day bin

# Compiled with IEEE semantics except where a function says otherwise; division by zero gives inf or NaN as in
# numpy (Python's ZeroDivisionError check would also keep loops from being vectorised). Compiling takes
# seconds at start-up; with NUMBA_CACHE_DIR set (the systemd unit and the image set it) the machine code is
# kept there and a restart loads it (README, "How a tick becomes a metric"). Not by default: numba's cache
# needs a writable directory, and without one `cache=True` fails at import.
_JIT = {"nogil": True, "error_model": "numpy", "cache": "NUMBA_CACHE_DIR" in os.environ}
# Reassociation lets a dot product or a loop of products run in SIMD lanes: the LSTM's float32 sums then
# round differently from torch's (as torch's own kernels do between batch sizes), by ~1e-7.
_JIT_SIMD = {**_JIT, "fastmath": {"reassoc", "contract", "nsz", "arcp"}}


class Params(NamedTuple):
    """The detector and normaliser settings the kernel reads (all float: one compiled signature)."""

    warmup: float
    tail_memory: float
    tail_index: float
    tail_envelope: float  # 0: off
    tail_slow_share: float  # 0: off
    forecast_evidence: float  # 1.0 or 0.0
    season_evidence: float  # 1.0 or 0.0
    range_evidence: float  # 1.0 or 0.0
    season_gate: float  # 0: off
    season_gate_days: float  # 0: always
    novelty_gate: float  # 0: off
    novelty_gate_young: float  # 0: off
    protect_decades: float  # 0: off
    normaliser_clip: float  # 0: off
    gap_scaled: float  # 1.0 or 0.0
    refractory_halflife: float
    range_margin: float
    season_memory_days: float
    season_window: float
    incident_ticks: float
    incident_hold: float  # 0: off
    peak_hold_seconds: float
    alpha: float  # the normaliser's
    min_scale: float
    rel_scale: float


def params(settings: DetectorSettings, normaliser: NormaliserSpec) -> Params:
    """The kernel's `Params` from `DetectorSettings` and the model's `NormaliserSpec`."""
    detector = {name: float(getattr(settings, name)) for name in Params._fields if hasattr(settings, name)}
    return Params(**detector, alpha=normaliser.alpha, min_scale=normaliser.min_scale, rel_scale=normaliser.rel_scale)


class Upper(NamedTuple):
    """The layers above the first (`Weights.upper`), stacked: layer l + 1 at index l."""

    w_ih: np.ndarray  # float32 [layers - 1, 4H, H]: weights on the layer below's new h (row k: gate unit k's)
    w_hh: np.ndarray  # float32 [layers - 1, G*H, H]
    bias: np.ndarray  # float32 [layers - 1, 4H]


class Weights(NamedTuple):
    """An LSTM's weights laid out for one stream's step (`step_weights`; a GRU's are `GruWeights`).

    A layer's pre-activations are summed in one buffer of 4H units: an LSTM's four gates (input, forget, cell,
    output); a GRU's reset and update gates, then the new gate's recurrent part (inside the reset gate's
    product) and its input part. The recurrent weights feed the first G*H of them (G = `model.GATES`), the
    input weights all 4H (a GRU's are 0 on the recurrent part of the new gate).

    The cell is the weights' type and the first layer's weights are fields of their own, the layers above it
    `upper` (None for one layer), so that the compiler specialises `advance` to the model: a one-layer LSTM
    runs exactly the code, and at the speed, of the kernel before GRUs and stacked layers (a runtime branch on
    the cell, the layers' loop, or the first layer's update as a function of its own each cost it 5-10 % of
    a tick, measured on one detector alternating the two kernels)."""

    w_hh: np.ndarray  # float32 [G*H, H]: row k is recurrent gate unit k's weights on h (torch's layout)
    w_ih: np.ndarray  # float32 [4H]: weights on the (normalised, clipped) input
    bias: np.ndarray  # float32 [4H]
    head_w: np.ndarray  # float32 [2, H]: mean and log standard deviation of the next normalised value, from
    head_b: np.ndarray  # float32 [2]     the top layer's h
    upper: Upper | None


class GruWeights(Weights):
    """A GRU's weights: the same fields, another type (see `Weights`)."""

    __slots__ = ()


def _is_gru(w: Weights) -> bool:
    return isinstance(w, GruWeights)


@overload(_is_gru, jit_options=_JIT)
def _is_gru_compiled(w):
    """In compiled code a constant, from the weights' type: each cell gets its own `advance`."""
    gru = w.instance_class is GruWeights
    return lambda w: gru


@numba.njit(**_JIT)
def _log2(x: float) -> float:
    return math.log2(max(x, 1e-300))


@numba.njit(**_JIT)
def _top(rates: np.ndarray) -> int:
    """The index of the largest level exceeded (-1: none). Rates fall with the level (every exceedance of a
    level exceeds the ones below), so the positive rates come first and the count stops at the first zero."""
    top = -1
    while top + 1 < rates.shape[0] and rates[top + 1] > 0.0:
        top += 1
    return top


@numba.njit(**_JIT)
def tail_decades(rates: np.ndarray, s: float, index: float, steepest: float = 0.0) -> float:
    """-log10 P(S >= s) from exceedance ``rates`` at the levels 1, 2, 4, ...

    Between two levels the stream has exceeded, log P is interpolated linearly in log s; past the largest
    level it has exceeded, P falls as a Pareto tail, s^-index; below level 1 (or before any data) P is 1.
    Rates fall with the level (every exceedance of a level exceeds the ones below), so the number of
    positive rates is the index of the largest level exceeded, plus one.

    Nowhere does P fall faster than s^-steepest from a lower level (0: no bound). An exceedance is forgotten
    only slowly: its rate decays by a factor each tick and never reaches 0, so a level last exceeded long
    ago keeps a tiny rate that grows tinier with the stream's age, and interpolating towards it made the
    surprises just below it rarer and rarer: a stationary stream's false-alarm rate grew with its age
    (`detector.tail_envelope`, docs/detection.md, eighth round).
    """
    top = _top(rates)
    log2_s = _log2(s)
    levels = rates.shape[0]
    level = min(max(math.floor(log2_s), -1.0), levels - 1.0)  # the largest level <= s
    if level < 0 or top < 0:
        return 0.0
    if level < top:  # interpolate between lo and lo + 1
        lo = max(min(int(level), top - 1, levels - 2), 0)
        at_lo = _log2(rates[lo])
        log2_p = at_lo + (log2_s - lo) * (_log2(rates[lo + 1]) - at_lo)
    else:  # extrapolate from the largest level exceeded
        log2_p = _log2(rates[top]) - index * (log2_s - top)
    if steepest > 0:
        for k in range(min(int(level), top) + 1):
            log2_p = max(log2_p, _log2(rates[k]) - steepest * (log2_s - k))
    return max(-log2_p, 0.0) * _LOG10_2


@numba.njit(**_JIT)
def learn_tail(rates: np.ndarray, s: float, weight: float) -> None:
    """Fold ``s`` into the exceedance ``rates`` in place with EW weight ``weight`` (0: not learned)."""
    if weight == 0.0:
        return
    level = 1.0
    for k in range(rates.shape[0]):
        if s < level and rates[k] == 0.0:  # so are the levels above: nothing to learn there
            break
        rates[k] += weight * ((1.0 if s >= level else 0.0) - rates[k])
        level *= 2.0


@numba.njit(**_JIT)
def learn_tails(tails: np.ndarray, forecast_surprise: float, season: float, season_short: float, weight: float,
                flagged: bool, seasoned: bool) -> None:
    """Fold one tick's three surprises into one copy of the three tails ``tails`` [N_TAILS]: the forecast's
    unless the tick is flagged (`protect_decades`), the time-of-day ones once its bin is `SEASON_MIN_VISITS`."""
    learn_tail(tails[:FORECAST_LEVELS], forecast_surprise, 0.0 if flagged else weight)
    if seasoned:
        learn_tail(tails[FORECAST_LEVELS:FORECAST_LEVELS + SEASON_LEVELS], season, weight)
        learn_tail(tails[FORECAST_LEVELS + SEASON_LEVELS:], season_short, weight)


# tanh as a rational function (Eigen's float tanh: odd 13th over even 6th degree, clamped where float32
# tanh is +-1): max error 2.6e-7 against float64 tanh; unlike libm's tanh it vectorises.
_TANH_CLAMP = np.float32(7.90531110763549805)
_A = tuple(np.float32(a) for a in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                                   5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                                   -2.76076847742355e-16))
_B = tuple(np.float32(b) for b in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                                   1.19825839466702e-06))


@numba.njit(**_JIT_SIMD)
def tanh(x: np.float32) -> np.float32:
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x * (_A[0] + x2 * (_A[1] + x2 * (_A[2] + x2 * (_A[3] + x2 * (_A[4] + x2 * (_A[5] + x2 * _A[6]))))))
    return p / (_B[0] + x2 * (_B[1] + x2 * (_B[2] + x2 * _B[3])))


@numba.njit(**_JIT_SIMD)
def sigmoid(x: np.float32) -> np.float32:
    return np.float32(0.5) + np.float32(0.5) * tanh(np.float32(0.5) * x)


UNROLLED_WIDTH = 64  # the bundled model's hidden size (`forecast_step`)


@numba.njit(**_JIT_SIMD, inline="always")
def _add_matvec(gates: np.ndarray, m: np.ndarray, v: np.ndarray, width: int) -> None:
    """gates[:len(m)] += m @ v[:width] for m [units, width]: one dot product per gate unit (its row of ``m`` is
    contiguous), four units at a time, so that v and four sums stay in registers and each gate is loaded and
    stored once (docs/perf.md, session 15). Inlined: a constant ``width`` is unrolled."""
    units = m.shape[0]
    top = units - units % 4
    for k in range(0, top, 4):
        s0, s1, s2, s3 = np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.0)
        for j in range(width):
            vj = v[j]
            s0 += m[k, j] * vj
            s1 += m[k + 1, j] * vj
            s2 += m[k + 2, j] * vj
            s3 += m[k + 3, j] * vj
        gates[k] += s0
        gates[k + 1] += s1
        gates[k + 2] += s2
        gates[k + 3] += s3
    for k in range(top, units):
        total = np.float32(0.0)
        for j in range(width):
            total += m[k, j] * v[j]
        gates[k] += total


@numba.njit(**_JIT_SIMD)
def _update(h: np.ndarray, c: np.ndarray, w: Weights, gates: np.ndarray) -> None:
    """An upper layer's new h (and c) [H] from its summed pre-activations, in place: torch's `LSTMCell`, or its
    `GRUCell`: n = tanh(input part + r * recurrent part), h' = n + z * (h - n) (torch's order). The first
    layer's is the same, written out in `forecast_step`."""
    hidden = h.shape[0]
    if _is_gru(w):
        for j in range(hidden):
            n = tanh(gates[3 * hidden + j] + sigmoid(gates[j]) * gates[2 * hidden + j])
            h[j] = n + sigmoid(gates[hidden + j]) * (h[j] - n)
    else:  # gates are (input, forget, cell, output)
        for j in range(hidden):
            cj = sigmoid(gates[hidden + j]) * c[j] + sigmoid(gates[j]) * tanh(gates[2 * hidden + j])
            c[j] = cj
            h[j] = sigmoid(gates[3 * hidden + j]) * tanh(cj)


@numba.njit(**_JIT_SIMD)
def _upper_layers(h: np.ndarray, c: np.ndarray, w: Weights, upper: Upper | None, gates: np.ndarray) -> None:
    """The layers above the first, each reading the new h of the one below (h, c as in `forecast_step`)."""
    if upper is None:  # one layer: decided when compiling, and this function is empty
        return
    hidden = upper.w_hh.shape[2]
    cells = c.shape[0] // (upper.w_hh.shape[0] + 1)  # 0 for a GRU
    for above in range(upper.w_hh.shape[0]):
        for k in range(gates.shape[0]):
            gates[k] = upper.bias[above, k]
        _add_matvec(gates, upper.w_ih[above], h[above * hidden:(above + 1) * hidden], hidden)
        layer = above + 1
        h_layer = h[layer * hidden:(layer + 1) * hidden]
        _add_matvec(gates, upper.w_hh[above], h_layer, hidden)
        _update(h_layer, c[layer * cells:(layer + 1) * cells], w, gates)


@numba.njit(**_JIT_SIMD)
def forecast_step(x: float, h: np.ndarray, c: np.ndarray, w: Weights, gates: np.ndarray) -> tuple[float, float]:
    """One step of one stream's forecaster (torch's `LSTMCell` or `GRUCell` per layer, as
    `TorchForecaster.step`): h [layers*H] and c [layers*H] (LSTM) or [0] (GRU), layer l's at [l*H, (l+1)*H),
    updated in place; layer l + 1 reads layer l's new h. Returns (mean, log_std) of the next normalised value
    from the top layer's h. ``gates`` [4H] is scratch.

    The first layer is written out, `_update` included (its rows of h and c are indexed, not sliced): a
    one-layer LSTM's step is then the code it was before layers and GRUs, as fast (`Weights`)."""
    hidden = w.w_hh.shape[1]
    xf = np.float32(min(max(x, -INPUT_CLIP), INPUT_CLIP))
    for k in range(gates.shape[0]):
        gates[k] = w.bias[k] + xf * w.w_ih[k]
    if hidden == UNROLLED_WIDTH:  # gates += w_hh @ h, unrolled for the bundled model's width
        _add_matvec(gates, w.w_hh, h, UNROLLED_WIDTH)
    else:
        _add_matvec(gates, w.w_hh, h, hidden)
    if _is_gru(w):
        for j in range(hidden):
            n = tanh(gates[3 * hidden + j] + sigmoid(gates[j]) * gates[2 * hidden + j])
            h[j] = n + sigmoid(gates[hidden + j]) * (h[j] - n)
    else:
        for j in range(hidden):
            cj = sigmoid(gates[hidden + j]) * c[j] + sigmoid(gates[j]) * tanh(gates[2 * hidden + j])
            c[j] = cj
            h[j] = sigmoid(gates[3 * hidden + j]) * tanh(cj)
    _upper_layers(h, c, w, w.upper, gates)
    top = h.shape[0] - hidden
    mean, log_std = w.head_b[0], w.head_b[1]
    for j in range(hidden):
        mean += w.head_w[0, j] * h[top + j]
        log_std += w.head_w[1, j] * h[top + j]
    return float(mean), min(max(float(log_std), LOG_STD_MIN), LOG_STD_MAX)


@numba.njit(**_JIT)
def _scale(mean: float, var: float, p: Params | NormaliserSpec) -> float:
    """The normaliser's scale: standard deviation plus a floor (absolute, and relative to |mean|)."""
    return math.sqrt(var) + max(p.min_scale, p.rel_scale * abs(mean))


@numba.njit(**_JIT)
def normalise(n: float, mean: float, var: float, value: float, p: Params | NormaliserSpec, clip: float = 0.0):
    """Fold the stream's (n + 1)-th value into its EW mean and variance (`NormaliserSpec`; the first value
    sets the mean); returns the new (mean, var, scale). The detector's input normalisation, and the
    trainer's (`normalise_lanes`): a model is trained on the inputs the daemon gives it.

    The detector's is robust once settled (`detector.normaliser_clip`; the trainer's is not, on clean
    series they are the same): a value further than ``clip`` scales from the mean pulls the mean and
    variance as one ``clip`` scales away would (Huber's estimator). One wild tick, a x100 price, would
    otherwise inflate the scale for ~1/alpha ticks and shift the forecast for as long, and every surprise
    after it would look small; a real level shift still moves the statistics, at a bounded pace that grows
    with the scale it inflates."""
    alpha = max(1.0 / (n + 1.0), p.alpha)
    delta = value - mean
    if clip > 0 and n >= SETTLE:
        bound = clip * _scale(mean, var, p)
        delta = min(max(delta, -bound), bound)
    mean = mean + alpha * delta
    var = (1.0 - alpha) * (var + alpha * delta * delta)
    return mean, var, _scale(mean, var, p)


@numba.njit(**_JIT)
def normalise_lanes(values: np.ndarray, reset: np.ndarray, p: Params | NormaliserSpec):
    """`normalise` along each row of ``values`` [B, T], restarted where ``reset``; returns (mean, scale)
    [B, T] after each value."""
    means, scales = np.empty_like(values), np.empty_like(values)
    for b in range(values.shape[0]):
        n = mean = var = 0.0
        for t in range(values.shape[1]):
            if reset[b, t]:
                n = mean = var = 0.0
            mean, var, scales[b, t] = normalise(n, mean, var, values[b, t], p)
            means[b, t] = mean
            n += 1.0
    return means, scales


@numba.njit(**_JIT)
def range_novelty(st: np.ndarray, value: float, learn: bool, learned: float, p: Params) -> bool:
    """Range novelty: beyond [LOW, HIGH] by more than range_margin of the range. A novel tick is already a
    certain anomaly, so it is learned neither into the surprise tails nor into the slow level: it would
    teach the stream that its anomalies are usual, and inflate the yardstick of the time-of-day surprise,
    blunting it for days. It does widen the range (and enter the daily profile)."""
    low, high = st[S.LOW], st[S.HIGH]
    beyond = max(value - high, low - value) / max(high - low, 1e-12)
    novel = learn and learned >= 1 and beyond > p.range_margin
    if learn:
        first = learned < 1
        st[S.LOW] = value if first else min(low, value)
        st[S.HIGH] = value if first else max(high, value)
    return novel


@numba.njit(**_JIT)
def slow_level(st: np.ndarray, value: float, n: float, hours: float, novel: bool, p: Params) -> float:
    """The value in units of the stream's slow statistics (memory in days, like the profile's, each tick
    weighing the share of an hour it covers): the daily profile is kept in these units, which keep a daily
    pattern's shape where the LSTM's fast normaliser (a memory of ~100 ticks) flattens it."""
    level_rate = 0.0 if novel else max(1.0 / (n + 1.0), hours * (1.0 / (SEASON_BINS * p.season_memory_days)))
    delta = value - st[S.LEVEL_MEAN]
    level_mean = st[S.LEVEL_MEAN] + level_rate * delta
    level_var = (1.0 - level_rate) * (st[S.LEVEL_VAR] + level_rate * delta * delta)
    st[S.LEVEL_MEAN], st[S.LEVEL_VAR] = level_mean, level_var
    return (value - level_mean) / _scale(level_mean, level_var, p)


@numba.njit(**_JIT)
def learn_profile(prof: np.ndarray, b: int, level: float, hours: float, p: Params) -> None:
    """The daily profile learns every tick, each weighing the share of its bin's hour it covers (a reset
    stream's LAST_TS is 0: a full share), so its memory is in days whatever the tick rate."""
    bin_mean, bin_var = float(prof[PROF.BIN_MEAN + b]), float(prof[PROF.BIN_VAR + b])
    visits = float(prof[PROF.BIN_COUNT + b])
    rate = max(1.0 / (visits + 1.0), hours * (1.0 / p.season_memory_days))
    delta = level - bin_mean
    prof[PROF.BIN_MEAN + b] = bin_mean + rate * delta
    prof[PROF.BIN_VAR + b] = (1.0 - rate) * (bin_var + rate * delta * delta)
    prof[PROF.BIN_COUNT + b] = visits + 1.0


# The kind of evidence that made a tick's score (`score_tick`), as codes: what an alert is about, for the
# operator who reads it (score records and `streamer score`'s output name it).
EVIDENCE_KINDS = ("", "forecast", "time_of_day", "range")
NO_EVIDENCE, FORECAST, SEASON, RANGE = range(len(EVIDENCE_KINDS))


@numba.njit(**_JIT)
def one_alarm_per_incident(st: np.ndarray, score: float, live: bool, p: Params) -> float:
    """One incident, one alarm: while the stream's incident is open, a tick scores only if it beats the score
    that opened or last raised it (and then raises it). The incident closes after `incident_ticks` ticks in a
    row without a tick scoring at least `incident_hold` of that score: evidence that stays elevated for longer
    is still the same incident, and a new alarm needs a real rise (0: it closes `incident_ticks` after the
    tick that opened or last raised it)."""
    age = st[S.INCIDENT_AGE] + 1.0
    if live and (score > st[S.INCIDENT] or age > p.incident_ticks):
        st[S.INCIDENT], st[S.INCIDENT_AGE] = score, 0.0
    else:
        still_open = p.incident_hold > 0 and score > 0 and score >= p.incident_hold * st[S.INCIDENT]
        score = 0.0
        st[S.INCIDENT_AGE] = 0.0 if still_open else age
    return score


@numba.njit(**_JIT)
def score_tick(st: np.ndarray, prof: np.ndarray, tails: np.ndarray, rates: np.ndarray, value: float, ts: float,
               error: float, p: Params) -> tuple[float, int]:
    """Score one tick from its three kinds of evidence (detector docstring), learning it into the stream's
    scalars ``st`` and daily profile ``prof`` (its table rows) and its ``tails`` [2 N_TAILS] (a float64 copy of
    the profile's FORECAST_TAIL, SEASON_TAILS and SLOW_TAILS). ``rates`` [N_TAILS] is scratch. ``error`` is
    |value - forecast|, 0 without a forecast. Returns the score and the kind of evidence that made it
    (`EVIDENCE_KINDS`; `NO_EVIDENCE` for a score of 0)."""
    # Each level's rate is the larger of its two estimates: the fast one follows a stream that turns more
    # turbulent within `tail_memory` ticks; the slow one, whose memory grows with the stream's life, still
    # knows the rare surprises of a long-lived stream (a 1-in-N rate takes a memory well beyond N ticks to
    # estimate), so a burst that recurs every few days is not a new 1-in-1,000 event each time.
    slow = p.tail_slow_share > 0
    for k in range(N_TAILS):
        rates[k] = max(tails[k], tails[N_TAILS + k]) if slow else tails[k]
    forecast_rates = rates[:FORECAST_LEVELS]
    season_rates = rates[FORECAST_LEVELS:FORECAST_LEVELS + SEASON_LEVELS]
    short_rates = rates[FORECAST_LEVELS + SEASON_LEVELS:]
    n = st[S.N]  # ticks before this one
    if n < 1:
        st[S.START_TS] = ts
    settle = min(SETTLE, p.warmup)
    learned = max(n - settle, 0.0)  # surprises learned before this one
    learn = n >= settle
    live = n >= p.warmup

    novel = range_novelty(st, value, learn, learned, p)

    # The forecast surprise and its calibrated tail (-log10 p), before anything is learned from this tick.
    # A one-step forecast made before a gap (a night, a weekend, an outage) vouches for one step of the
    # stream's usual pace: over k steps a random walk's error grows like sqrt(k), so the surprise is divided
    # by that (`gap_scaled`); the stream's pace is learned in log seconds, so its gaps barely move it.
    std = st[S.PRED_STD]
    forecast_surprise = error / std if std > 0 else 0.0
    if n >= 1:
        log_gap = math.log(max(ts - st[S.LAST_TS], 1e-3))
        if n >= 2 and p.gap_scaled:
            forecast_surprise /= math.sqrt(max(math.exp(log_gap - st[S.LOG_INTERVAL]), 1.0))
        st[S.LOG_INTERVAL] += max(1.0 / n, PACE_RATE) * (log_gap - st[S.LOG_INTERVAL])
    steepest = p.tail_envelope * p.tail_index
    evidence = tail_decades(forecast_rates, forecast_surprise, p.tail_index, steepest)
    # a surprise of a stream whose forecast surprise never reached 1 (flat, quantised): evidence 0 says "no
    # history", not "usual"; it passes the novelty gate
    unprecedented = forecast_rates[0] <= 0.0 and forecast_surprise >= 1.0
    # Protected learning (`protect_decades`): a tick the detector flags teaches the stream nothing, or its
    # anomalies would become usual (a second x100 price would look like the first one, learned).
    flagged = p.protect_decades > 0 and p.forecast_evidence > 0 and evidence >= p.protect_decades

    hours = min(max(ts - st[S.LAST_TS], 0.0), _HOUR) * (1.0 / _HOUR)
    level = slow_level(st, value, n, hours, novel, p)

    # Time-of-day profile of the level: this tick's bin.
    b = min(int((ts % _DAY) * (SEASON_BINS / _DAY)), SEASON_BINS - 1)
    bin_mean, bin_var = float(prof[PROF.BIN_MEAN + b]), float(prof[PROF.BIN_VAR + b])
    visits = float(prof[PROF.BIN_COUNT + b])
    seasoned = visits >= SEASON_MIN_VISITS

    # The time-of-day surprise statistics, their calibrated tails, and learning all three.
    season = abs(level - bin_mean) / math.sqrt(bin_var + SEASON_FLOOR ** 2) if seasoned else 0.0
    log_season = math.log1p(season)  # the time-of-day surprise's short EW mean is of log1p
    short = (st[S.SEASON_SHORT] + (2.0 / (p.season_window + 1.0)) * (log_season - st[S.SEASON_SHORT])
             if learned >= 1 else log_season)
    season_short = math.expm1(short)
    season_decades = tail_decades(season_rates, season, p.tail_index, steepest)
    short_decades = tail_decades(short_rates, season_short, p.tail_index, steepest)
    if learn and not novel:
        fast_weight = max(1.0 / (learned + 1.0), 1.0 / p.tail_memory)
        learn_tails(tails[:N_TAILS], forecast_surprise, season, season_short, fast_weight, flagged, seasoned)
        if slow:
            slow_weight = max(1.0 / (learned + 1.0), 1.0 / max(p.tail_memory, p.tail_slow_share * learned))
            learn_tails(tails[N_TAILS:], forecast_surprise, season, season_short, slow_weight, flagged, seasoned)
    if seasoned and learn:
        st[S.SEASON_SHORT] = short
    # A young stream (`season_gate_days`) has seen each hour of the day once at most: its bins hold a running
    # level, not a daily profile, and a single tick's departure from it is the forecaster's to judge; only a
    # sustained departure, the short mean, is time-of-day evidence then.
    young = p.season_gate_days <= 0 or ts - st[S.START_TS] < p.season_gate_days * _DAY
    season_part = max(0.0 if young else season_decades, short_decades) if seasoned else 0.0

    learn_profile(prof, b, level, hours, p)
    st[S.LAST_TS] = ts

    # Refractory forecast evidence: only what exceeds its own decaying recent maximum counts.
    damp = st[S.DAMP_FORECAST]
    forecast_part = max(evidence - damp, 0.0) if p.forecast_evidence else 0.0
    if live:  # a flagged tick (`protect_decades`) raises no damping either: it is no sign of a turbulent phase
        st[S.DAMP_FORECAST] = max(damp * 0.5 ** (1.0 / p.refractory_halflife), 0.0 if flagged else evidence)

    # Gated time-of-day evidence (`season_gate`): it counts only up to `season_gate` times the forecast's own
    # (undamped) decades, so a value the stream's dynamics led up to, which the LSTM expected, is not a
    # time-of-day anomaly. Off with the LSTM's evidence: `forecast_evidence = false` removes the LSTM entirely.
    # Only while the stream is young: after `season_gate_days` its daily profile is a yardstick of its own.
    if p.season_gate > 0 and p.forecast_evidence and young:
        season_part = min(season_part, p.season_gate * evidence)
    # Gated range novelty (`novelty_gate`): a new extreme is certain only when the LSTM's (undamped) surprise
    # reaches `novelty_gate` decades too, so a random walk's or a trend's new extreme, which the stream's
    # dynamics led up to, is no anomaly. Off with the LSTM's evidence. Either way the tick stays out of the tails.
    # A young stream's range is a few hours' range, which a daily pattern's first cycle or a walk's first
    # excursions leave routinely: its new extremes need `novelty_gate_young` decades of the LSTM's surprise.
    gate = p.novelty_gate_young if young else p.novelty_gate
    gated = gate > 0 and p.forecast_evidence and not unprecedented and evidence < gate
    novel_part = DECADES if novel and not gated and p.range_evidence else 0.0
    parts = (forecast_part, season_part * p.season_evidence, novel_part)
    strongest = max(parts[0], parts[1], parts[2])
    score = min(strongest * (1.0 / DECADES), 1.0) if live else 0.0

    score = one_alarm_per_incident(st, score, live, p)
    st[S.SCORE] = score
    kind = NO_EVIDENCE
    if score > 0:  # the kind whose evidence made the score, `EVIDENCE_KINDS` (ties: the first)
        kind = FORECAST if parts[0] == strongest else SEASON if parts[1] == strongest else RANGE
    return score, kind


@numba.njit(**_JIT)
def in_order(rows: np.ndarray, ts: np.ndarray, last_ts: np.ndarray, equal: bool) -> np.ndarray:
    """Which ticks come after their stream's last accepted one (``rows`` grouped by stream, each stream's ticks
    in arrival order; ``last_ts`` by slot, the last accepted before these), or at the same time if ``equal``.
    The others are out of order."""
    accepted = np.empty(rows.shape[0], dtype=np.bool_)
    latest = -np.inf
    for i in range(rows.shape[0]):
        if i == 0 or rows[i] != rows[i - 1]:
            latest = last_ts[rows[i]]
        accepted[i] = ts[i] > latest or (equal and ts[i] == latest)
        if accepted[i]:
            latest = ts[i]
    return accepted


# Reset codes (`detector.RESET_REASONS`, + 1): an explicit reset and a new segment (1, 2) start a new stream;
# a new session and a long gap (3, 4) restart the LSTM's memory of the stream's recent dynamics and keep what
# the detector knows of it (its calibration, range, daily profile, normaliser): the same instrument or meter
# continues after a night or an outage, and restarting its statistics would blind it for `warmup` ticks.
NEW_STREAM = 2  # the highest reset code that starts a new stream


LOOKAHEAD = 8  # ticks: how far ahead `advance` touches a slot's state (a tick's work hides a DRAM miss)


@numba.njit(**_JIT)
def _touch(scalars: np.ndarray, profile: np.ndarray, h: np.ndarray, c: np.ndarray, r: int) -> float:
    """Load one value from each cache line of slot ``r``'s state. Done for a tick `LOOKAHEAD` ticks ahead, the
    loads are independent of the work in between and go to memory together, instead of one miss after
    another when the tick is processed (with 100,000 streams the state does not fit any cache)."""
    total = 0.0
    for k in range(0, scalars.shape[1], 8):
        total += scalars[r, k]
    for k in range(0, profile.shape[1], 16):
        total += profile[r, k]
    for k in range(0, h.shape[1], 16):
        total += h[r, k]
    for k in range(0, c.shape[1], 16):  # none for a GRU
        total += c[r, k]
    return total


@numba.njit(**_JIT)
def advance(rows: np.ndarray, value: np.ndarray, ts: np.ndarray, reset: np.ndarray, scalars: np.ndarray,
            profile: np.ndarray, h: np.ndarray, c: np.ndarray, w: Weights, p: Params,
            score: np.ndarray, error: np.ndarray, forecast: np.ndarray, evidence: np.ndarray) -> float:
    """For each tick i in order: reset its stream's state (slot ``rows[i]``) as ``reset[i]`` says (a reset
    code, 0: none; `NEW_STREAM`), score the value against the stream's forecast, then advance the stream's
    normaliser and forecaster one step and keep the forecast of its next value. Writes ``score``, ``error`` and
    ``forecast`` [i] (NaN without a forecast), and ``evidence`` [i], the kind that made the score (int8,
    `EVIDENCE_KINDS`). ``h`` and ``c`` are the state tables of `forecast_step`, a row
    a slot."""
    tails, rates = np.empty(2 * N_TAILS), np.empty(N_TAILS)
    gates = np.empty(w.bias.shape[0], dtype=np.float32)
    touched = 0.0
    for i in range(min(LOOKAHEAD, rows.shape[0])):
        touched += _touch(scalars, profile, h, c, rows[i])
    for i in range(rows.shape[0]):
        if i + LOOKAHEAD < rows.shape[0]:
            touched += _touch(scalars, profile, h, c, rows[i + LOOKAHEAD])
        r, v, t = rows[i], value[i], ts[i]
        st, prof = scalars[r], profile[r]
        if 0 < reset[i] <= NEW_STREAM:  # the stream's statistics too: as a fresh stream
            st[:] = 0.0
            prof[:] = 0.0
        if reset[i] > 0:  # the forecaster's memory of recent dynamics (every layer's), whatever the reason
            h[r, :] = 0.0
            c[r, :] = 0.0
        for k in range(2 * N_TAILS):
            tails[k] = prof[PROF.FORECAST_TAIL + k]

        n = st[S.N]
        forecast[i] = st[S.PRED] if n >= 1 else np.nan
        error[i] = abs(v - st[S.PRED]) if n >= 1 else np.nan
        mean, var, scale = normalise(n, st[S.MEAN], st[S.VAR], v, p, p.normaliser_clip)
        s, evidence[i] = score_tick(st, prof, tails, rates, v, t, error[i] if n >= 1 else 0.0, p)
        score[i] = s
        # Hold the peak: a one-tick alarm stays visible for peak_hold_seconds, so a scrape cannot miss it.
        if t - st[S.PEAK_TS] > p.peak_hold_seconds or s >= st[S.PEAK]:
            st[S.PEAK], st[S.PEAK_TS] = s, t

        # Advance: one forecaster step on the normalised value, and keep the forecast for the next tick.
        mu, log_std = forecast_step((v - mean) / scale, h[r], c[r], w, gates)
        st[S.N], st[S.MEAN], st[S.VAR] = n + 1.0, mean, var
        st[S.PRED] = mean + scale * mu
        st[S.PRED_STD] = scale * math.exp(log_std)
        for k in range(2 * N_TAILS):
            prof[PROF.FORECAST_TAIL + k] = tails[k]
    return touched  # returned so that the compiler keeps the loads


def _aligned(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy that starts on a cache line (64 bytes), as do its rows at 64 units (1 KB, 768 B for
    a GRU): the step's vector loads of a weight row never straddle two lines. Where malloc put the weights used to
    decide between two speeds of the same kernel from one process to the next (docs/detection.md, "GRU and
    stacked layers")."""
    buffer = np.empty(array.nbytes + 64, dtype=np.uint8)
    start = -buffer.ctypes.data % 64
    out = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def step_weights(model: Forecaster) -> Weights:
    """The forecaster's weights as `forecast_step` reads them: torch's layout (one gate unit's weights on a
    layer's inputs are a contiguous row), a GRU's laid out on the 4H units of `Weights`, every array on a
    cache line (`_aligned`)."""
    spec, w = model.spec, model.weights
    hidden = spec.hidden_size
    w_ih, w_hh, bias = [], [], []
    for layer in range(spec.layers):
        name = layer_name(layer)
        ih, hh = w[f"{name}.weight_ih"], w[f"{name}.weight_hh"]  # [G*H, inputs], [G*H, H]
        b_ih, b_hh = w[f"{name}.bias_ih"], w[f"{name}.bias_hh"]
        if spec.cell == "gru":  # units (r, z, recurrent part of n, input part of n)
            rz = slice(0, 2 * hidden)
            zero = np.zeros((hidden, ih.shape[1]), dtype=np.float32)
            ih = np.concatenate([ih[rz], zero, ih[2 * hidden:]], axis=0)
            b = np.concatenate([b_ih[rz] + b_hh[rz], b_hh[2 * hidden:], b_ih[2 * hidden:]])
        else:
            b = b_ih + b_hh
        w_ih.append(ih)
        w_hh.append(hh)
        bias.append(b)
    c = _aligned
    upper = (Upper(w_ih=c(np.stack(w_ih[1:])), w_hh=c(np.stack(w_hh[1:])), bias=c(np.stack(bias[1:])))
             if spec.layers > 1 else None)
    kind = GruWeights if spec.cell == "gru" else Weights
    return kind(w_hh=c(w_hh[0]), w_ih=c(w_ih[0][:, 0]), bias=c(bias[0]), head_w=c(w["head.weight"]),
                head_b=c(w["head.bias"]), upper=upper)
