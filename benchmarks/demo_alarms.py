"""The demo's alarm table for detector variants: the bundled recording scored offline, alarms at 0.30.

    PYTHONPATH=. python benchmarks/demo_alarms.py default "novelty:novelty_gate=2"

`streamer demo` replays `streamer/data/demo.jsonl.gz` (20 one-minute streams of 1,500 ticks, ~25 hours; 3
with injected anomalies after tick 800, 2 with a segment change) through the daemon; `streamer score` gives
the same scores offline. Per variant (the names and ``name:key=value`` syntax of `loco.py`): per stream the
alarms (ticks scoring >= the threshold; the first `warmup` ticks score 0), the first one, the peak, and for
the 3 injected streams whether an alarm falls in the injected window and how many fall outside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loco import detector_settings, model_path, variant  # noqa: E402

from streamer.config import Settings  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.devtools.synth import demo_series  # noqa: E402
from streamer.offline.score import score_files  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "streamer" / "data" / "demo.jsonl.gz"


def scored(overrides: dict) -> list:
    """The bundled recording's rows, scored offline by the variant (`streamer score`)."""
    settings = Settings(detector=detector_settings(overrides), model={"path": model_path(overrides)})
    (rows, _), = score_files([DEMO], settings, Forecaster.load(settings.model.path))
    return rows


def alarms(overrides: dict, threshold: float, rows: list | None = None) -> dict[str, list[float]]:
    """Per stream, the times of its ticks scoring >= ``threshold`` (every stream gets an entry); ``rows``: the
    variant's `scored` rows, when they are at hand already."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in scored(overrides) if rows is None else rows:
        out[r.stream]  # every stream gets a row
        if r.score >= threshold:
            out[r.stream].append(float(r.timestamp))
    return out


def in_windows(ticks: list[float], windows: list[dict]) -> list[float]:
    """The alarm times of ``ticks`` that fall in one of a stream's labelled ``windows`` (inclusive)."""
    return [t for t in ticks if any(w["start"] <= t <= w["end"] for w in windows)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--threshold", type=float, default=0.30)
    parser.add_argument("--streams", action="store_true", help="also print each clean stream's alarms")
    args = parser.parse_args()
    truth = {s.name: s.windows() for s in demo_series()}
    for spec in args.variants:
        (name, overrides), = variant(spec).items()
        found = alarms(overrides, args.threshold)
        clean = {s: a for s, a in found.items() if not truth.get(s)}
        noisy = sum(1 for a in clean.values() if a)
        print(f"{name}: clean streams alarmed {noisy} of {len(clean)}, {sum(map(len, clean.values()))} alarm ticks")
        for stream, windows in sorted(truth.items()):
            if not windows:
                continue
            ticks = found[stream]
            inside = in_windows(ticks, windows)
            kinds = ", ".join(w["kind"] for w in windows)
            print(f"  {stream:<40} {kinds:<16} caught {'yes' if inside else 'NO':<3}  "
                  f"{len(inside)} in window, {len(ticks) - len(inside)} outside")
        if args.streams:
            for stream, ticks in sorted(clean.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                first = time.strftime("%H:%M", time.gmtime(ticks[0])) if ticks else "-"
                print(f"  {stream:<40} {len(ticks):>4} alarms, first {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
