"""The use-case examples' report (examples/*/report.py): score a prepared feed with ``streamer score``, the
command a user runs, then put the detector's alarms and the median/MAD rule's side by side (`incidents`).

Scoring goes through the command line on purpose: the figures are those of the detector core the daemon
runs, with the example's own config.toml, and a reader can rerun the exact command printed.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.config import load_settings
from streamer.core.ticks import InvalidTick, parse_ts
from streamer.devtools.faults import Fault, read_faults
from streamer.devtools.incidents import KindReport, Report, median_mad_rule, merge, report
from streamer.offline.score import NEW_STREAM_NOTES

THRESHOLD = 0.30  # the README's recommended alert threshold (`streamer evaluate` on NAB)


@dataclass
class Scored:
    """One stream's rows of a scores CSV, in file order."""

    ts: np.ndarray  # epoch seconds (the row's own timestamp; NaN where it had none that parses)
    value: np.ndarray
    score: np.ndarray  # NaN: skipped (out of order, invalid)
    note: list[str]  # `streamer score`'s: "", "reset:<reason>", "out_of_order", "invalid:<reason>"

    @property
    def warm(self) -> np.ndarray:
        """Per row, how many ticks the stream had scored since it started, this one included: since its first
        tick or its last explicit or segment reset (`NEW_STREAM_NOTES`: a new stream, a warm-up again); a
        session or gap reset restarts the LSTM's state only, and the count goes on."""
        count, out = 0, np.zeros(len(self.note), dtype=np.int64)
        for i, note in enumerate(self.note):
            count = 1 if note in NEW_STREAM_NOTES else count + (0 if math.isnan(self.score[i]) else 1)
            out[i] = count
        return out


def score(config: Path, data: Path, output: Path, plot: Path | None = None, threshold: float = THRESHOLD,
          echo: Callable[[str], None] = print) -> dict[str, Scored]:
    """``streamer --config CONFIG score DATA --output OUTPUT [--plot PLOT]``, then its rows per stream."""
    command = [sys.executable, "-m", "streamer", "--config", str(config), "score", str(data), "--output", str(output)]
    if plot is not None:
        command += ["--plot", str(plot), "--threshold", str(threshold)]
    echo("$ " + " ".join(["streamer", *map(_shown, command[3:])]))
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    echo(done.stdout.strip())
    return read_scores(output, load_settings(config).ticks.zone)


def score_both(config: Path, out: Path) -> tuple[dict[str, list[Fault]], dict[str, Scored], dict[str, Scored]]:
    """The faults `prepare.py` wrote into ``out``, and the faulted and untouched feeds scored with ``config``."""
    faults = read_faults(out / "faults.json")
    faulted = score(config, out / "faulted.jsonl", out / "faulted_scores.csv")
    clean = score(config, out / "clean.jsonl", out / "clean_scores.csv")
    return faults, faulted, clean


def _shown(arg: str) -> str:
    """A path under the working directory relative to it, as a user would type it."""
    path = Path(arg)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else arg


def read_scores(path: Path, zone) -> dict[str, Scored]:
    rows: dict[str, list[tuple[float, float, float, str]]] = {}
    with open(path, newline="") as handle:
        for r in csv.DictReader(handle):
            try:
                ts = parse_ts(r["timestamp"] if not _number(r["timestamp"]) else float(r["timestamp"]), zone)
            except InvalidTick:
                ts = math.nan
            rows.setdefault(r["stream"], []).append((ts, _float(r["value"]), _float(r["anomaly_score"]), r["note"]))
    return {stream: Scored(np.array([x[0] for x in got]), np.array([x[1] for x in got]),
                           np.array([x[2] for x in got]), [x[3] for x in got]) for stream, got in rows.items()}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _float(text: str) -> float:
    return float(text) if text else math.nan


def arrival(ts: np.ndarray) -> np.ndarray:
    """The time each row reached the detector: the latest timestamp seen up to it (a late row arrives then)."""
    return np.fmax.accumulate(ts)


def compare(scored: Mapping[str, Scored], faults: Mapping[str, Sequence[Fault]], slack_s: float,
            threshold: float = THRESHOLD, mad_window: int = 60, mad_z: float = 8.0) -> tuple[Report, Report]:
    """The detector's report and the median/MAD rule's over all streams (a stream without faults counts
    only its alarms)."""
    detector, rule = [], []
    for stream, s in scored.items():
        at = arrival(s.ts)
        labels = faults.get(stream, [])
        detector.append(report(at, s.score, threshold, labels, slack_s))
        rule.append(report(at, median_mad_rule(s.ts, s.value, mad_window, mad_z), 0.5, labels, slack_s))
    return merge(detector), merge(rule)


def _delay(seconds: float, unit: float, name: str) -> str:
    return "–" if math.isnan(seconds) else f"{seconds / unit:.0f} {name}"


def fault_table(detector: Report, rule: Report, kinds: Sequence[str], delay_unit: tuple[float, str] = (60, "min"),
                notes: Mapping[str, str] | None = None) -> str:
    """Markdown: per fault kind, caught / injected, recall and median (max) delay, detector then rule."""
    unit, name = delay_unit

    def delays(k: KindReport) -> str:
        return f"{_delay(k.median_delay_s, unit, name)} ({_delay(k.max_delay_s, unit, name)})"

    header = ["fault", "injected", "streamer: caught", "delay median (max)", "median/MAD rule: caught",
              "delay median (max)"] + (["note"] if notes else [])
    rows = []
    for kind in kinds:
        d, r = detector.kinds.get(kind), rule.kinds.get(kind)
        if d is not None and r is not None:
            rows.append([kind, str(d.n), f"{d.caught} ({d.recall:.0%})", delays(d), f"{r.caught} ({r.recall:.0%})",
                         delays(r)] + ([notes.get(kind, "")] if notes else []))
    caught = [sum(k.caught for k in x.kinds.values()) for x in (detector, rule)]
    rows.append(["**all**", str(sum(k.n for k in detector.kinds.values())), str(caught[0]), "", str(caught[1]), ""]
                + ([""] if notes else []))
    rows.append(["precision (alarm episodes on a fault / all)", "", _share(detector), "", _share(rule), ""]
                + ([""] if notes else []))
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])


def _share(r: Report) -> str:
    good = r.episodes - r.false_alarm_episodes
    return f"{good}/{r.episodes} = {r.precision:.0%}" if r.episodes else "no alarm"
