"""Per-device scores: one score per reading of a multivariate device, from its channels' scores.

A tick with ``values`` is one reading of a device (a pump: flow, pressure, current, ...). The decoder splits
it into one stream per channel, each scored on its own history, but operators page on the device, not on
one of its eight sensors. A device's score is the combination of its channels' scores *at the same tick*,
calibrated like them, so that the one alert threshold means the same rarity for a device as for a stream.

The combination is Bonferroni's. A channel's score is ``s = -log10(p) / DECADES`` of a calibrated tail
probability p (`streamer.core.kernel`); for the k channels scored at a tick the device's p is
``min(1, k * min(p))``, that is

    device score = clip(max(s) - log10(k) / DECADES, 0, 1)     (k = 8: the channels' best minus 0.09)

Why this one:
- It is a valid p-value whatever the dependence between the channels (P(device p <= a) <= a under the
  union bound), and a device's sensors are strongly dependent: a closing valve moves flow, pressure,
  current and vibration together. Šidák's ``1 - (1 - p)^k`` is exact only for independent channels, and
  where it matters (scores above 0.2, p below 1e-4) it differs from Bonferroni by less than 0.001.
- Fisher's method (``-2 sum ln p``, chi-squared with 2k degrees of freedom) adds evidence across channels,
  but it assumes independence, so on correlated sensors one event counted k times passes for a far rarer
  one (anti-conservative); and the detector scores 0 on the ticks of an incident after the one that opened
  it (unless one beats it), so most of the channels' p-values at a tick are 1: little weak evidence to add.
- The correction is a constant shift of the channels' maximum, so the device's latest score and its held
  peak follow from its channels' state: the highest latest score (or held peak) of its channels, shifted
  the same way. Nothing is added to the detector's state, its checkpoints or its eviction.
A channel capped at score 1 (p <= 1e-10) gives a device 1 - log10(k) / DECADES (0.91 for 8 channels).
"""

from __future__ import annotations

import math

import numpy as np

from streamer.core.kernel import DECADES


def combine(best: np.ndarray | float, channels: np.ndarray | int) -> np.ndarray:
    """The device score of ``channels`` scored channels whose highest score is ``best`` (Bonferroni)."""
    return np.clip(np.asarray(best, dtype=np.float64) - np.log10(channels) / DECADES, 0.0, 1.0)


def tick_scores(device: np.ndarray | None, ts: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per tick, the score of the device reading it belongs to; NaN for a tick without a device or not scored.

    A reading is a run of consecutive ticks with the same device and timestamp (the channels of one
    ``values`` object, which the decoder emits together); its k is the number of those ticks that were
    scored (a channel skipped as out of order is not tested, so it does not count).
    """
    out = np.full(len(score), math.nan)
    if device is None:
        return out
    where = np.flatnonzero(np.fromiter((d is not None for d in device), dtype=bool, count=len(device)))
    if where.size == 0:
        return out
    names, times, scores = device[where], ts[where], score[where]
    starts = np.ones(where.size, dtype=bool)
    starts[1:] = (names[1:] != names[:-1]) | (times[1:] != times[:-1]) | (where[1:] != where[:-1] + 1)
    reading = np.cumsum(starts) - 1
    scored = ~np.isnan(scores)
    count = np.bincount(reading[scored], minlength=reading[-1] + 1)
    best = np.full(count.size, -math.inf)
    np.maximum.at(best, reading[scored], scores[scored])
    combined = np.full(count.size, math.nan)  # a reading without a scored channel has none
    tested = count > 0
    combined[tested] = combine(best[tested], count[tested])
    out[where[scored]] = combined[reading[scored]]
    return out


def device_table(device_of: dict[str, str], latest: np.ndarray,
                 peak: np.ndarray) -> list[tuple[str, float, float]]:
    """(device, latest score, held peak) of every device, from its channels' latest scores and held peaks.

    ``device_of`` maps each channel stream to its device; ``latest`` and ``peak`` are the channels' values in
    the same order. k is the number of the device's channels in memory.
    """
    if not device_of:
        return []
    ids: dict[str, int] = {}
    group = np.fromiter((ids.setdefault(d, len(ids)) for d in device_of.values()), dtype=np.int64,
                        count=len(device_of))
    count = np.bincount(group, minlength=len(ids))
    best_latest = np.full(len(ids), -math.inf)
    best_peak = np.full(len(ids), -math.inf)
    np.maximum.at(best_latest, group, latest)
    np.maximum.at(best_peak, group, peak)
    return list(zip(ids, combine(best_latest, count).tolist(), combine(best_peak, count).tolist()))
