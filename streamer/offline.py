"""Offline driver of the detector: score recorded files exactly as the daemon would score them live.

The daemon sees a file's ticks in polls; here they are cut into batches of the same size. The detector's
result does not depend on how ticks are batched (each stream still advances one step per tick, in order),
which is what makes `streamer score` and `streamer replay` + `streamer run` agree.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import ResetRules, Settings
from streamer.detector import OUT_OF_ORDER, Detector
from streamer.model import Forecaster
from streamer.ticks import InvalidTick, Record, RecordError, Tick, TickDecoder, read_records


@dataclass(slots=True)
class ScoredRow:
    line: int
    timestamp: Any  # as written in the input
    stream: str
    value: float
    score: float  # NaN when the tick was skipped
    error: float
    forecast: float
    note: str  # "" when scored normally, "reset" after a state reset, "out_of_order" when skipped


@dataclass
class ScoreSummary:
    rows: int = 0
    scored: int = 0
    out_of_order: int = 0
    invalid: Counter = field(default_factory=Counter)
    resets: Counter = field(default_factory=Counter)


def score_records(records: Iterable[Record], detector: Detector, decoder: TickDecoder, rules: ResetRules,
                  summary: ScoreSummary, skip_invalid: bool = False, batch: int = 2000,
                  source: str = "") -> Iterator[ScoredRow]:
    """Score records in batches of ``batch`` ticks; yields one row per tick, in input order."""
    ts_field = decoder.f.ts_field
    pending: list[tuple[Record, Tick]] = []

    def flush() -> Iterator[ScoredRow]:
        ticks = [tick for _, tick in pending]
        result = detector.process(ticks, rules)
        summary.resets.update(result.resets)
        for i, (record, tick) in enumerate(pending):
            skipped = result.outcome[i] == OUT_OF_ORDER
            summary.out_of_order += int(skipped)
            summary.scored += int(not skipped)
            yield ScoredRow(record.line, record.obj.get(ts_field), tick.stream, tick.value,
                            float(result.score[i]), float(result.error[i]), float(result.forecast[i]),
                            "out_of_order" if skipped else "reset" if result.reset[i] else "")
        pending.clear()

    for record in records:
        summary.rows += 1
        try:
            ticks = decoder.decode_obj(record.obj)
        except InvalidTick as bad:
            if not skip_invalid:
                raise RecordError(f"{source}:{record.line}: invalid tick: {bad}") from None
            summary.invalid[bad.reason] += 1
            continue
        pending.extend((record, tick) for tick in ticks)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()


def score_file(path: Path, settings: Settings, model: Forecaster, skip_invalid: bool = False,
               topic: str = "") -> tuple[list[ScoredRow], ScoreSummary]:
    """Score one recorded file with a fresh detector (the reset rules of ``topic``, if given)."""
    detector = Detector(model, settings.detector)
    decoder = TickDecoder(settings.ticks)
    summary = ScoreSummary()
    unreadable: list[RecordError] | None = [] if skip_invalid else None
    records = read_records(path, settings.ticks, skipped=unreadable)
    rows = list(score_records(records, detector, decoder, settings.resets.for_topic(topic), summary,
                              skip_invalid=skip_invalid, batch=settings.kafka.max_poll_records,
                              source=str(path)))
    if unreadable:
        summary.invalid["unreadable"] += len(unreadable)
        summary.rows += len(unreadable)
    return rows, summary


def score_files(paths: Sequence[Path], settings: Settings, model: Forecaster) -> list[list[ScoredRow]]:
    """Score several files, each exactly as `score_file` would with a fresh detector, in one pass.

    The files' streams are kept apart by a prefix (``"<n>:"``, removed again from the rows) and their rows
    are interleaved, row i of every file in the same batch: one detector and one pass over the files, with
    the same scores as scoring them one by one (streams are independent).
    """
    detector = Detector(model, settings.detector)
    stream_field = settings.ticks.stream_field

    def tagged(n: int, path: Path) -> Iterator[Record]:
        for record in read_records(path, settings.ticks):
            if isinstance(record.obj, dict) and isinstance(record.obj.get(stream_field), str):
                record.obj[stream_field] = f"{n}:{record.obj[stream_field]}"
            yield record

    merged = (record for group in zip_longest(*(tagged(n, p) for n, p in enumerate(paths)))
              for record in group if record is not None)
    rows: list[list[ScoredRow]] = [[] for _ in paths]
    for row in score_records(merged, detector, TickDecoder(settings.ticks), settings.resets.for_topic(""),
                             ScoreSummary(), batch=settings.kafka.max_poll_records):
        n, row.stream = row.stream.split(":", 1)
        rows[int(n)].append(row)
    return rows


def write_scores_csv(rows: list[ScoredRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["timestamp", "stream", "value", "anomaly_score", "error", "forecast", "note"])
        for r in rows:
            out.writerow([r.timestamp, r.stream, repr(r.value), _fmt(r.score), _fmt(r.error), _fmt(r.forecast),
                          r.note])


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.9g}"


def plot_scores(rows: list[ScoredRow], path: Path, threshold: float) -> None:
    """Per stream: values with the forecast, the score with the threshold, alarms marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = sorted({r.stream for r in rows})
    fig, axes = plt.subplots(len(streams) * 2, 1, figsize=(14, 3.2 * len(streams)), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(streams)})
    for k, stream in enumerate(streams):
        mine = [r for r in rows if r.stream == stream]
        x = np.arange(len(mine))
        values = np.array([r.value for r in mine])
        scores = np.array([r.score for r in mine])
        top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
        top.plot(x, values, lw=0.8, label="value")
        top.plot(x, [r.forecast for r in mine], lw=0.8, alpha=0.7, label="forecast")
        alarms = scores >= threshold
        top.scatter(x[alarms], values[alarms], color="red", s=12, zorder=3, label=f"score ≥ {threshold}")
        for i, r in enumerate(mine):
            if r.note == "reset":
                top.axvline(i, color="grey", ls="--", lw=0.8)
        top.set_title(stream)
        top.legend(loc="upper left", fontsize=8)
        bottom.plot(x, scores, color="purple", lw=0.8)
        bottom.axhline(threshold, color="red", ls=":", lw=0.8)
        bottom.set_ylim(0, 1.02)
        bottom.set_ylabel("score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
