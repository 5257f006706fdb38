"""Offline driver of the detector: score recorded files exactly as the daemon would score them live.

The daemon sees a file's ticks in polls; here they are cut into batches of the same size. The detector's
result does not depend on how ticks are batched (each stream still advances one step per tick, in order),
which is what makes `streamer score` and `streamer replay` + `streamer run` agree.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import ResetRules, Settings
from streamer.core import kernel
from streamer.core.detector import OUT_OF_ORDER, RESET_REASONS, Detector
from streamer.core.model import Forecaster
from streamer.core.ticks import InvalidTick, Record, RecordError, Tick, TickDecoder, read_records


@dataclass(slots=True)
class ScoredRow:
    line: int
    timestamp: Any  # as written in the input
    stream: str  # "" for an invalid row without a usable stream name
    value: float  # NaN for an invalid row
    score: float  # NaN when the tick was skipped (out of order, invalid)
    error: float
    forecast: float
    note: str  # "" scored normally, "reset:<reason>" after a reset (`RESET_NOTES`), "out_of_order" or
    # "invalid:<reason>" skipped
    device: str = ""  # the device of a channel of a multivariate tick (its row's ``stream``), else ""
    device_score: float = math.nan  # that reading's device score (`streamer.core.devices`); NaN: none
    evidence: str = ""  # the kind of evidence that made a score above 0 (`kernel.EVIDENCE_KINDS`), else ""


@dataclass
class ScoreSummary:
    rows: int = 0  # rows of the file (a multivariate row is one row and several ticks)
    scored: int = 0  # ticks scored
    out_of_order: int = 0  # ticks skipped: not later than their stream's last tick
    invalid: Counter = field(default_factory=Counter)  # rows skipped, by reason
    resets: Counter = field(default_factory=Counter)  # by reason (`score_file` only; not split per file)
    examples: list[str] = field(default_factory=list)  # the first `EXAMPLES` invalid rows, "file:line: why"
    unreadable: str | None = None  # `score_files`: why the file could not be read (then it has no rows)


EXAMPLES = 5
# The note of a tick scored after a reset, by reset code (`BatchResult.reset_code`): "reset:explicit" and
# "reset:segment" start a new stream (a warm-up again), "reset:session" and "reset:gap" restart its LSTM's
# state only (it keeps its calibration and is scored at once; README "Resets").
RESET_NOTES = ("",) + tuple(f"reset:{reason}" for reason in RESET_REASONS)
NEW_STREAM_NOTES = frozenset(RESET_NOTES[1:kernel.NEW_STREAM + 1])


def score_records(records: Iterable[Record], detector: Detector, decoder: TickDecoder, rules: ResetRules,
                  summary: ScoreSummary, strict: bool = False, batch: int = 2000,
                  source: str = "", topic: str = "") -> Iterator[ScoredRow]:
    """Score records in batches of ``batch`` ticks; yields one row per tick, in input order.

    What the daemon skips is skipped and kept as a row with an empty score: a tick not later than its
    stream's last one (note ``out_of_order``) and a row that is not a valid tick (note ``invalid:<reason>``,
    the daemon's reasons, counted in ``summary.invalid``). ``strict`` raises `RecordError` naming the file
    and line at the first invalid row instead. ``topic``: the detector scores as for that topic's ticks.
    """
    for _, row in _score(((0, record) for record in records), detector, decoder, rules, [summary], [source],
                         strict, batch, topic):
        yield row


def _score(records: Iterable[tuple[int, Record]], detector: Detector, decoder: TickDecoder, rules: ResetRules,
           summaries: Sequence[ScoreSummary], sources: Sequence[str], strict: bool,
           batch: int, topic: str = "") -> Iterator[tuple[int, ScoredRow]]:
    """`score_records` of records tagged with the index of their file (into ``summaries`` and ``sources``)."""
    ts_field, stream_field = decoder.f.ts_field, decoder.f.stream_field
    pending: list[tuple[int, Record, Tick | None, str]] = []  # (file, record, tick, why invalid) in order
    ticks: list[Tick] = []

    def flush() -> Iterator[tuple[int, ScoredRow]]:
        result = detector.process(ticks, rules, topic=topic) if ticks else None
        if result is not None and len(summaries) == 1:
            summaries[0].resets.update(result.resets)
        i = 0
        for n, record, tick, reason in pending:
            if tick is None:
                obj = record.obj if isinstance(record.obj, dict) else {}
                stream = obj.get(stream_field)
                yield n, ScoredRow(record.line, obj.get(ts_field), stream if isinstance(stream, str) else "",
                                   math.nan, math.nan, math.nan, math.nan, f"invalid:{reason}")
                continue
            skipped = result.outcome[i] == OUT_OF_ORDER
            summaries[n].out_of_order += int(skipped)
            summaries[n].scored += int(not skipped)
            yield n, ScoredRow(record.line, record.obj.get(ts_field), tick.stream, tick.value,
                               float(result.score[i]), float(result.error[i]), float(result.forecast[i]),
                               "out_of_order" if skipped else RESET_NOTES[result.reset_code[i]],
                               tick.device or "", float(result.device_score[i]),
                               kernel.EVIDENCE_KINDS[result.evidence[i]])
            i += 1
        pending.clear()
        ticks.clear()

    for n, record in records:
        summary = summaries[n]
        summary.rows += 1
        problem = record.error
        if problem is None:
            try:
                decoded = decoder.decode_obj(record.obj)
            except InvalidTick as bad:
                problem = RecordError(f"{sources[n]}:{record.line}: invalid tick: {bad}", bad.reason)
            else:
                pending.extend((n, record, tick, "") for tick in decoded)
                ticks.extend(decoded)
        if problem is not None:
            if strict:
                raise problem
            summary.invalid[problem.reason] += 1
            if len(summary.examples) < EXAMPLES:
                summary.examples.append(str(problem))
            pending.append((n, record, None, problem.reason))
        if len(ticks) >= batch:
            yield from flush()
    if pending:
        yield from flush()


def score_file(path: Path, settings: Settings, model: Forecaster, strict: bool = False,
               topic: str = "") -> tuple[list[ScoredRow], ScoreSummary]:
    """Score one recorded file with a fresh detector (the reset rules and detector settings of ``topic``, if
    given, as the daemon scores that topic's ticks).

    Rows the daemon would skip are counted, kept as rows with an empty score and skipped (see
    `score_records`); ``strict`` makes the first invalid row an error. A file that cannot be read at all
    raises `RecordError` naming it.
    """
    detector = Detector(model, settings.detector)
    decoder = TickDecoder(settings.ticks)
    summary = ScoreSummary()
    records = read_records(path, settings.ticks, lenient=True)
    rows = list(score_records(records, detector, decoder, settings.resets.for_topic(topic), summary,
                              strict=strict, batch=settings.kafka.max_poll_records, source=str(path), topic=topic))
    return rows, summary


def score_files(paths: Sequence[Path], settings: Settings, model: Forecaster,
                strict: bool = False) -> list[tuple[list[ScoredRow], ScoreSummary]]:
    """Score several files, each exactly as `score_file` would with a fresh detector, in one pass.

    The files' streams are kept apart by a prefix (``"<n>:"``, removed again from the rows) and their rows
    are interleaved, row i of every file in the same batch: one detector and one pass over the files, with
    the same scores as scoring them one by one (streams are independent).

    A file that cannot be read (`RecordError`: not UTF-8, a broken header, ...) comes back with no rows and
    the reason in its summary's ``unreadable``, the others are scored; ``strict`` raises instead, and also
    at the first invalid row.
    """
    detector = Detector(model, settings.detector)
    stream_field = settings.ticks.stream_field
    summaries = [ScoreSummary() for _ in paths]

    def tagged(n: int, path: Path) -> Iterator[tuple[int, Record]]:
        try:
            for record in read_records(path, settings.ticks, lenient=True):
                stream = record.obj.get(stream_field) if isinstance(record.obj, dict) else None
                if isinstance(stream, str) and stream:  # "" stays invalid, as the decoder says
                    record.obj[stream_field] = f"{n}:{stream}"
                yield n, record
        except RecordError as exc:
            if strict:
                raise
            summaries[n].unreadable = str(exc)

    merged = (item for group in zip_longest(*(tagged(n, p) for n, p in enumerate(paths)))
              for item in group if item is not None)
    rows: list[list[ScoredRow]] = [[] for _ in paths]
    for n, row in _score(merged, detector, TickDecoder(settings.ticks), settings.resets.for_topic(""),
                         summaries, [str(p) for p in paths], strict, settings.kafka.max_poll_records):
        tag = f"{n}:"
        if row.stream.startswith(tag):
            row.stream = row.stream[len(tag):]
        if row.device.startswith(tag):
            row.device = row.device[len(tag):]
        rows[n].append(row)
    for n, summary in enumerate(summaries):
        if summary.unreadable is not None:  # what was read before the error is not a file's worth of rows
            rows[n], summaries[n] = [], ScoreSummary(unreadable=summary.unreadable)
    return list(zip(rows, summaries))


def write_scores_csv(rows: list[ScoredRow], path: Path) -> None:
    """One line per tick; a channel of a multivariate tick also names its device and the reading's device
    score (the same on each of the reading's channels), empty for other ticks; ``evidence`` names the kind of
    evidence behind a score above 0 (forecast, time_of_day, range), empty for a score of 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["timestamp", "stream", "value", "anomaly_score", "error", "forecast", "note", "device",
                      "device_score", "evidence"])
        for r in rows:
            out.writerow([r.timestamp, r.stream, "" if math.isnan(r.value) else repr(r.value), _fmt(r.score),
                          _fmt(r.error), _fmt(r.forecast), r.note, r.device, _fmt(r.device_score), r.evidence])


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.9g}"


def _readings(rows: list[ScoredRow], device: str) -> list[list[ScoredRow]]:
    """The rows of ``device``'s readings: runs of its rows with one timestamp, as `devices.tick_scores` groups
    them (the channels of one ``values`` tick are consecutive rows)."""
    out: list[list[ScoredRow]] = []
    previous = None
    for i, r in enumerate(rows):
        if r.device != device:
            continue
        if previous is None or previous != (i - 1, r.timestamp):
            out.append([])
        out[-1].append(r)
        previous = (i, r.timestamp)
    return out


def _reset_line(notes: set[str]) -> dict:
    """A reset's line in a plot: dashed where a new stream starts, dotted and lighter where only the LSTM's
    state restarts (a session or a gap)."""
    if notes & NEW_STREAM_NOTES:
        return {"color": "grey", "ls": "--", "lw": 0.8}
    return {"color": "silver", "ls": ":", "lw": 0.8}


def plot_scores(rows: list[ScoredRow], path: Path, threshold: float, dpi: float = 90, colors: int = 0) -> None:
    """Per device (multivariate ticks): its device score with the threshold, alarms marked; then per stream:
    values with the forecast, the score with the threshold, alarms marked; resets as vertical lines
    (`_reset_line`). ``dpi``: the PNG's resolution (the figure is 14 inches wide, 1.6-2 inches per panel);
    ``colors``: if set, the PNG is stored with a palette of at most that many colours (2-256; a plot has few,
    so the file is much smaller), else in full colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.note.startswith("invalid:")]  # nothing to draw: no value, no score
    devices = sorted({r.device for r in rows} - {""})
    streams = sorted({r.stream for r in rows}, key=lambda name: (name.split("/", 1)[0] not in devices, name))
    panels = len(devices) + 2 * len(streams)
    fig, axes = plt.subplots(panels, 1, figsize=(14, 1.6 * panels), squeeze=False,
                             gridspec_kw={"height_ratios": [1.2] * len(devices) + [2, 1] * len(streams)})
    for k, device in enumerate(devices):
        readings = _readings(rows, device)
        x = np.arange(len(readings))
        scores = np.array([next((r.device_score for r in reading if not math.isnan(r.device_score)), math.nan)
                           for reading in readings])  # the same on each scored channel of a reading
        ax = axes[k, 0]
        ax.plot(x, scores, color="darkgreen", lw=0.9)
        alarms = scores >= threshold
        ax.scatter(x[alarms], scores[alarms], color="red", s=14, zorder=3, label=f"device score ≥ {threshold}")
        for i, reading in enumerate(readings):
            notes = {r.note for r in reading if r.note.startswith("reset:")}
            if notes:
                ax.axvline(i, **_reset_line(notes))
        ax.axhline(threshold, color="red", ls=":", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("device score")
        ax.set_title(f"device {device}: its {len({r.stream for r in rows if r.device == device})} channels "
                     "combined (Bonferroni)")
        ax.legend(loc="upper left", fontsize=8)
    for k, stream in enumerate(streams):
        mine = [r for r in rows if r.stream == stream]
        x = np.arange(len(mine))
        values = np.array([r.value for r in mine])
        scores = np.array([r.score for r in mine])
        top, bottom = axes[len(devices) + 2 * k, 0], axes[len(devices) + 2 * k + 1, 0]
        top.plot(x, values, lw=0.8, label="value")
        top.plot(x, [r.forecast for r in mine], lw=0.8, alpha=0.7, label="forecast")
        alarms = scores >= threshold
        top.scatter(x[alarms], values[alarms], color="red", s=12, zorder=3, label=f"score ≥ {threshold}")
        for i, r in enumerate(mine):
            if r.note.startswith("reset:"):
                top.axvline(i, **_reset_line({r.note}))
        top.set_title(stream)
        top.legend(loc="upper left", fontsize=8)
        bottom.plot(x, scores, color="purple", lw=0.8)
        bottom.axhline(threshold, color="red", ls=":", lw=0.8)
        bottom.set_ylim(0, 1.02)
        bottom.set_ylabel("score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    if colors:
        from PIL import Image  # matplotlib's own dependency

        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=dpi, format="png")
        buffer.seek(0)
        with Image.open(buffer) as image:
            image.convert("RGB").quantize(colors, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    else:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
