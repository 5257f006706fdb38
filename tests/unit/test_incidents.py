"""The incident report and the median/MAD baseline: pure functions on hand-made series."""

import numpy as np

from streamer.devtools.faults import Fault
from streamer.devtools.incidents import median_mad_rule, merge, report


def test_caught_faults_delays_and_false_alarm_episodes():
    ts = np.arange(0.0, 1000.0, 10.0)
    scores = np.zeros(len(ts))
    scores[[12, 13]] = 0.5  # at 120, 130: inside the first fault (100-150)
    scores[41] = 0.9  # at 410: 10 s after the second fault's end, within the slack
    scores[[70, 72, 75]] = 0.4  # 700, 720, 750: one false episode (gaps 20 and 30 <= slack 30)
    scores[90] = 0.3  # 900: a second false episode
    scores[95] = np.nan  # a skipped row raises no alarm
    faults = [Fault("spike", 100, 150), Fault("spike", 380, 400), Fault("stale", 500, 600)]
    r = report(ts, scores, 0.3, faults, slack_s=30)
    assert (r.kinds["spike"].n, r.kinds["spike"].caught, r.kinds["spike"].delays) == (2, 2, [20.0, 30.0])
    assert (r.kinds["stale"].caught, np.isnan(r.kinds["stale"].median_delay_s)) == (0, True)
    assert (r.episodes, r.false_alarm_episodes, r.false_alarm_times) == (4, 2, [700.0, 900.0])
    assert r.precision == 0.5 and r.kinds["spike"].recall == 1.0 and r.kinds["spike"].max_delay_s == 30.0
    assert report(ts, scores, 0.95, faults, slack_s=30).episodes == 0  # nothing reaches the threshold


def test_merge_adds_streams():
    ts = np.arange(10.0)
    one = report(ts, np.r_[np.zeros(5), 1, np.zeros(4)], 0.5, [Fault("x", 5, 5)], 0)
    two = report(ts, np.r_[1, np.zeros(9)], 0.5, [Fault("x", 8, 9)], 0)
    total = merge([one, two])
    assert (total.kinds["x"].n, total.kinds["x"].caught, total.episodes, total.false_alarm_episodes) == (2, 1, 2, 1)


def test_median_mad_rule_flags_a_spike_from_the_past_window_only():
    rng = np.random.default_rng(0)
    values = 100 + rng.normal(0, 1, 500)
    values[300] = 130  # 30 sigma
    ts = np.arange(500.0)
    scores = median_mad_rule(ts, values, window=60, z=8)
    assert np.all(scores[:60] == 0) and np.flatnonzero(scores).tolist() == [300]
    # causal: what follows a row does not change its score
    assert np.array_equal(median_mad_rule(ts[:301], values[:301]), scores[:301])


def test_median_mad_rule_skips_late_rows_and_flags_any_change_of_a_flat_window():
    ts = np.r_[np.arange(100.0), 50.0, 100.0]  # a late tick (50), then the next one
    values = np.r_[np.full(100, 7.0), 7.0, 7.5]
    scores = median_mad_rule(ts, values, window=20, z=8)
    assert np.isnan(scores[100]) and scores[101] == 1 and np.nansum(scores) == 1
