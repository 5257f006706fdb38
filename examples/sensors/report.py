"""What the device score would have told the SKAB rig's operators: NAB scores and, at the recommended
threshold, caught valve closures, their delay and the false alarms, next to the best single channel and a
random detector on the same readings.

    python -m examples.sensors.prepare OUT
    python -m examples.sensors.report OUT [--config examples/sensors/config.toml] [--threshold 0.30]

Everything is scored by `streamer.offline.score.score_file`, the daemon's detector in the daemon's batches,
so the figures are what `streamer run` computes from the same ticks; rerun this after a detector change.

- NAB (`streamer.offline.nab`, the profiles of `streamer evaluate`): one series per experiment, one row per
  reading of the rig (8 channels), the operators' anomaly window as its window; the anomaly-free run has
  none (it only costs false alarms). Each detector at its own best threshold, as `streamer evaluate` picks
  it; "at 0.30" is the standard profile at the recommended threshold instead.
- Detectors: the device score (Bonferroni over the 8 channels, `streamer.core.devices`); each channel's own
  score, and the best of them (chosen on this data: an optimistic baseline); Fisher's combination of the
  channels' p-values (measured as the alternative, not shipped: see `streamer.core.devices`); a random
  detector (uniform scores per reading, ``--seeds`` seeds averaged).
- Incidents (`streamer.devtools.incidents`): a valve closure is caught by an alarm (score >= threshold) in
  its window or within ``--slack`` seconds after it; delay from the window's start; alarms closer than the
  slack form one episode (one page), false when it touches no window. The random detector is given the
  device score's alarm rate (its threshold is the matching quantile), so it pages as often.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.sensors.prepare import Experiment, load_labels
from streamer.config import load_settings
from streamer.core.kernel import DECADES
from streamer.core.model import Forecaster
from streamer.devtools.faults import Fault
from streamer.devtools.incidents import Report, merge, report
from streamer.offline import nab
from streamer.offline.evaluate import DEFAULT_PROFILES
from streamer.offline.score import ScoredRow, score_file

CONFIG = Path(__file__).with_name("config.toml")
KIND = "valve closed"


@dataclass
class Readings:
    """The rig's readings in time order: one row per tick of the device, a column per detector."""

    ts: np.ndarray  # epoch seconds
    device: np.ndarray  # the device score
    channels: dict[str, np.ndarray]  # each channel's own score (NaN: not in that reading)


def readings(rows: list[ScoredRow], device: str) -> Readings:
    """Group the score rows of ``device``'s channels into readings (consecutive rows of one timestamp)."""
    mine = [r for r in rows if r.device == device]
    ts = np.array([float(r.timestamp) for r in mine])
    start = np.r_[True, ts[1:] != ts[:-1]]
    reading = np.cumsum(start) - 1
    n = int(reading[-1]) + 1
    device_score = np.full(n, math.nan)
    channels: dict[str, np.ndarray] = {}
    for r, k in zip(mine, reading.tolist()):
        name = r.stream.removeprefix(f"{device}/")
        channels.setdefault(name, np.full(n, math.nan))[k] = r.score
        if not math.isnan(r.device_score):
            device_score[k] = r.device_score
    return Readings(ts[start], device_score, channels)


def fisher(channels: dict[str, np.ndarray]) -> np.ndarray:
    """Fisher's combination of the channels' p-values (p = 10^(-DECADES x score)), as a score.

    X = -2 sum(ln p) is chi-squared with 2k degrees of freedom if the channels are independent; its tail for
    even degrees of freedom is exp(-X/2) sum_{i<k} (X/2)^i / i!, taken in logs."""
    scores = np.column_stack(list(channels.values()))
    k = np.sum(~np.isnan(scores), axis=1)
    half = math.log(10) * DECADES * np.nansum(scores, axis=1)  # X / 2
    terms = np.stack([np.exp(i * np.log(np.maximum(half, 1e-300)) - math.lgamma(i + 1)) * (i < k)
                      for i in range(scores.shape[1])], axis=1)
    log_p = -half + np.log(np.maximum(terms.sum(axis=1), 1e-300))
    return np.clip(-log_p / math.log(10) / DECADES, 0.0, 1.0)


def series(name: str, ts: np.ndarray, scores: np.ndarray, experiment: Experiment) -> nab.Series:
    stamps = (ts * 1e6).astype("datetime64[us]")
    windows = [(np.datetime64(int(a * 1e6), "us"), np.datetime64(int(b * 1e6), "us"))
               for a, b in experiment.anomalies]
    return nab.Series(name, np.nan_to_num(scores, nan=0.0), nab.locate_windows(stamps, windows))


def corpus(data: Readings, scores: np.ndarray, experiments: list[Experiment]) -> list[nab.Series]:
    out = []
    for e in experiments:
        inside = (data.ts >= e.first_ts) & (data.ts <= e.last_ts)
        out.append(series(e.name, data.ts[inside], scores[inside], e))
    return out


def nab_scores(data: Readings, scores: np.ndarray, experiments: list[Experiment],
               threshold: float) -> list[float]:
    """NAB standard, low FP, low FN at each profile's best threshold; the best standard threshold; and the
    standard score at ``threshold``."""
    files = corpus(data, scores, experiments)
    results = [nab.sweep(files, profile) for profile in DEFAULT_PROFILES]
    standard = DEFAULT_PROFILES[0]
    fixed = nab.normalise(math.fsum(nab.file_raw_score(f, threshold, standard) for f in files), files, standard)
    return [r.normalised for r in results] + [results[0].threshold, fixed]


def incidents(data: Readings, scores: np.ndarray, experiments: list[Experiment], threshold: float,
              slack: float) -> dict[str, Report]:
    """`incidents.report` per experiment."""
    out = {}
    for e in experiments:
        inside = (data.ts >= e.first_ts) & (data.ts <= e.last_ts)
        faults = [Fault(KIND, a, b) for a, b in e.anomalies]
        out[e.name] = report(data.ts[inside], scores[inside], threshold, faults, slack)
    return out


def summary(per_experiment: dict[str, Report], experiments: list[Experiment], data: Readings, scores: np.ndarray,
            threshold: float) -> tuple[float, ...]:
    """Recall, median delay (s), precision over the valve experiments; false-alarm episodes per hour of the
    anomaly-free run, and its share of readings that alarm (a calibrated score: at most 10^(-DECADES x
    threshold), 0.001 at 0.30)."""
    valve = merge(r for name, r in per_experiment.items() if name != "anomaly-free")
    kind = valve.kinds[KIND]
    free = next(e for e in experiments if e.name == "anomaly-free")
    hours = (free.last_ts - free.first_ts) / 3600
    inside = (data.ts >= free.first_ts) & (data.ts <= free.last_ts)
    rate = float(np.mean(np.nan_to_num(scores[inside]) >= threshold))
    return kind.recall, kind.median_delay_s, valve.precision, per_experiment["anomaly-free"].episodes / hours, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder `examples.sensors.prepare` wrote")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--threshold", type=float, default=0.30, help="the recommended alert threshold")
    parser.add_argument("--slack", type=float, default=60.0, help="seconds after a window an alarm still counts")
    parser.add_argument("--seeds", type=int, default=5, help="random detectors averaged")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    device, experiments = load_labels(args.out)
    rows, scored = score_file(args.out / "ticks.jsonl", settings, Forecaster.load(settings.model.path))
    data = readings(rows, device)
    print(f"{len(data.ts)} readings of {len(data.channels)} channels in {len(experiments)} experiments; resets "
          f"{dict(scored.resets)}; out of order {scored.out_of_order}, invalid {dict(scored.invalid)}\n")

    channel_nab = {name: nab_scores(data, s, experiments, args.threshold) for name, s in data.channels.items()}
    best = max(channel_nab, key=lambda name: channel_nab[name][0])
    rng = np.random.default_rng(0)
    randoms = [rng.uniform(size=len(data.ts)) for _ in range(args.seeds)]
    random_nab = np.mean([nab_scores(data, s, experiments, args.threshold) for s in randoms], axis=0)
    combined = fisher(data.channels)
    print("NAB, 16 valve experiments + the anomaly-free run (each detector at its best threshold):\n")
    print("| detector | standard | low FP | low FN | best threshold | standard at "
          f"{args.threshold:.2f} |\n|---|---|---|---|---|---|")
    table = [("device score (Bonferroni, shipped)", nab_scores(data, data.device, experiments, args.threshold)),
             (f"best single channel ({best})", channel_nab[best]),
             ("Fisher's combination (measured, not shipped)", nab_scores(data, combined, experiments, args.threshold)),
             (f"random (mean of {args.seeds} seeds)", list(random_nab))]
    for name, (standard, low_fp, low_fn, threshold, fixed) in table:
        at = "n/a (uncalibrated)" if name.startswith("random") else f"{fixed:.2f}"
        print(f"| {name} | {standard:.2f} | {low_fp:.2f} | {low_fn:.2f} | {threshold:.4f} | {at} |")
    free = next(e for e in experiments if e.name == "anomaly-free")
    quiet = (data.ts >= free.first_ts) & (data.ts <= free.last_ts)
    print(f"\nPer channel: NAB standard; share of the anomaly-free run's readings at or above {args.threshold:.2f} "
          f"(calibrated: at most {10 ** (-DECADES * args.threshold):.4f}):\n")
    print("| channel | NAB standard | anomaly-free readings that alarm |\n|---|---|---|")
    for name, values in sorted(channel_nab.items()):
        rate = float(np.mean(np.nan_to_num(data.channels[name][quiet]) >= args.threshold))
        print(f"| {name} | {values[0]:.2f} | {rate:.4f} |")
    print()

    device_reports = incidents(data, data.device, experiments, args.threshold, args.slack)
    alarm_rate = float(np.mean(np.nan_to_num(data.device) >= args.threshold))
    print(f"At the threshold {args.threshold:.2f} (alarm: score >= it; caught: an alarm in the window or "
          f"{args.slack:.0f} s after it; episodes: alarms less than {args.slack:.0f} s apart):\n")
    print("| experiment | valve closure caught | delay (s) | alarm episodes | false-alarm episodes | precision |\n"
          "|---|---|---|---|---|---|")
    for name, r in device_reports.items():
        kind = r.kinds.get(KIND)
        caught = "n/a" if kind is None else "yes" if kind.caught else "no"
        delay = "" if kind is None or not kind.caught else f"{kind.delays[0]:.0f}"
        precision = "" if not r.episodes else f"{r.precision:.2f}"
        print(f"| {name} | {caught} | {delay} | {r.episodes} | {r.false_alarm_episodes} | {precision} |")

    print("\n| detector | recall | median delay (s) | precision | anomaly-free run: false-alarm episodes per "
          "hour | anomaly-free run: readings that alarm |\n|---|---|---|---|---|---|")

    def row(scores: np.ndarray, threshold: float = args.threshold) -> tuple[float, ...]:
        return summary(incidents(data, scores, experiments, threshold, args.slack), experiments, data, scores,
                       threshold)

    rows_out = [("device score", row(data.device)), (f"best single channel ({best})", row(data.channels[best])),
                ("Fisher's combination (measured, not shipped)", row(combined))]
    matched = [row(s, float(np.quantile(s, 1 - alarm_rate))) for s in randoms]
    rows_out.append((f"random, same alarm rate ({alarm_rate:.2%} of readings; mean of {args.seeds})",
                     tuple(np.mean(matched, axis=0))))
    for name, (recall, delay, precision, per_hour, rate) in rows_out:
        print(f"| {name} | {recall:.2f} | {delay:.0f} | {precision:.2f} | {per_hour:.1f} | {rate:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
