"""Write the unlabelled real series of ../shared/real as one tick file for `streamer train` (under /tmp: the
data may not be copied into the repository).

    PYTHONPATH=. python benchmarks/pretrain_corpus.py /tmp/streamer-real.jsonl.gz

Streams: energy/taylor.csv (half-hourly demand), energy/ETTh1.csv (seven hourly transformer series, derived
in memory), stocks/<ticker>_minute_trade_ET.csv (close and volume of each ticker, one-minute bars). Never
the labelled evaluation corpora (../shared/nab, msl, skab, nor ../shared/real/sensors/skab: SKAB's raw files).
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "real"


def series():
    start = datetime(2000, 6, 5, tzinfo=timezone.utc).timestamp()
    with open(REAL / "energy" / "taylor.csv") as handle:
        values = [float(row[0]) for row in list(csv.reader(handle))[1:]]
    yield "taylor", [(start + 1800 * i, v) for i, v in enumerate(values)]
    with open(REAL / "energy" / "ETTh1.csv") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"):
        yield f"etth1/{column}", [(datetime.fromisoformat(r["date"]).replace(tzinfo=timezone.utc).timestamp(),
                                   float(r[column])) for r in rows]
    eastern = ZoneInfo("America/New_York")
    for path in sorted((REAL / "stocks").glob("*_minute_trade_ET.csv")):
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        ts = [datetime.fromisoformat(r["datetime_et"]).replace(tzinfo=eastern).timestamp() for r in rows]
        ticker = path.name.split("_", 1)[0]
        for column in ("close", "volume"):
            yield f"{ticker}/{column}", [(t, float(r[column])) for t, r in zip(ts, rows)]


def main() -> int:
    out = Path(sys.argv[1])
    total = 0
    with gzip.open(out, "wt") as handle:
        for name, points in series():
            for ts, value in points:
                handle.write(json.dumps({"stream": name, "ts": ts, "value": value}) + "\n")
            total += len(points)
    print(f"{total} ticks written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
