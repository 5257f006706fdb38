"""Turn the shared minute bars into the daemon's input, with labelled bad ticks injected (issue 16, stocks).

    python examples/stocks/prepare.py OUT_DIR [--seed 16] [--per-kind 2]

Reads ``../shared/real/stocks/<ticker>_minute_trade_ET.csv`` (SPY, IBM, BAC, AIG; one-minute trade bars in
US Eastern time, 04:00-20:00) and writes, into OUT_DIR (never into the repository: the data's licence and
the project's rule keep recordings out of it):

- ``clean.jsonl``: one tick per bar, ``{"stream": ticker, "ts": "2013-10-08 09:31:00", "value": close}``,
  the times as recorded (naive Eastern: ``ticks.timezone`` in examples/stocks/config.toml reads them), all
  tickers interleaved in time order as a feed would deliver them;
- ``faulted.jsonl``: the same with ``--per-kind`` faults of every market kind per ticker
  (`streamer.devtools.faults`), placed in the regular session (09:30-16:00), a late or repeated tick at
  the place it arrives;
- ``faults.json``: the labels, ``{ticker: [{kind, start_ts, end_ts}, ...]}``, epoch seconds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from streamer.devtools.faults import MARKET_KINDS, Fault, faults_json, inject

SHARED = Path(__file__).resolve().parents[3] / "shared" / "real" / "stocks"
TICKERS = ("SPY", "IBM", "BAC", "AIG")
EASTERN = ZoneInfo("America/New_York")
GUARD = 30  # untouched bars (minutes) between two faults: more than the detector's incident hold and the slack


def read_bars(ticker: str, folder: Path = SHARED) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds and close prices of one ticker's bars."""
    with open(folder / f"{ticker.lower()}_minute_trade_ET.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ts = np.array([datetime.fromisoformat(r["datetime_et"]).replace(tzinfo=EASTERN).timestamp() for r in rows])
    return ts, np.array([float(r["close"]) for r in rows])


def regular_session(ts: np.ndarray) -> np.ndarray:
    """Ticks between 09:30 and 16:00 Eastern, where a bad print reaches a trader."""
    minutes = np.array([(t.hour * 60 + t.minute) for t in (datetime.fromtimestamp(x, EASTERN) for x in ts)])
    return (minutes >= 9 * 60 + 30) & (minutes < 16 * 60)


def eastern(ts: float) -> str:
    """Naive Eastern wall-clock time, as the recording writes it."""
    return datetime.fromtimestamp(ts, EASTERN).replace(tzinfo=None).isoformat(sep=" ")


def write_feed(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """All tickers in one file, in the order ticks arrive: a late tick stands where it was re-sent."""
    rows = []
    for order, (ticker, (ts, values)) in enumerate(series.items()):
        arrival = np.maximum.accumulate(ts)
        rows += [(a, order, i, ticker, t, v) for i, (a, t, v) in enumerate(zip(arrival, ts, values))]
    rows.sort()
    with open(path, "wb") as handle:
        for _, _, _, ticker, t, v in rows:
            handle.write(orjson.dumps({"stream": ticker, "ts": eastern(t), "value": round(float(v), 6)}) + b"\n")
    return len(rows)


def prepare(out: Path, seed: int, per_kind: int, folder: Path = SHARED,
            tickers: tuple[str, ...] = TICKERS) -> dict[str, list[Fault]]:
    out.mkdir(parents=True, exist_ok=True)
    clean, faulted, labels = {}, {}, {}
    for k, ticker in enumerate(tickers):
        ts, values = clean[ticker] = read_bars(ticker, folder)
        new_ts, new_values, faults = inject(ts, values, MARKET_KINDS, per_kind, seed=seed + k, guard=GUARD,
                                            eligible=regular_session(ts))
        faulted[ticker], labels[ticker] = (new_ts, new_values), faults
    n_clean = write_feed(out / "clean.jsonl", clean)
    n_faulted = write_feed(out / "faulted.jsonl", faulted)
    faults_json(labels, out / "faults.json")
    print(f"wrote {out / 'clean.jsonl'} ({n_clean} ticks), {out / 'faulted.jsonl'} ({n_faulted} ticks) and "
          f"{out / 'faults.json'} ({sum(map(len, labels.values()))} faults: {per_kind} of each of "
          f"{len(MARKET_KINDS)} kinds per ticker, seed {seed})")
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the daemon's input and the labels (outside the repo)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--per-kind", type=int, default=2, help="faults of each kind per ticker")
    args = parser.parse_args(argv)
    prepare(args.out, args.seed, args.per_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
