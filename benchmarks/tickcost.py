"""Per-tick cost of `Detector.process` for detector variants: 5,000-tick polls (`--poll-size`) over 10,000 streams.

    PYTHONPATH=. python benchmarks/tickcost.py default no_forecast "sd:season_evidence=false"

Each variant gets its own detector, warmed past `warmup` on every stream (so every kind of evidence is
live); then rounds of polls are timed, the variants interleaved round by round (the machine is shared:
interleaving spreads its noise over all of them). Reports the median us per tick over the rounds, for the
whole `process` call (bookkeeping + kernel) and for the compiled kernel alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loco import detector_settings, model_path, variant  # noqa: E402

from streamer.core import kernel  # noqa: E402
from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.core.ticks import TickBatch  # noqa: E402

STREAMS, POLL = 10_000, 5_000  # POLL: the default poll size (`--poll-size`)


NAMES = [f"s{i}" for i in range(STREAMS)]


def polls(first: int, count: int, rng: np.random.Generator, size: int = POLL):
    """Polls ``first`` .. ``first + count - 1`` of ``size`` ticks each, the streams in turn: 5-minute ticks of a
    noisy daily pattern."""
    names = np.array(NAMES, dtype=object)
    for k in range(first, first + count):
        idx = (np.arange(size) + k * size) % STREAMS
        step = (np.arange(size) + k * size) // STREAMS
        ts = 1.7e9 + step * 300.0 + idx * 1e-3
        value = 10 + 3 * np.sin(2 * np.pi * ts / 86400) + rng.standard_normal(size)
        yield TickBatch(stream=names[idx].tolist(), ts=ts.astype(float), value=value.astype(float))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--polls", type=int, default=20, help="polls per round")
    parser.add_argument("--poll-size", type=int, default=POLL, help="ticks a poll (the daemon's polls at half "
                        "its top rate hold ~1,300: `make bench`'s latency row)")
    args = parser.parse_args()
    size = args.poll_size
    detectors = {}
    for spec in args.variants:
        (name, overrides), = variant(spec).items()
        model = Forecaster.load(model_path(overrides))
        det = Detector(model, detector_settings(overrides))
        rng = np.random.default_rng(0)
        warm = (det.settings.warmup + 10) * STREAMS // size
        for batch in polls(0, warm, rng, size):
            det.process(batch)
        detectors[name] = (det, rng, warm)
    timings = {name: ([], []) for name in detectors}
    kernel_time = [0.0]
    advance = kernel.advance

    def timed_advance(*a):
        t = time.perf_counter()
        out = advance(*a)
        kernel_time[0] += time.perf_counter() - t
        return out

    kernel.advance = timed_advance
    for r in range(args.rounds):
        for name, (det, rng, done) in detectors.items():
            batches = list(polls(done + r * args.polls, args.polls, rng, size))
            kernel_time[0] = 0.0
            started = time.perf_counter()
            for batch in batches:
                det.process(batch)
            elapsed = time.perf_counter() - started
            ticks = args.polls * size
            timings[name][0].append(elapsed / ticks * 1e6)
            timings[name][1].append(kernel_time[0] / ticks * 1e6)
    kernel.advance = advance
    print(f"{'variant':<40} {'process us/tick':>16} {'kernel us/tick':>15}   (median of {args.rounds} rounds, "
          f"{STREAMS:,} streams, {size:,}-tick polls)")
    for name, (whole, kern) in timings.items():
        print(f"{name:<40} {np.median(whole):16.2f} {np.median(kern):15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
