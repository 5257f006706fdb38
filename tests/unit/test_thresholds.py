"""The alert-threshold table's counts (benchmarks/thresholds.py): what a fixed threshold catches and what it
raises outside the labelled windows, counted as NAB counts them (nothing in the probationary period)."""

from __future__ import annotations

import numpy as np

from benchmarks.thresholds import alarm_counts
from benchmarks.windows import first_alarms
from streamer.offline import nab


def _series(alarms: dict[int, float], windows: list[tuple[int, int]], rows: int = 100) -> nab.Series:
    scores = np.zeros(rows)
    for row, score in alarms.items():
        scores[row] = score
    return nab.Series("f", scores, windows)


def test_windows_caught_and_alarms_outside_them_past_the_probationary_period():
    # 100 rows: the first 15 are probationary
    series = _series({5: 1.0, 20: 0.5, 45: 0.3, 85: 0.29, 95: 0.9}, [(40, 49), (80, 89)])
    assert alarm_counts([series], 0.3) == (1, 2, 2, 85)  # row 45 catches the first window; 20 and 95 are outside
    assert alarm_counts([series], 0.29) == (2, 2, 2, 85)
    assert alarm_counts([series], 0.6) == (0, 2, 1, 85)


def test_an_alarm_in_the_probationary_period_catches_nothing_even_inside_a_window():
    early = _series({12: 1.0}, [(10, 19)])
    assert alarm_counts([early], 0.3) == (0, 1, 0, 85)
    later = _series({12: 1.0, 17: 1.0}, [(10, 19)])
    assert alarm_counts([later, early], 0.3) == (1, 2, 0, 170)


def test_each_window_shows_where_its_first_alarm_fell():
    # windows of 10 rows: the first alarm's row within its window, over 10; a window without one is None
    series = _series({5: 1.0, 20: 0.5, 43: 0.3, 47: 0.9, 95: 0.9}, [(40, 49), (80, 89)])
    assert first_alarms(series, 0.3) == ([0.3, None], 2)
    assert first_alarms(series, 0.6) == ([0.7, None], 1)
