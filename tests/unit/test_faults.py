"""The fault generator: each kind does what its documentation says, in place, labelled, reproducibly."""

import numpy as np
import pytest

from streamer.devtools.faults import (
    ENERGY_KINDS,
    MARKET_KINDS,
    SPANS,
    Fault,
    faults_json,
    inject,
    read_faults,
    windows_json,
)

START = 1_381_190_400.0  # 2013-10-08 00:00 UTC, a Tuesday


def market(n=6000, seed=0):
    ts = START + 60.0 * np.arange(n)
    values = 170 + np.cumsum(np.random.default_rng(seed).normal(0, 0.02, n))
    return ts, values


def half_hourly(days=28):
    ts = START - 86400 + 1800.0 * np.arange(48 * days)  # from a Monday
    hour = (ts % 86400) / 3600
    weekend = ((ts // 86400 + 3) % 7) >= 5
    return ts, 30000 + 8000 * np.sin(np.pi * hour / 24) - 6000 * weekend


def rows_of(ts, values):
    return list(zip(ts.tolist(), values.tolist()))


def test_same_seed_same_faults_and_the_inputs_untouched():
    ts, values = market()
    kept = values.copy()
    first = inject(ts, values, MARKET_KINDS, 2, seed=7)
    again = inject(ts, values, MARKET_KINDS, 2, seed=7)
    other = inject(ts, values, MARKET_KINDS, 2, seed=8)
    assert rows_of(*first[:2]) == rows_of(*again[:2]) and first[2] == again[2]
    assert first[2] != other[2]
    assert np.array_equal(values, kept)


def test_faults_never_overlap_and_keep_the_guard_apart():
    ts, values = market()
    _, _, faults = inject(ts, values, MARKET_KINDS, 3, seed=1, guard=50)
    assert sorted(f.kind for f in faults) == sorted(list(MARKET_KINDS) * 3)
    for before, after in zip(faults, faults[1:]):
        assert after.start_ts - before.end_ts > 50 * 60  # 50 untouched minute ticks between


def test_value_faults_change_only_their_span():
    ts, values = market()
    kinds = ("unit_x100", "unit_div100", "unit_x10", "fat_finger", "glitch", "stale")
    new_ts, new_values, faults = inject(ts, values, kinds, 3, seed=2)
    assert np.array_equal(new_ts, ts)
    changed = new_values != values
    for fault in faults:
        span = (ts >= fault.start_ts) & (ts <= fault.end_ts)
        ratio = new_values[span] / values[span]
        if fault.kind == "unit_x100":
            assert np.allclose(ratio, 100) and SPANS["unit_x100"][0] <= span.sum() <= SPANS["unit_x100"][1]
        elif fault.kind == "unit_div100":
            assert np.allclose(ratio, 0.01)
        elif fault.kind == "unit_x10":
            assert np.allclose(ratio, 10) and 1 <= span.sum() <= 5
        elif fault.kind == "fat_finger":
            assert span.sum() == 1 and 0.015 <= abs(ratio[0] - 1) <= 0.04
        elif fault.kind == "glitch":  # five prices off by one factor
            assert span.sum() == 5 and np.allclose(ratio, ratio[0]) and 0.015 <= abs(ratio[0] - 1) <= 0.04
        else:  # stale: the price before the span, repeated
            before = np.flatnonzero(span)[0] - 1
            assert 10 <= span.sum() <= 30 and np.all(new_values[span] == values[before])
        changed &= ~span
    assert not changed.any()


def test_late_duplicate_and_halt_change_the_rows():
    ts, values = market()
    new_ts, new_values, faults = inject(ts, values, ("late", "duplicate", "halt"), 2, seed=3)
    base = dict(rows_of(ts, values))
    repeated = np.flatnonzero(new_ts[1:] <= np.maximum.accumulate(new_ts)[:-1]) + 1  # late or repeated rows
    assert len(repeated) == 4
    assert all(base[new_ts[i]] == new_values[i] for i in repeated)  # a real old tick, re-sent as it was
    arrivals = sorted(new_ts[i - 1] for i in repeated)  # each arrives right after the tick it is labelled at
    assert arrivals == sorted(f.start_ts for f in faults if f.kind in ("late", "duplicate"))
    missing = sorted(set(ts.tolist()) - set(new_ts.tolist()))
    halts = [f for f in faults if f.kind == "halt"]
    assert len(new_ts) == len(ts) + 4 - len(missing) and len(missing) >= 2 * SPANS["halt"][0]
    assert all(any(h.start_ts <= t < h.end_ts for h in halts) for t in missing)
    assert all(h.end_ts in set(new_ts.tolist()) and h.start_ts in missing for h in halts)


def test_energy_faults():
    ts, values = half_hourly()
    new_ts, new_values, faults = inject(ts, values, ENERGY_KINDS, 1, seed=4, guard=48)
    assert np.array_equal(new_ts, ts)
    by_kind = {f.kind: (ts >= f.start_ts) & (ts <= f.end_ts) for f in faults}
    assert np.all(new_values[by_kind["dropout"]] == 0)
    stuck = new_values[by_kind["stuck"]]
    assert np.all(stuck == stuck[0]) and 12 <= len(stuck) <= 48
    shift = new_values[by_kind["level_shift"]] - values[by_kind["level_shift"]]
    assert np.allclose(shift, shift[0]) and abs(shift[0]) >= 0.2 * np.ptp(np.percentile(values, [5, 95]))
    day = by_kind["missing_weekly"]
    assert day.sum() == 48 and ((ts[day][0] // 86400 + 3) % 7) < 5 and ts[day][0] % 86400 == 0
    weekday = int((ts[day][0] // 86400 + 3) % 7)
    sunday = np.flatnonzero(day) - 48 * (weekday + 1)
    assert ((ts[sunday[0]] // 86400 + 3) % 7) == 6 and np.array_equal(new_values[day], values[sunday])


def test_only_eligible_ticks_are_touched_and_no_room_is_an_error():
    ts, values = market()
    eligible = (ts - START) % 86400 >= 43200  # afternoons only
    _, new_values, faults = inject(ts, values, ("fat_finger", "stale"), 4, seed=5, guard=10, eligible=eligible)
    assert np.all(new_values[~eligible] == values[~eligible]) and len(faults) == 8
    with pytest.raises(ValueError, match="no room"):
        inject(ts[:400], values[:400], MARKET_KINDS, 2, seed=5)
    with pytest.raises(ValueError, match="unknown fault kinds"):
        inject(ts, values, ("spike",), 1, seed=5)


def test_labels_round_trip_and_nab_windows_have_an_offset(tmp_path):
    faults = {"SPY": [Fault("stale", START, START + 600)]}
    faults_json(faults, tmp_path / "f.json")
    assert read_faults(tmp_path / "f.json") == faults
    assert windows_json(faults) == {"SPY": [["2013-10-08T00:00:00+00:00", "2013-10-08T00:10:00+00:00"]]}
