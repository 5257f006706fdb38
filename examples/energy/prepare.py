"""Turn the shared energy recordings into the daemon's input, with labelled meter faults (issue 16, energy).

    python examples/energy/prepare.py OUT_DIR [--seed 16] [--per-kind 3]

Reads, from ``../shared/real/energy/``, ``taylor.csv`` (half-hourly demand of England and Wales in MW, no
timestamp column: the first value is 2000-06-05 00:00) and ``ETTh1.csv`` (hourly transformer data, of which
the oil temperature ``OT`` and the load column ``HUFL`` are used, as two univariate streams; the file is
only read, its licence forbids shipping modified copies). Writes into OUT_DIR (never the repository):

- ``clean.jsonl``: ``{"stream": "taylor" | "etth1/OT" | "etth1/HUFL", "ts": "2000-06-05 00:30:00",
  "value": ...}``, in time order;
- ``faulted.jsonl``: the same with ``--per-kind`` faults of each energy kind per stream
  (`streamer.devtools.faults`: dropout to zero, stuck meter, level shift, a weekday with a Sunday's
  shape), all after the stream's first WARM_DAYS days, so they are judged on a detector past its warm-up
  (the README reports the warm-up separately, on the untouched data);
- ``faults.json``: the labels, ``{stream: [{kind, start_ts, end_ts}, ...]}``, epoch seconds (UTC);
- ``windows.json``: the same spans as NAB windows per stream, for reference.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from streamer.devtools.faults import ENERGY_KINDS, Fault, faults_json, inject, windows_json

SHARED = Path(__file__).resolve().parents[3] / "shared" / "real" / "energy"
TAYLOR_START = datetime(2000, 6, 5, tzinfo=timezone.utc).timestamp()
ETT_COLUMNS = ("OT", "HUFL")
WARM_DAYS = 14  # faults only after the first two weeks of a stream
GUARD_S = 86400  # a day of untouched readings between two faults


def read_series(folder: Path = SHARED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Epoch seconds and values of each stream, derived in memory from the shared files."""
    with open(folder / "taylor.csv", newline="") as handle:
        demand = np.array([float(row[0]) for row in list(csv.reader(handle))[1:]])
    series = {"taylor": (TAYLOR_START + 1800.0 * np.arange(len(demand)), demand)}
    with open(folder / "ETTh1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ts = np.array([datetime.fromisoformat(r["date"]).replace(tzinfo=timezone.utc).timestamp() for r in rows])
    for column in ETT_COLUMNS:
        series[f"etth1/{column}"] = (ts, np.array([float(r[column]) for r in rows]))
    return series


def write_feed(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    rows = sorted((t, order, i, stream, v) for order, (stream, (ts, values)) in enumerate(series.items())
                  for i, (t, v) in enumerate(zip(ts.tolist(), values.tolist())))
    with open(path, "wb") as handle:
        for t, _, _, stream, v in rows:
            when = datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
            handle.write(orjson.dumps({"stream": stream, "ts": when, "value": round(v, 6)}) + b"\n")
    return len(rows)


def prepare(out: Path, seed: int, per_kind: int, folder: Path = SHARED) -> dict[str, list[Fault]]:
    out.mkdir(parents=True, exist_ok=True)
    clean = read_series(folder)
    faulted, labels = {}, {}
    for k, (stream, (ts, values)) in enumerate(clean.items()):
        step = float(np.median(np.diff(ts)))
        new_ts, new_values, faults = inject(ts, values, ENERGY_KINDS, per_kind, seed=seed + k,
                                            guard=int(GUARD_S / step), eligible=ts >= ts[0] + WARM_DAYS * 86400)
        faulted[stream], labels[stream] = (new_ts, new_values), faults
    n_clean = write_feed(out / "clean.jsonl", clean)
    n_faulted = write_feed(out / "faulted.jsonl", faulted)
    faults_json(labels, out / "faults.json")
    windows_json(labels, out / "windows.json")
    print(f"wrote {out / 'clean.jsonl'} ({n_clean} ticks), {out / 'faulted.jsonl'} ({n_faulted} ticks), "
          f"{out / 'faults.json'} and {out / 'windows.json'} ({sum(map(len, labels.values()))} faults: "
          f"{per_kind} of each of {len(ENERGY_KINDS)} kinds per stream, seed {seed})")
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the daemon's input and the labels (outside the repo)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--per-kind", type=int, default=3, help="faults of each kind per stream")
    args = parser.parse_args(argv)
    prepare(args.out, args.seed, args.per_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
