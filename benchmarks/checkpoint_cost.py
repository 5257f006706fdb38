"""What a checkpoint costs, per store and number of streams: the figures behind `[checkpoint]`'s defaults.

    python benchmarks/checkpoint_cost.py [--streams 10000 100000] [--store local kafka] [--repeat 3]

A detector is warmed with a few ticks of each stream, then one partition's checkpoint of all of them is
exported, encoded and saved (local: fsynced file in a temporary directory; kafka: a local Tansu broker), and
loaded back. Prints seconds per save and load, and bytes. Checkpoint cost is paid by the loop while it holds
the batch lock, so it stalls scoring for that long every ``interval_seconds``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from streamer.config import DetectorSettings, KafkaSettings
from streamer.core.detector import Detector
from streamer.core.model import Forecaster
from streamer.core.ticks import TickBatch
from streamer.daemon.checkpoint import Checkpoint, KafkaStore, LocalStore, encode


def warmed_detector(streams: int, model: Forecaster) -> Detector:
    detector = Detector(model, DetectorSettings(max_streams=max(streams, 1000)))
    names = [f"s{i}" for i in range(streams)]
    rng = np.random.default_rng(0)
    for step in range(3):
        ts = np.full(streams, 1_767_225_600.0 + 60 * step)
        detector.process(TickBatch(names, ts, rng.normal(size=streams)), None, np.zeros(streams, dtype=np.int64))
    return detector


def measure(store, detector: Detector, repeat: int) -> tuple[list[float], list[float], int]:
    saves, loads = [], []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        states = detector.export(detector.owned_by(0))
        checkpoint = Checkpoint("ticks", 0, 123, store.model, states)
        store.save(checkpoint)
        saves.append(time.perf_counter() - started)
        size = len(encode(checkpoint))
        started = time.perf_counter()
        assert len(store.load("ticks", 0).states.names) == len(states.names)
        loads.append(time.perf_counter() - started)
    return saves, loads, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[10_000, 100_000], help="streams per checkpoint")
    parser.add_argument("--store", nargs="+", default=["local", "kafka"], choices=["local", "kafka"],
                        help="stores to measure")
    parser.add_argument("--repeat", type=int, default=3, help="saves and loads per figure (median printed)")
    args = parser.parse_args()
    model = Forecaster.load()
    print(f"{'store':6} {'streams':>8} {'save s':>8} {'load s':>8} {'MB':>7} {'B/stream':>9}")
    broker = None
    try:
        for streams in args.streams:
            detector = warmed_detector(streams, model)
            for kind in args.store:
                if kind == "local":
                    with tempfile.TemporaryDirectory() as tmp:
                        saves, loads, size = measure(LocalStore(tmp, "bench", model.fingerprint()), detector,
                                                     args.repeat)
                else:
                    if broker is None:
                        from streamer.devtools.broker import LocalBroker
                        broker = LocalBroker().start()
                    store = KafkaStore(KafkaSettings(bootstrap_servers=[broker.bootstrap]), "bench-checkpoints",
                                       "bench", model.fingerprint())
                    saves, loads, size = measure(store, detector, args.repeat)
                    store.close()
                print(f"{kind:6} {streams:>8} {statistics.median(saves):>8.3f} {statistics.median(loads):>8.3f} "
                      f"{size / 1e6:>7.1f} {size / streams:>9.0f}", flush=True)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
