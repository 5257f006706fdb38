"""Synthetic univariate streams: the training corpus of the bundled model, the demo recording, test data.

Every stream is drawn, from its own seeded generator, as a random combination of what monitoring data is
made of: daily and weekly seasonality (smooth, square-ish, business-hours or peaky), trends, random walks,
AR(1) noise (Gaussian or heavy-tailed, sometimes heteroscedastic), counts (Poisson), offsets and scales from
1e-3 to 1e6, rounding to a step, values clipped at zero (flat stretches at night), stale stretches where the
value holds, irregular timing (1 min, 5 min or 1 h sampling, jitter, missing ticks) and, for some streams, a
``segment`` change after which the stream behaves differently (a restart: the detector resets there).

With ``anomalies=True`` a fraction of the streams get *injected, labelled* anomalies (spike bursts, level
shifts, variance changes, spikes, flatlines, dropouts) in their second part; the others stay clean. The clean
signal of a stream does not depend on whether anomalies are injected, so the two versions differ only by the
injections. Nothing here is derived from the Numenta Anomaly Benchmark, which is for evaluation only.

Stream ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: the same seed gives the same streams.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from streamer.config import TickSettings
from streamer.core.ticks import TickDecoder, parse_ts

DEFAULT_START = 1735689600.0  # 2025-01-01T00:00:00Z: long hourly streams still end in the past
INTERVALS = (60.0, 300.0, 3600.0)
INTERVAL_WEIGHTS = (0.5, 0.3, 0.2)
# Injected anomalous streams take these kinds in turn, so any 3 anomalous streams show the first three.
ANOMALY_KINDS = ("spike_burst", "level_shift", "variance_change", "spike", "flatline", "dropout")
SIGNIFICANT_DIGITS = 7  # values are rounded as a sensor would report them (and the files stay small)

# The bundled demo recording (`streamer/data/demo.jsonl.gz`): `demo_series()` returns it with its labels.
DEMO = dict(n_streams=20, length=1500, seed=11, anomalies=True, interval=60.0,
            start=1767225600.0,  # 2026-01-01T00:00:00Z
            anomaly_fraction=0.15, anomaly_after=800, segment_fraction=0.1, regular=True)
DEMO_COMMAND = ("streamer synth --output streamer/data/demo.jsonl.gz --streams 20 --length 1500 --seed 11 "
                "--anomalies --anomaly-fraction 0.15 --anomaly-after 800 --segment-fraction 0.1 "
                "--interval 60 --start 2026-01-01T00:00:00Z --regular")


@dataclass
class Series:
    """One synthetic stream. Anomaly ranges are half-open index ranges ``[start, end)`` into the arrays."""

    name: str
    timestamps: np.ndarray  # float64 epoch seconds, strictly increasing
    values: np.ndarray  # float64
    anomalies: list[tuple[int, int]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the kind of each anomaly range
    segments: np.ndarray | None = None  # int segment id per tick; None: the stream carries no segment field

    def labels(self) -> np.ndarray:
        """A boolean mask of the ticks inside an injected anomaly."""
        mask = np.zeros(len(self.values), dtype=bool)
        for start, end in self.anomalies:
            mask[start:end] = True
        return mask

    def windows(self) -> list[dict]:
        """The anomaly ranges as inclusive timestamp windows (for a labels file)."""
        return [{"start": float(self.timestamps[a]), "end": float(self.timestamps[b - 1]), "kind": kind}
                for (a, b), kind in zip(self.anomalies, self.kinds)]


def generate(n_streams: int, length: int, seed: int, anomalies: bool = False, *,
             interval: float | None = None, start: float = DEFAULT_START, anomaly_fraction: float = 0.3,
             anomaly_after: int | None = None, segment_fraction: float = 0.0,
             regular: bool = False) -> list[Series]:
    """Draw ``n_streams`` streams of ``length`` ticks each.

    interval: seconds between ticks (None: 1 min, 5 min or 1 h at random per stream).
    anomalies: inject labelled anomalies into ``round(anomaly_fraction * n_streams)`` streams (at least one),
        each starting at or after tick ``anomaly_after`` (default: half the length).
    segment_fraction: this fraction of the streams (chosen among the clean ones) change ``segment`` once.
    regular: exact spacing from ``start`` (no jitter, no missing ticks, no random phase).
    """
    if n_streams < 0 or length < 2:
        raise ValueError("need n_streams >= 0 and length >= 2")
    pick = np.random.default_rng([seed, 0x5EED]).permutation(n_streams)
    n_anomalous = min(n_streams, max(1, round(anomaly_fraction * n_streams))) if anomalies else 0
    n_segmented = min(n_streams - n_anomalous, round(segment_fraction * n_streams))
    kind_of = {int(i): ANOMALY_KINDS[k % len(ANOMALY_KINDS)] for k, i in enumerate(pick[:n_anomalous])}
    segmented = {int(i) for i in pick[n_anomalous:n_anomalous + n_segmented]}
    after = length // 2 if anomaly_after is None else anomaly_after
    return [_stream(i, length, seed, interval, start, kind_of.get(i), after, i in segmented, regular)
            for i in range(n_streams)]


def demo_series() -> list[Series]:
    """The streams of the bundled demo recording, with their anomaly labels."""
    return generate(**DEMO)


# --- one stream ------------------------------------------------------------------------------------------


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _ar1(rng: np.random.Generator, n: int, phi: float, heavy_df: float | None) -> np.ndarray:
    """AR(1) noise with unit marginal standard deviation (Student-t innovations when ``heavy_df``)."""
    if heavy_df is None:
        eps = rng.standard_normal(n)
    else:
        eps = rng.standard_t(heavy_df, n) / math.sqrt(heavy_df / (heavy_df - 2.0))
    if phi == 0.0:
        return eps
    eps *= math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    acc = float(eps[0]) / math.sqrt(1.0 - phi * phi)
    for t, e in enumerate(eps.tolist()):
        acc = phi * acc + e if t else acc
        out[t] = acc
    return out


def _timestamps(rng: np.random.Generator, n: int, interval: float | None, start: float,
                regular: bool) -> np.ndarray:
    step = interval if interval is not None else float(rng.choice(INTERVALS, p=INTERVAL_WEIGHTS))
    if regular:
        return start + step * np.arange(n, dtype=np.float64)
    ticks = np.ones(n)
    if rng.random() < 0.3:  # missing ticks
        missing = rng.random(n) < _loguniform(rng, 0.001, 0.03)
        ticks[missing] += rng.integers(1, 5, size=int(missing.sum()))
    ticks[0] = 0.0
    ts = start + step * (np.cumsum(ticks) + float(rng.integers(0, 100)))
    if rng.random() < 0.3:  # jitter: always strictly increasing since it stays under half an interval
        ts += rng.uniform(-0.2, 0.2, n) * step
    return np.round(ts, 3)


def _season(rng: np.random.Generator, ts: np.ndarray) -> np.ndarray:
    """A daily pattern in [-1, 1]-ish units, optionally modulated by the day of the week."""
    local = ts + rng.integers(-12, 13) * 3600.0  # a random time zone
    phase = 2 * math.pi * (local % 86400.0) / 86400.0 + rng.uniform(0, 2 * math.pi)
    shape = rng.choice(["sine", "square", "business", "peak"], p=[0.4, 0.2, 0.2, 0.2])
    if shape == "sine":
        out = np.sin(phase) + rng.uniform(0, 0.5) * np.sin(2 * phase + rng.uniform(0, 2 * math.pi))
    elif shape == "square":
        out = np.tanh(rng.uniform(2, 20) * np.sin(phase))
    elif shape == "business":  # high between ~9 and ~17 local, with soft edges
        hour = (local % 86400.0) / 3600.0
        width = rng.uniform(0.3, 1.5)
        out = 2 / (1 + np.exp(-(hour - 9) / width)) / (1 + np.exp((hour - 17) / width)) - 1
    else:  # one sharp daily peak
        out = 2 * np.exp(rng.uniform(2, 8) * (np.cos(phase) - 1)) - 1
    if rng.random() < 0.4:
        weekday = ((local // 86400.0).astype(np.int64) + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
        factor = rng.uniform(0.1, 0.8)
        out = np.where(weekday >= 5, factor * (out + 1) - 1, out)
    return out


def _stream(i: int, n: int, seed: int, interval: float | None, start: float, kind: str | None, after: int,
            segmented: bool, regular: bool) -> Series:
    rng = np.random.default_rng([seed, i])
    ts = _timestamps(rng, n, interval, start, regular)
    tags = []

    # The signal in "units" of its noise (noise std = 1 unit).
    phi = float(rng.uniform(0.0, 0.95)) if rng.random() < 0.6 else 0.0
    heavy = float(rng.uniform(3.0, 8.0)) if rng.random() < 0.3 else None
    noise = _ar1(rng, n, phi, heavy)
    signal = np.zeros(n)
    amplitude = 0.0
    if rng.random() < 0.6:
        amplitude = _loguniform(rng, 0.5, 40.0)
        season = _season(rng, ts)
        signal += amplitude * season
        if rng.random() < 0.3:  # noisier when busier
            noise *= 0.3 + 0.7 * (season + 1)
        tags.append("seasonal")
    if rng.random() < 0.25:
        signal += rng.normal(0, 6.0) * np.linspace(0, 1, n)
        tags.append("trend")
    if rng.random() < 0.3:
        walk = np.cumsum(rng.normal(0, _loguniform(rng, 0.03, 0.5), n))
        if rng.random() < 0.5:  # mean-reverting walk: an AR(1) with phi close to 1
            walk = _ar1(rng, n, float(rng.uniform(0.98, 0.999)), None) * _loguniform(rng, 1.0, 10.0)
        signal += walk
        tags.append("walk")
    signal += noise
    if segmented:  # a restart: another level and gain after the change, announced by `segment`
        change = int(rng.integers(n // 4, 3 * n // 4))
        gain = _loguniform(rng, 0.5, 2.0)
        signal[change:] = gain * signal[change:] + rng.choice([-1, 1]) * rng.uniform(4, 12)
        segments = np.where(np.arange(n) < change, 1, 2)
    else:
        segments = None

    # Units -> values: scale, offset, counts, clipping, rounding, stale stretches.
    counts = rng.random() < 0.12
    if counts:  # event counts per tick: Poisson around a positive rate following the signal
        rate = _loguniform(rng, 0.5, 300.0)
        spread = signal.std() + 1e-9
        values = rng.poisson(rate * np.exp(0.6 * signal / spread)).astype(np.float64)
        scale = math.sqrt(rate)
        tags.append("counts")
    else:
        scale = 10.0 ** rng.uniform(-3.0, 4.0)
        where = rng.random()
        if where < 0.6:  # positive, well above zero (sometimes far: Kelvins, counters)
            offset = (-signal.min() + _loguniform(rng, 1.0, 3e3)) * scale
        elif where < 0.85:  # around zero
            offset = 0.0
        else:
            offset = -_loguniform(rng, 1.0, 1e3) * scale
        values = offset + scale * signal
    nonneg = not counts and rng.random() < 0.25
    if nonneg:  # a level that bottoms out: flat at zero while idle
        values = np.maximum(values - np.percentile(values, rng.uniform(2.0, 30.0)), 0.0)
        tags.append("floored")
    step = None
    if not counts and rng.random() < 0.35:
        step = 10.0 ** math.floor(math.log10(scale * rng.uniform(0.05, 3.0)))
        values = np.round(values / step) * step
        tags.append("quantised")
    if rng.random() < 0.08:  # stale stretches: the value holds while the source stops updating
        for _ in range(int(rng.integers(1, 4))):
            a = int(rng.integers(0, n - 1))
            b = min(n, a + int(rng.integers(5, 60)))
            values[a:b] = values[a]

    series = Series(f"synth-{i:04d}-{'-'.join(tags) or 'noise'}", ts, values, segments=segments)
    if kind is not None:
        _inject(np.random.default_rng([seed, i, 1]), series, kind, after, nonneg or counts,
                1.0 if counts else step)
    series.values = _round_significant(series.values)
    return series


def _inject(rng: np.random.Generator, s: Series, kind: str, after: int, nonneg: bool,
            step: float | None) -> None:
    """Inject one clearly visible anomaly of ``kind`` at or after tick ``after`` and label it."""
    v = s.values
    n = len(v)
    after = min(max(after, 1), n - 2)
    jump = float(np.std(np.diff(v))) + 1e-12  # the tick-to-tick variability a forecaster sees
    spread = float(np.percentile(v, 99) - np.percentile(v, 1))
    magnitude = rng.uniform(8, 15) * jump + rng.uniform(0.3, 0.6) * spread + 1e-9 * max(1.0, abs(v.mean()))
    sign = 1.0 if nonneg or rng.random() < 0.6 else -1.0
    at = int(rng.integers(after, max(after + 1, after + (n - after) // 3)))
    if kind == "spike":
        end = at + int(rng.integers(1, 3))
        v[at:end] += sign * magnitude
    elif kind == "spike_burst":
        end = min(n, at + int(rng.integers(8, 30)))
        hits = rng.random(end - at) < 0.6
        hits[0] = True
        v[at:end] += hits * rng.choice([-1.0, 1.0], end - at) * rng.uniform(0.4, 1.0, end - at) * magnitude
    elif kind == "level_shift":
        v[at:] += sign * magnitude
        end = min(n, at + max(20, n // 30))  # labelled around its onset; the new level is the new normal
    elif kind == "variance_change":
        end = min(n, at + int(rng.integers(100, 300)))
        v[at:end] += rng.normal(0.0, rng.uniform(4, 8) * jump + 0.1 * spread, end - at)
    elif kind == "flatline":
        end = min(n, at + int(rng.integers(80, 200)))
        v[at:end] = v[at]
    elif kind == "dropout":
        end = min(n, at + int(rng.integers(10, 60)))
        v[at:end] = 0.0 if v.min() > 0 else v.min() - magnitude
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}")
    if step is not None:
        v[:] = np.round(v / step) * step
    if nonneg:
        np.maximum(v, 0.0, out=v)
    s.anomalies.append((at, end))
    s.kinds.append(kind)


def _round_significant(values: np.ndarray) -> np.ndarray:
    return np.array([float(f"{x:.{SIGNIFICANT_DIGITS}g}") for x in values.tolist()], dtype=np.float64)


# --- files ------------------------------------------------------------------------------------------------


def write_jsonl_gz(series: list[Series], path: Path, fields: TickSettings | None = None) -> int:
    """Write the streams as one recorded file in the daemon's wire format, interleaved by time.

    Ticks are ordered by timestamp (ties by stream order); a stream with segments carries ``segment`` on
    every tick. Gzip-compressed (byte-reproducibly) when the name ends in ``.gz``. Returns the tick count.
    """
    encoder = TickDecoder(fields or TickSettings())
    path = Path(path)
    ts = np.concatenate([s.timestamps for s in series]) if series else np.zeros(0)
    which = np.concatenate([np.full(len(s.values), k) for k, s in enumerate(series)]) if series else ts
    index = np.concatenate([np.arange(len(s.values)) for s in series]) if series else ts
    order = np.lexsort((which, ts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
               if path.name.endswith(".gz") else raw)
        for start in range(0, len(order), 10_000):  # in blocks: bounded memory for large corpora
            block = order[start:start + 10_000]
            lines = []
            for k, j in zip(which[block].tolist(), index[block].tolist()):
                s = series[k]
                segment = None if s.segments is None else int(s.segments[j])
                lines.append(encoder.encode(s.name, float(s.timestamps[j]), float(s.values[j]), segment))
                lines.append(b"\n")
            out.write(b"".join(lines))
        if out is not raw:
            out.close()
    tmp.replace(path)
    return len(order)


def write_labels(series: list[Series], path: Path) -> None:
    """A JSON object: stream name -> list of ``{"start", "end", "kind"}`` (inclusive epoch-second windows)."""
    labels = {s.name: s.windows() for s in series}
    Path(path).write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")


# --- the `streamer synth` command --------------------------------------------------------------------------


def _timestamp_arg(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return parse_ts(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="recorded file to write (.jsonl or .jsonl.gz)")
    parser.add_argument("--streams", type=int, default=20, help="number of streams (default 20)")
    parser.add_argument("--length", type=int, default=1500, help="ticks per stream (default 1500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--anomalies", action="store_true", help="inject labelled anomalies into some streams")
    parser.add_argument("--anomaly-fraction", type=float, default=0.3,
                        help="fraction of the streams that get an anomaly with --anomalies (default 0.3)")
    parser.add_argument("--anomaly-after", type=int, default=None,
                        help="anomalies start at or after this tick (default: half the length)")
    parser.add_argument("--segment-fraction", type=float, default=0.0,
                        help="fraction of the streams whose segment changes once (default 0)")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between ticks (default: 60, 300 or 3600 at random per stream)")
    parser.add_argument("--start", type=_timestamp_arg, default=DEFAULT_START,
                        help="first timestamp, epoch seconds or ISO-8601 (default 2025-01-01T00:00:00Z)")
    parser.add_argument("--regular", action="store_true",
                        help="exact spacing: no jitter, no missing ticks, every stream starts at --start")
    parser.add_argument("--labels", type=Path, default=None,
                        help="also write the anomaly windows as JSON to this file")


def run(args: argparse.Namespace, settings) -> int:
    series = generate(args.streams, args.length, args.seed, args.anomalies, interval=args.interval,
                      start=args.start, anomaly_fraction=args.anomaly_fraction,
                      anomaly_after=args.anomaly_after, segment_fraction=args.segment_fraction,
                      regular=args.regular)
    count = write_jsonl_gz(series, args.output, settings.ticks)
    if args.labels is not None:
        write_labels(series, args.labels)
    anomalous = [f"{s.name} ({', '.join(s.kinds)})" for s in series if s.anomalies]
    shown = "; ".join(anomalous[:5]) + ("; ..." if len(anomalous) > 5 else "")
    first = datetime.fromtimestamp(args.start, timezone.utc).isoformat()
    print(f"wrote {count} ticks of {len(series)} streams from {first} to {args.output}"
          + (f"; anomalies in {len(anomalous)}: {shown}" if anomalous else ""), file=sys.stderr)
    return 0

