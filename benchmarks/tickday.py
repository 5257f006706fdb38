"""`python -m benchmarks.tickday`: every SPY trade of 2013-10-08 (451,545 ticks, one very hot stream) through a
local Tansu broker and the daemon at full speed (issue 16, examples/stocks/README.md).

Two measurements per variant, each in its own worker process (`benchmarks.bench`'s workers, so the figures
are measured exactly as ``make bench`` measures them):

1. *throughput*: the day is produced to a fresh one-partition topic first, then a `Daemon` consumes it from
   the start; msg/s from its first poll to every offset committed, and to the last message scored;
2. *tick-to-metric latency*: the daemon waits on a fresh topic while the day is produced as fast as the
   producer goes, each message stamped with its production time; per message, the time from that stamp to
   the end of the daemon's handling of the poll that scored it (metrics updated). At full speed the
   producer outruns the daemon and the latency is mostly the backlog it drains, as in a replay; so it is
   measured again with the day produced at half the rate the daemon scored it in step 1 (``make bench``'s
   latency protocol), a feed the daemon keeps up with.

Variants: ``as recorded`` (timestamps in milliseconds: a trade in the same millisecond as the one before it
is not later than its stream's last tick, so with the default ``detector.equal_timestamps = false`` the daemon
counts it ``out_of_order`` and does not score it); ``as recorded, equal_timestamps = true`` (the same
messages, every trade scored: the setting for trade feeds); and ``distinct`` (each such trade moved 1
microsecond after the one before, so every trade is scored with the default setting). ``--variants`` picks
some of them.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from benchmarks.bench import (
    Workers,
    _Broker,
    _confluent_version,
    _Producer,
    _settings_data,
    bench_settings,
)
from streamer.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
TICKS = REPO.parent / "shared" / "real" / "stocks" / "spy_ticks_20131008_ET.csv.gz"
CONFIG = REPO / "examples" / "stocks" / "config.toml"
EASTERN = ZoneInfo("America/New_York")
VARIANTS = {"recorded": "as recorded", "equal": "as recorded, equal_timestamps = true", "distinct": "distinct"}


def read_day(path: Path = TICKS) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ts = np.array([datetime.fromisoformat(r["datetime_et"]).replace(tzinfo=EASTERN).timestamp() for r in rows])
    return ts, np.array([float(r["price"]) for r in rows])


def micros(ts: np.ndarray) -> np.ndarray:
    """Epoch microseconds as integers (a float's sixth decimal is not exact at 1.4e9 s)."""
    return np.round(ts * 1e6).astype(np.int64)


def distinct(us: np.ndarray) -> np.ndarray:
    """Timestamps made strictly increasing: the k-th trade of a millisecond moved k microseconds later."""
    out = us.copy()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = out[i - 1] + 1
    return out


def payloads(us: np.ndarray, price: np.ndarray) -> list[bytes]:
    return [b'{"stream":"SPY","ts":%d.%06d,"value":%s}' % (t // 1_000_000, t % 1_000_000, repr(p).encode())
            for t, p in zip(us.tolist(), price.tolist())]


def produce(bootstrap: str, topic: str, messages: list[bytes], backend: str, stamp: bool,
            rate: float | None = None) -> dict:
    """Every message, as fast as the producer goes or at ``rate`` msg/s; ``stamp``: with the production time
    as its timestamp."""
    producer = _Producer(backend, bootstrap, linger_ms=5 if stamp else 20)
    started = time.perf_counter()
    sent = 0
    try:
        while sent < len(messages):
            due = len(messages) if rate is None else min(len(messages), int((time.perf_counter() - started) * rate) + 1)
            if due == sent:
                time.sleep(0.0005)
                continue
            for value in messages[sent:due]:
                producer.send(topic, b"SPY", value, timestamp_ms=int(time.time() * 1000) if stamp else None)
            sent = due
            producer.poll()
        producer.flush()
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    return {"rate": len(messages) / seconds, "counts": {str(p): n for p, n in producer.counts.items()}}


def measure(settings: Settings, workers: Workers, broker: _Broker, bootstrap: str, messages: list[bytes],
            backend: str) -> dict:
    from streamer.devtools.broker import create_topic

    topic = f"tickday-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, partitions=1)
    produced = produce(bootstrap, topic, messages, backend, stamp=False)
    spec = {"settings": _settings_data(bench_settings(settings, bootstrap, topic, True)), "counts": produced["counts"],
            "topic": topic, "broker_pid": broker.pid, "limit": len(messages)}
    run = workers.run("daemon", spec, timeout=600)
    full = latency(settings, workers, broker, bootstrap, messages, backend, None)
    half = latency(settings, workers, broker, bootstrap, messages, backend, run["scored_rate"] / 2)
    return {"run": run, "full": full, "half": half}


def latency(settings: Settings, workers: Workers, broker: _Broker, bootstrap: str, messages: list[bytes],
            backend: str, rate: float | None) -> dict:
    """Tick-to-metric latency while the messages are produced at ``rate`` (None: full speed)."""
    from streamer.devtools.broker import create_topic

    topic = f"tickday-latency-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic, partitions=1)
    go, ready = workers.workdir / f"{topic}.go.json", workers.workdir / f"{topic}.ready"
    proc, result_path, log_path = workers.start("latency", {
        "settings": _settings_data(bench_settings(settings, bootstrap, topic, True)), "topic": topic,
        "latency": True, "go": str(go), "ready": str(ready), "broker_pid": broker.pid})
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return Workers.finish(proc, result_path, log_path, timeout=1)  # raises with the log
        time.sleep(0.05)
    paced = produce(bootstrap, topic, messages, backend, stamp=True, rate=rate)
    tmp = go.with_suffix(".tmp")
    tmp.write_text(json.dumps({"counts": paced["counts"]}))
    tmp.replace(go)
    return {**Workers.finish(proc, result_path, log_path, timeout=600), "producer_rate": paced["rate"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tickday", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="daemon settings (default: the stocks example's)")
    parser.add_argument("--ticks", type=Path, default=TICKS)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to measure (default: all)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    ts, price = read_day(args.ticks)
    backend = "confluent" if _confluent_version() else "kafka-python"
    equal = settings.model_copy(update={"detector": settings.detector.model_copy(update={"equal_timestamps": True})})
    every = {"recorded": (micros(ts), settings), "equal": (micros(ts), equal),
             "distinct": (distinct(micros(ts)), settings)}
    variants = {VARIANTS[key]: every[key] for key in args.variants}
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamer-tickday-") as tmp:
        workers = Workers(Path(tmp))
        broker = _Broker(None, Path(tmp) / "tansu.log")
        with broker as bootstrap:
            for name, (stamps, chosen) in variants.items():
                print(f"[tickday] {name}: {len(stamps):,} ticks", file=sys.stderr, flush=True)
                got = measure(chosen, workers, broker, bootstrap, payloads(stamps, price), backend)
                run = got["run"]
                rows.append(f"| {name} | {len(stamps):,} | {run['scored']:,} | {len(stamps) - run['scored']:,} | "
                            f"{run['rate']:,.0f} | {run['scored_rate']:,.0f} | "
                            + " | ".join(f"{got[k]['producer_rate']:,.0f}: {got[k]['p50_ms']:,.0f} / "
                                         f"{got[k]['p99_ms']:,.0f}" for k in ("full", "half")) + " |")
    print("| SPY 2013-10-08 | ticks | scored | out_of_order | msg/s to the last commit | msg/s to the last score | "
          "latency at full speed: producer msg/s: p50 / p99 ms | at half the scored rate |")
    print("|---" * 8 + "|")
    print("\n".join(rows))
    print(f"(producer: {backend}; daemon: kafka.client = {settings.kafka.client}; config {args.config}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
