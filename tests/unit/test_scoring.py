"""The scoring pieces of the detector: calibrated tails, range novelty, the time-of-day profile, refractory alarms,
one alarm per incident, novel ticks kept out of the tails, the forecast evidence switch."""

import math

import numpy as np
import pytest
import torch

from streamer.config import DetectorSettings
from streamer.core.detector import Detector
from streamer.core.kernel import (
    FORECAST_LEVELS,
    N_SCALARS,
    PROF,
    SEASON_BINS,
    S,
    learn_tail,
    one_alarm_per_incident,
    params,
    tail_decades,
)
from streamer.core.model import Forecaster, ModelSpec, NormaliserSpec
from streamer.core.ticks import Tick

T0 = 1_700_006_400.0  # a UTC midnight
HOUR = 3600.0
_DAY_S = 86400.0


def scores_of(model, values, step=60.0, settings=None, stream="a", start=T0):
    det = Detector(model, settings or DetectorSettings())
    ticks = [Tick(stream, start + step * i, float(v)) for i, v in enumerate(values)]
    return np.concatenate([det.process(ticks[k:k + 500]).score for k in range(0, len(ticks), 500)])


def empirical_rates(sample):
    rates = np.zeros(FORECAST_LEVELS)
    for k, s in enumerate(sample):
        learn_tail(rates, s, 1.0 / (k + 1))
    return rates


# --- the tail estimate ------------------------------------------------------------------------------------


def test_learned_rates_are_the_exceedance_frequencies():
    sample = np.random.default_rng(0).exponential(3.0, 500)
    rates = empirical_rates(sample)
    levels = 2.0 ** np.arange(FORECAST_LEVELS)
    np.testing.assert_allclose(rates, [(sample >= u).mean() for u in levels], atol=1e-12)


def test_tail_at_levels_interpolation_and_pareto_extrapolation():
    rates = np.array([0.5, 0.1, 0.01, 0.001] + [0.0] * (FORECAST_LEVELS - 4))
    at = lambda s: tail_decades(rates, s, 4.0)  # noqa: E731
    assert at(0.5) == 0.0  # below the first level: P = 1
    assert at(2.0) == pytest.approx(1.0) and at(4.0) == pytest.approx(2.0)  # exactly the rates at the levels
    assert at(math.sqrt(8.0)) == pytest.approx(1.5)  # log-log interpolation half way between 2 and 4
    assert at(8.0) == pytest.approx(3.0)  # the largest level ever exceeded
    assert at(32.0) == pytest.approx(3.0 + 4 * 2 * math.log10(2.0))  # two doublings past it: P / 2^(4*2)
    assert np.all(np.diff([at(s) for s in np.geomspace(0.5, 1e4, 200)]) >= -1e-12)


def test_a_level_exceeded_long_ago_does_not_steepen_the_tail():
    """A level's rate decays by a factor each tick and never reaches 0: interpolating towards a level last
    exceeded long ago (1e-9) would make the surprises below it ever rarer. The envelope bounds the fall from
    every lower level at s^-steepest; where the tail is gentler than that, nothing changes."""
    rates = np.zeros(FORECAST_LEVELS)
    rates[:3] = [0.3, 0.044, 1e-9]
    s = math.sqrt(8.0)  # half way between the levels 2 and 4
    assert tail_decades(rates, s, 5.5) > 5.0  # unbounded: the decayed level drags it up
    bound = -math.log10(0.044) + 6.6 * 0.5 * math.log10(2.0)  # Pareto at 6.6 from level 2
    assert tail_decades(rates, s, 5.5, 6.6) == pytest.approx(bound)
    gentle = np.array([0.5, 0.1, 0.01, 0.001] + [0.0] * (FORECAST_LEVELS - 4))  # at most 3.3 a doubling
    for x in (1.5, 3.0, 6.0, 8.0, 40.0):
        assert tail_decades(gentle, x, 4.0, 4.8) == pytest.approx(tail_decades(gentle, x, 4.0))


def test_tail_without_data_is_zero():
    assert tail_decades(np.zeros(FORECAST_LEVELS), 1e6, 4.0) == 0.0
    rates = np.zeros(FORECAST_LEVELS)
    rates[:3] = [1.0, 0.5, 0.25]
    assert tail_decades(rates, 2.0, 4.0) == pytest.approx(math.log10(2.0))


def test_a_weight_of_zero_learns_nothing():
    rates = empirical_rates([3.0, 5.0])
    before = rates.copy()
    learn_tail(rates, 100.0, 0.0)
    np.testing.assert_array_equal(rates, before)


# --- behaviour of the scores ------------------------------------------------------------------------------


def stable(n, seed=0, level=10.0, noise=0.05):
    rng = np.random.default_rng(seed)
    return level + np.sin(np.arange(n) / 8) + rng.normal(0, noise, n)


def test_a_spike_after_a_stable_history_scores_high(model):
    values = stable(400)
    values[300] += 6.0
    scores = scores_of(model, values)
    assert scores[300] >= 0.9  # beyond the range the stream ever had: a certain anomaly
    assert scores[300] > 3 * scores[100:300].max()
    assert np.all((scores >= 0) & (scores <= 1)) and np.all(scores[:50] == 0)


def test_a_repeated_alarm_is_damped(model):
    values = stable(400, seed=1)
    values[300] += 6.0
    values[305] = values[300]  # the same spike again, five ticks later
    scores = scores_of(model, values)
    assert scores[300] >= 0.9
    assert scores[305] < 0.5 * scores[300]


def test_regular_spikes_become_usual(model):
    values = stable(1500, seed=2, noise=0.02)
    values[200::50] += 5.0  # a spike every 50 ticks, the same size each time
    scores = scores_of(model, values)
    spikes = scores[200::50]
    assert spikes[0] >= 0.9  # the first is new
    assert spikes[-5:].max() < 0.5 * spikes[0]  # the stream's own history says they are usual


def test_bursts_from_idle_become_usual_however_far_they_are_beyond_the_idle_noise(model):
    """A stream that idles flat and bursts routinely (disk writes, request counts): idle, the LSTM's predicted
    std collapses, so a burst is a forecast surprise of 10^8-10^9.6 (measured on this stream). Its tail must
    reach that far for the stream to learn that bursts are its normal; one that stopped at 2048 scored every
    burst as unprecedented."""
    rng = np.random.default_rng(3)
    values = np.zeros(3000)
    for start in range(300, 3000, 60):  # a burst of 3 ticks every hour (5-minute ticks)
        values[start:start + 3] = rng.uniform(1e6, 3e6, 3)
    scores = scores_of(model, values, step=300.0)
    onsets = scores[300::60]
    assert onsets[0] >= 0.9  # the first burst is new
    assert onsets[-20:].max() < 0.3  # the last 20 are usual, none alarms at the recommended threshold


def test_a_steady_streams_false_alarms_do_not_grow_with_its_age(model):
    """White noise, 5-minute ticks, eight weeks: no more alarms late in its life than early (measured: 0-2 a
    week, 3 in the second month). Without the tails' envelope the time-of-day evidence's alarms grew from 2
    to 26 a week (87 in the second month): a failure only long streams show (docs/detection.md, eighth round)."""
    week = 7 * 288
    values = 100.0 + np.random.default_rng(2).normal(0.0, 1.0, 8 * week)
    def second_month_alarms(settings):
        return int((scores_of(model, values, step=300.0, settings=settings)[4 * week:] >= 0.3).sum())

    assert second_month_alarms(DetectorSettings()) <= 6
    # the defect the envelope removes (the slow tails, which remember more, hide part of it: 25 without the envelope)
    assert second_month_alarms(DetectorSettings(tail_envelope=0, tail_slow_share=0)) > 40


def test_a_long_lived_stream_remembers_its_rare_surprises(model):
    """Skewed noise (lognormal), 5-minute ticks, eight weeks: its largest values recur further apart than
    `tail_memory` ticks, and a memory of 1,000 ticks forgets them between two. The tails' slow copy, with a
    memory of half the stream's life, remembers them: three such streams raise a quarter fewer alarms in their
    second month (measured: 27 against 36 without it, `tail_slow_share = 0`; docs/detection.md, tenth round)."""
    week = 7 * 288
    streams = [100.0 + np.random.default_rng(seed).lognormal(0.0, 1.0, 8 * week) for seed in (1, 2, 3)]
    def second_month_alarms(share):
        settings = DetectorSettings(tail_slow_share=share)
        return sum(int((scores_of(model, v, step=300.0, settings=settings)[4 * week:] >= 0.3).sum()) for v in streams)

    assert second_month_alarms(0.5) <= 0.8 * second_month_alarms(0.0)


def test_a_missing_daily_pattern_scores_higher_than_normal_days(model):
    hours = np.arange(24 * 24)
    rng = np.random.default_rng(3)
    values = 50 + 20 * np.clip(np.sin(2 * np.pi * (hours % 24) / 24), 0, None) + rng.normal(0, 1, hours.size)
    flat_day = slice(20 * 24, 21 * 24)
    values[flat_day] = 50 + rng.normal(0, 1, 24)  # day 20: the daytime rise never comes (the range is not left)
    scores = scores_of(model, values, step=HOUR)
    assert scores[flat_day].max() > 0.3
    assert scores[flat_day].max() > 1.5 * scores[10 * 24:20 * 24].max()


def square_wave_days(days, step, seed=6):
    """A daily square wave like NAB's art_daily_* files: 20 at night, 80 from 07:00 to 19:00 UTC, noise 2."""
    t = np.arange(int(days * _DAY_S / step)) * step
    hour = (t % _DAY_S) / HOUR
    return np.where((hour >= 7) & (hour < 19), 80.0, 20.0) + np.random.default_rng(seed).normal(0, 2, t.size)


@pytest.mark.parametrize("step", [60.0, 300.0])
def test_the_daily_profile_keeps_the_shape_of_a_daily_pattern_whatever_the_tick_rate(model, step):
    # The profile is kept in the stream's slow units (mean and std over days): a square wave's day hours sit
    # at +1 std and its night hours at -1, at any tick rate. In the LSTM's fast units (a memory of ~100 ticks)
    # a long flat night and a long flat day would both be ~0, and the pattern's shape lost.
    det = Detector(model, DetectorSettings())
    values = square_wave_days(6, step)
    det.process([Tick("a", T0 + step * i, float(v)) for i, v in enumerate(values)])
    bins = det.profile[det.slots["a"], PROF.BIN_MEAN:PROF.BIN_MEAN + SEASON_BINS]
    np.testing.assert_allclose(bins[8:18], 1.0, atol=0.3)
    np.testing.assert_allclose(np.r_[bins[:6], bins[20:]], -1.0, atol=0.3)
    level = det.scalars[det.slots["a"], [S.LEVEL_MEAN, S.LEVEL_VAR]]
    assert level[0] == pytest.approx(50.0, abs=2.0) and math.sqrt(level[1]) == pytest.approx(30.0, abs=2.0)


def test_a_missing_daily_jump_is_seen_on_a_strongly_periodic_stream(model):
    values = square_wave_days(14, 300.0)
    per_day, missing = 288, slice(10 * 288 + 7 * 12, 10 * 288 + 19 * 12)
    values[missing] -= 60.0  # day 10: the daytime jump never comes (the range is not left)
    scores = scores_of(model, values, step=300.0)
    assert scores[missing].max() > 0.35
    assert scores[missing].max() > 1.5 * scores[5 * per_day:10 * per_day].max()


def test_a_young_streams_time_of_day_evidence_is_never_one_ticks(model):
    # Before the stream has covered `season_gate_days`, its hourly bins hold a running level, not a daily
    # profile: one tick's departure from it is the forecaster's to judge, and only the short mean counts. A
    # rig sampled at 1 Hz for 20 minutes (skab's files) is young all its length, in one hourly bin. The
    # forecast and range evidence are off here, so every score is time-of-day evidence.
    rng = np.random.default_rng(4)
    values = 50 + rng.normal(0, 1, 1200)
    values[800] += 6.0
    off = {"forecast_evidence": False, "range_evidence": False}
    young = scores_of(model, values, step=1.0, settings=DetectorSettings(**off), start=T0 + 300)
    grown = scores_of(model, values, step=1.0, settings=DetectorSettings(**off, season_gate_days=0.001),
                      start=T0 + 300)  # past its "first day" after 86 seconds: one tick's surprise counts
    assert grown[800] > 0.35
    assert young[800] < grown[800] - 0.1  # its short mean only
    assert young[800] > young[300:790].max()  # which still sees it


def hold_reference(raw, ticks, hold):
    """The incident rule, written out: a tick scores if it beats the score that opened or last raised the
    incident, or if that was more than ``ticks`` ticks ago, counting from the last tick that scored at least
    ``hold`` of it (the incident still open); else 0."""
    out, held, age = np.zeros_like(raw), 0.0, 0
    for i, s in enumerate(raw):
        age += 1
        if s > 0 and (s > held or age > ticks):
            out[i], held, age = s, s, 0
        elif hold > 0 and s > 0 and s >= hold * held:
            age = 0
    return out


def test_an_incident_lasts_as_long_as_its_evidence():
    raw = [0.6] + [0.25] * 30 + [0.05] * 13 + [0.25]  # an alarm, 30 ticks of evidence at 0.25, calm, 0.25 again
    def filtered(hold):
        st, p = np.zeros(N_SCALARS), params(DetectorSettings(incident_ticks=12, incident_hold=hold), NormaliserSpec())
        return np.array([one_alarm_per_incident(st, s, True, p) for s in raw])
    held = filtered(0.3)
    assert held[0] == 0.6 and held[1:31].max() == 0.0  # one alarm while the evidence lasts
    assert held[-1] == 0.25  # a new incident after 12 calm ticks
    assert filtered(0.0)[13] == 0.25  # without the hold, the same evidence re-alarms 12 ticks later
    np.testing.assert_array_equal(held, hold_reference(np.array(raw), 12, 0.3))


def test_one_incident_one_alarm(model):
    values = stable(700, seed=7, noise=0.1)
    values[300] += 6.0
    values[305] = values[300]  # the same spike again within the incident: no new alarm
    values[500] -= 6.0  # a new incident far later: a full alarm
    raw = scores_of(model, values, settings=DetectorSettings(incident_ticks=0))
    held = scores_of(model, values, settings=DetectorSettings(incident_ticks=12, incident_hold=0.3))
    assert raw[300] >= 0.9 and held[300] == raw[300]
    assert held[305] == 0.0 and held[301:313].max() == 0.0
    assert held[500] >= 0.9
    np.testing.assert_array_equal(held, hold_reference(raw, 12, 0.3))  # a pure filter of the raw scores


def test_flat_and_quantised_streams(model):
    values = np.full(600, 7.0)
    scores = scores_of(model, values)
    assert np.all(np.isfinite(scores)) and scores.max() == 0.0
    values[500:] = 7.5  # one quantum up, for good
    scores = scores_of(model, values)
    assert scores[500] >= 0.9
    assert scores[510:].max() < 0.5  # the new level is not alarmed on every tick


def test_a_reset_stream_scores_like_a_fresh_one_including_the_daily_profile(model):
    det = Detector(model, DetectorSettings())
    first = [Tick("a", T0 + HOUR * i, float(v), segment="x") for i, v in enumerate(stable(300, seed=4))]
    second = [Tick("a", T0 + HOUR * (300 + i), float(v), segment="y") for i, v in enumerate(stable(300, seed=5))]
    det.process(first)
    again = det.process(second).score
    fresh = Detector(model, DetectorSettings()).process([Tick("b", t.ts, t.value, t.segment) for t in second]).score
    np.testing.assert_allclose(again, fresh, atol=1e-9)
    assert det.profile[det.slots["a"], PROF.BIN_COUNT:PROF.BIN_COUNT + SEASON_BINS].sum() == 300


def test_a_novel_tick_is_learned_neither_into_the_surprise_tails_nor_into_the_slow_level(model):
    values = stable(600, seed=8)
    values[500] += 20.0  # far beyond the range: a certain anomaly
    det = Detector(model, DetectorSettings())
    ticks = [Tick("a", T0 + 60.0 * i, float(v)) for i, v in enumerate(values)]
    det.process(ticks[:500])
    slot = det.slots["a"]
    learned = lambda: np.r_[det.profile[slot, PROF.FORECAST_TAIL:PROF.BIN_MEAN],  # noqa: E731
                            det.scalars[slot, [S.LEVEL_MEAN, S.LEVEL_VAR]]]
    before = learned()
    assert det.process(ticks[500:501]).score[0] >= 0.9
    # the anomaly neither taught the stream that spikes are usual nor inflated its slow deviation
    np.testing.assert_array_equal(learned(), before)
    assert det.profile[slot, PROF.BIN_COUNT:PROF.BIN_COUNT + SEASON_BINS].sum() == 501  # it is in the daily profile
    det.process(ticks[501:502])  # an ordinary tick is learned
    after = learned()
    assert not np.array_equal(after[:-2], before[:-2]) and not np.array_equal(after[-2:], before[-2:])


def test_without_forecast_evidence_the_scores_do_not_depend_on_the_forecaster(model):
    torch.manual_seed(0)
    other = Forecaster.random(ModelSpec(hidden_size=8))  # untrained: forecasts nothing useful
    values = stable(700, seed=9, noise=0.2)
    values[400] += 1.5  # inside the range: scored by the tails only
    off = DetectorSettings(forecast_evidence=False)
    np.testing.assert_array_equal(scores_of(model, values, settings=off), scores_of(other, values, settings=off))
    on = DetectorSettings(forecast_evidence=True)
    assert not np.array_equal(scores_of(model, values, settings=on), scores_of(other, values, settings=on))


def test_gated_novelty_a_trends_new_extremes_are_no_anomaly_a_jump_still_is(model):
    trend = 0.01 * np.arange(3000) + np.random.default_rng(10).standard_normal(3000)
    trend[2500] += 30.0  # far beyond anything the trend leads up to

    def gate(decades):  # from the first tick: the young streams' gate is the next test's
        return DetectorSettings(novelty_gate=decades, novelty_gate_young=decades)

    ungated = scores_of(model, trend, settings=gate(0.0))
    strict = scores_of(model, trend, settings=gate(100.0))  # no surprise is enough
    gated = scores_of(model, trend, settings=gate(1.0))
    assert (ungated[:2500] >= 0.99).sum() >= 3 and (strict[:2500] >= 0.99).sum() == 0
    assert gated[2500] >= 0.9 and ungated[2500] >= 0.9
    # without the LSTM's evidence the gate is off with it: novelty scores as before
    off = dict(forecast_evidence=False)
    np.testing.assert_array_equal(scores_of(model, trend, settings=DetectorSettings(novelty_gate=0.0, **off)),
                                  scores_of(model, trend, settings=DetectorSettings(novelty_gate=100.0, **off)))


def test_a_young_streams_new_extremes_need_a_strong_forecast_surprise(model):
    # In its first `season_gate_days` a stream's range is a few hours' range, which a walk leaves routinely:
    # its new extremes count only with `novelty_gate_young` decades of the LSTM's surprise. A jump still does.
    walk = 50 + np.cumsum(np.random.default_rng(2).normal(0, 0.2, 1200))  # 20 hours of minutes: young
    walk[1000] += 8.0
    plain = scores_of(model, walk, settings=DetectorSettings(novelty_gate_young=1.0))  # as when older
    young = scores_of(model, walk)
    assert (plain[:1000] >= 0.99).sum() >= 2
    assert (young[:1000] >= 0.3).sum() == 0
    assert young[1000] >= 0.5 and plain[1000] >= 0.5


def test_a_flat_streams_step_passes_the_novelty_gate(model):
    values = np.full(600, 7.0)
    values[500:] = 7.5  # its forecast surprise never reached 1 before: no history says this is usual
    assert scores_of(model, values, settings=DetectorSettings(novelty_gate=100.0))[500] >= 0.9
