"""Per-device scores: the Bonferroni combination, its calibration, how ticks group into readings, and the
detector's and the metrics' use of it."""

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer.config import DetectorSettings, TickSettings
from streamer.core import devices
from streamer.core.detector import Detector
from streamer.core.kernel import DECADES, S
from streamer.core.ticks import TickBatch, TickDecoder
from streamer.daemon.metrics import Metrics, ScoreSnapshot

T0 = 1_700_000_000.0


def channel_scores(p: np.ndarray) -> np.ndarray:
    """The kernel's score of a tail probability: -log10(p) / DECADES, capped at 1."""
    return np.minimum(1.0, -np.log10(p) / DECADES)


def test_a_device_score_means_the_rarity_a_channel_score_means():
    """One threshold, the same rarity: with independent channels a device reading passes 0.3 about as often
    as one channel's tick does (1 in 1,000), and with fully dependent channels less often (conservative)."""
    rng = np.random.default_rng(16)
    readings, k = 400_000, 8
    p = rng.uniform(size=(readings, k))
    independent = devices.combine(channel_scores(p).max(axis=1), k)
    assert 0.85e-3 < np.mean(independent >= 0.3) < 1.15e-3
    assert 0.85e-3 < np.mean(channel_scores(p[:, 0]) >= 0.3) < 1.15e-3
    same = devices.combine(channel_scores(p[:, 0]), k)  # every channel says the same
    assert np.mean(same >= 0.3) < 0.2e-3


def test_combine_shifts_the_best_channel_by_log10_k_decades_within_the_unit_interval():
    assert devices.combine(0.5, 8) == pytest.approx(0.5 - math.log10(8) / DECADES)
    assert devices.combine(0.5, 1) == 0.5
    np.testing.assert_allclose(devices.combine(np.array([0.05, 1.0]), np.array([8, 8])),
                               [0.0, 1 - math.log10(8) / DECADES])


def test_a_reading_is_a_run_of_ticks_of_one_device_and_timestamp():
    device = np.array([None, "p", "p", "p", "q", "q", "p", "p", None, "p"], dtype=object)
    ts = np.array([1, 1, 1, 1, 1, 1, 2, 2, 2, 3], dtype=float)
    score = np.array([0.9, 0.5, 0.1, np.nan, 0.2, 0.05, 0.3, 0.3, 0.1, np.nan])
    got = devices.tick_scores(device, ts, score)
    two = math.log10(2) / DECADES
    np.testing.assert_allclose(got, [np.nan, 0.5 - two, 0.5 - two, np.nan, 0.2 - two, 0.2 - two, 0.3 - two,
                                     0.3 - two, np.nan, np.nan])  # out of order (NaN): neither scored nor counted
    assert np.isnan(devices.tick_scores(None, ts, score)).all()


def test_the_device_table_combines_each_devices_channels():
    table = devices.device_table({"p/a": "p", "q/a": "q", "p/b": "p"}, np.array([0.1, 0.4, 0.3]),
                                 np.array([0.6, 0.4, 0.3]))
    two = math.log10(2) / DECADES
    assert [name for name, _, _ in table] == ["p", "q"]
    np.testing.assert_allclose([row[1:] for row in table], [[0.3 - two, 0.6 - two], [0.4, 0.4]])
    assert devices.device_table({}, np.zeros(0), np.zeros(0)) == []


def pump(n: int, spike_at: int) -> list[bytes]:
    """A device of four channels, one reading a minute; channel "b" jumps at ``spike_at``."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        values = {name: float(10 + k + np.sin(i / (6 + k)) + rng.normal(0, 0.05)) for k, name in enumerate("abcd")}
        if i == spike_at:
            values["b"] += 8
        out.append(TickDecoder(TickSettings()).encode("pump", T0 + 60 * i, values))
    return out


def decode(messages: list[bytes]) -> TickBatch:
    return TickDecoder(TickSettings()).decode_batch(messages, lambda m: m, lambda m: None).ticks


def test_the_detector_scores_each_reading_of_a_device(model):
    messages = pump(200, spike_at=180)
    settings = DetectorSettings(warmup=20, peak_hold_seconds=7200)  # the spike's peak still held at the end
    det = Detector(model, settings)
    det.process(TickBatch(["other"], np.array([T0]), np.array([1.0])))  # a plain stream is no device
    results = [det.process(decode(messages[k:k + 30])) for k in range(0, 200, 30)]  # readings stay whole
    score = np.concatenate([r.score for r in results]).reshape(200, 4)
    device_score = np.concatenate([r.device_score for r in results]).reshape(200, 4)
    np.testing.assert_array_equal(device_score, np.repeat(devices.combine(score.max(axis=1), 4)[:, None], 4, 1))
    assert score[180, 1] > 0.3 and device_score[180, 0] > 0.3 - math.log10(4) / DECADES
    # In one batch, the same scores.
    whole = Detector(model, settings)
    np.testing.assert_array_equal(whole.process(decode(messages)).device_score, device_score.ravel())

    [(name, latest, peak)] = det.top_devices(10)
    channels = [det.slots[f"pump/{c}"] for c in "abcd"]
    assert name == "pump" and latest == devices.combine(score[-1].max(), 4)
    assert peak == devices.combine(det.scalars[channels, S.PEAK].max(), 4) == device_score[180, 0]
    assert det.top_devices(0) == []
    for c in "abcd":
        det.forget(f"pump/{c}")
    assert det.top_devices(10) == []


def test_top_devices_keeps_the_highest_held_peaks(model):
    det = Detector(model, DetectorSettings(warmup=20))
    messages = [TickDecoder(TickSettings()).encode(f"d{i}", T0, {"x": 1.0, "y": 2.0}) for i in range(5)]
    det.process(decode(messages))
    for i in range(5):
        det.scalars[det.slots[f"d{i}/x"], S.PEAK] = 0.1 * (i + 1)
    assert sorted(name for name, _, _ in det.top_devices(2)) == ["d3", "d4"]


def test_device_series_come_from_the_snapshot():
    registry = CollectorRegistry()
    Metrics(registry).watch_scores(lambda: ScoreSnapshot([("pump/a", 0.2, 0.9)], 0.9, 4, [("pump", 0.1, 0.8)]))
    assert registry.get_sample_value("streamer_device_score", {"device": "pump"}) == 0.1
    assert registry.get_sample_value("streamer_device_score_peak", {"device": "pump"}) == 0.8
    assert registry.get_sample_value("streamer_device_score", {"device": "pump/a"}) is None
