"""The issue's baseline detectors (benchmarks/baselines.py), which `loco.py --baselines` puts next to every
variant: NAB's windowed Gaussian as NAB steps its window, and River's Half-Space Trees scoring before learning."""

from __future__ import annotations

import math

import numpy as np

from benchmarks import baselines


def _nab_stepping(values, window, step):
    """NAB's windowedGaussian, written as its list-based loop: a window that grows to ``window`` values and then
    slides by ``step`` once that many new values are buffered."""
    data, buffer, mean, std, out = [], [], 0.0, 1.0, []
    for x in values:
        out.append(1.0 - 0.5 * math.erfc(abs(x - mean) / std / math.sqrt(2.0)) if data else 0.0)
        if len(data) < window:
            data.append(x)
        else:
            buffer.append(x)
            if len(buffer) < step:
                continue
            data, buffer = data[step:] + buffer, []
        mean, std = float(np.mean(data)), float(np.std(data)) or 1e-6
    return np.array(out)


def test_the_windowed_gaussian_steps_its_window_as_nab_does():
    values = np.random.default_rng(0).normal(size=400).cumsum()
    got = baselines.windowed_gaussian(values, window=50, step=10)
    np.testing.assert_allclose(got, _nab_stepping(list(values), 50, 10), rtol=0, atol=1e-12)
    assert got[0] == 0.0


def test_the_windowed_gaussian_scores_a_far_value_near_one_and_the_mean_near_one_half():
    values = np.r_[np.random.default_rng(1).normal(size=300), 0.0, 50.0]
    scores = baselines.windowed_gaussian(values)
    assert abs(scores[-2] - 0.5) < 0.05
    assert scores[-1] > 0.999999


def test_half_space_trees_score_a_value_in_an_empty_region_above_the_usual_values():
    """Two modes, 0 and 10: a value between them lies in the scaler's range where the trees hold no mass.
    (A value beyond the range the scaler has seen is not news to the trees: it falls in the outermost leaf.)"""
    rng = np.random.default_rng(2)
    values = np.r_[rng.normal(size=1000) * 0.1 + 10.0 * rng.integers(0, 2, size=1000), 5.0]
    scores = baselines.half_space_trees(values)
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores[-1] > np.quantile(scores[500:-1], 0.99)
