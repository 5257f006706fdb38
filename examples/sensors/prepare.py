"""Turn the SKAB pump rig's raw files into the daemon's input: one multivariate tick per row, and the labels.

    python -m examples.sensors.prepare OUT [--skab ../shared/real/sensors/skab] [--device skab-pump]

SKAB (waico/SKAB, GPL-3.0) recorded one water-circulation rig, eight sensors at 1 Hz, in experiments of
about 19 minutes: the anomaly-free run, and 16 runs (``valve1/<n>.csv``) in which the operators closed the
outlet valve for about 400 s, flagging those rows ``anomaly`` (and the transitions ``changepoint``). The
data stays where it is; this writes into OUT (never into the repository):

- ``ticks.jsonl``: every row as ``{"stream": DEVICE, "ts": epoch seconds, "values": {8 sensors},
  "segment": EXPERIMENT}``, the anomaly-free run first, then the valve experiments in time order. One
  stream for the rig, so its channels are ``DEVICE/<sensor>`` and its device score is under DEVICE; the
  segment changes at each new experiment, which resets the rig's state (counted as a ``segment`` reset):
  an experiment is a new run of the rig, scored as a fresh stream would be.
- ``experiments/<experiment>.jsonl``: the same ticks, one file per experiment (to score or plot one; a
  reset makes a stream identical to a fresh one, so its scores equal its slice of ``ticks.jsonl``).
- ``labels.json``: per experiment, its file, first and last tick time, rows, the operators' anomaly windows
  ``[start_ts, end_ts]`` (inclusive runs of flagged rows) and change-point times.

The rows' times have no zone: they are read as UTC (only the time-of-day profile looks at the clock).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SKAB = Path(__file__).resolve().parents[3] / "shared" / "real" / "sensors" / "skab"
DEVICE = "skab-pump"
FLAGS = ("anomaly", "changepoint")


@dataclass
class Experiment:
    name: str  # the segment: "anomaly-free", "valve1/0", ...
    source: str  # the file, relative to the SKAB folder
    rows: int
    first_ts: float
    last_ts: float
    anomalies: list[tuple[float, float]] = field(default_factory=list)  # inclusive [start_ts, end_ts]
    changepoints: list[float] = field(default_factory=list)


def experiment_files(skab: Path) -> list[tuple[str, Path]]:
    """(experiment name, file) of the anomaly-free run and the valve1 experiments, in the order recorded."""
    files = [("anomaly-free", skab / "anomaly-free" / "anomaly-free.csv")]
    files += [(f"valve1/{path.stem}", path) for path in (skab / "valve1").glob("*.csv")]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing or len(files) == 1:
        raise SystemExit(f"SKAB files not found: {missing or skab / 'valve1/*.csv'} (see /work/shared/real/README.md)")
    return sorted(files, key=lambda item: _first_time(item[1]))


def _first_time(path: Path) -> float:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        return _epoch(next(reader)["datetime"])


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def read_experiment(name: str, path: Path, device: str, skab: Path) -> tuple[list[dict], Experiment]:
    """The ticks of one experiment file and what its operators flagged."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    ticks, anomalies, changepoints = [], [], []
    previous_flag = 0.0
    for row in rows:
        ts = _epoch(row["datetime"])
        values = {key: float(cell) for key, cell in row.items() if key not in ("datetime", *FLAGS)}
        ticks.append({"stream": device, "ts": ts, "values": values, "segment": name})
        flag = float(row.get("anomaly") or 0.0)
        if flag and not previous_flag:
            anomalies.append([ts, ts])
        if flag:
            anomalies[-1][1] = ts
        previous_flag = flag
        if float(row.get("changepoint") or 0.0):
            changepoints.append(ts)
    experiment = Experiment(name, path.relative_to(skab).as_posix(), len(ticks), ticks[0]["ts"], ticks[-1]["ts"],
                            [(a, b) for a, b in anomalies], changepoints)
    return ticks, experiment


def prepare(out: Path, skab: Path = SKAB, device: str = DEVICE) -> list[Experiment]:
    """Write ``ticks.jsonl``, ``experiments/*.jsonl`` and ``labels.json`` under ``out``."""
    (out / "experiments").mkdir(parents=True, exist_ok=True)
    experiments = []
    with open(out / "ticks.jsonl", "w") as everything:
        for name, path in experiment_files(skab):
            ticks, experiment = read_experiment(name, path, device, skab)
            lines = "".join(json.dumps(tick) + "\n" for tick in ticks)
            everything.write(lines)
            (out / "experiments" / f"{name.replace('/', '-')}.jsonl").write_text(lines)
            experiments.append(experiment)
    labels = {"device": device, "experiments": [asdict(e) for e in experiments]}
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return experiments


def load_labels(out: Path) -> tuple[str, list[Experiment]]:
    """The device name and the experiments `prepare` wrote to ``out/labels.json``."""
    labels = json.loads((out / "labels.json").read_text())
    experiments = [Experiment(**{**e, "anomalies": [tuple(w) for w in e["anomalies"]]})
                   for e in labels["experiments"]]
    return labels["device"], experiments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write into (outside the repository)")
    parser.add_argument("--skab", type=Path, default=SKAB, help=f"the raw SKAB folder (default: {SKAB})")
    parser.add_argument("--device", default=DEVICE, help=f"the rig's stream name (default: {DEVICE})")
    args = parser.parse_args(argv)
    experiments = prepare(args.out, args.skab, args.device)
    rows = sum(e.rows for e in experiments)
    windows = sum(len(e.anomalies) for e in experiments)
    print(f"{len(experiments)} experiments, {rows} ticks of 8 channels, {windows} anomaly windows -> "
          f"{args.out / 'ticks.jsonl'}, {args.out / 'labels.json'}, {args.out / 'experiments'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
