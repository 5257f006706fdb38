"""The pure detector core: batching invariance, resets, ordering, eviction and score properties."""

from collections import Counter

import numpy as np
import pytest

from streamer.config import DetectorSettings, ResetRules
from streamer.core.detector import OUT_OF_ORDER, SCORED, Detector, StreamStates
from streamer.core.kernel import EVIDENCE_KINDS
from streamer.core.ticks import Tick, TickBatch
from streamer.offline.train_command import MAX_STATE_FLOATS

T0 = 1_700_000_000.0


def series(stream, n, seed=0, start=0, anomaly_at=None, segment=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        v = 10 + np.sin(i / 8) + rng.normal(0, 0.05)
        if anomaly_at is not None and anomaly_at <= i < anomaly_at + 5:
            v += 6
        out.append(Tick(stream, T0 + 60 * i, float(v), segment))
    return out


def interleave(*streams):
    return sorted((t for s in streams for t in s), key=lambda t: (t.ts, t.stream))


def run(detector, ticks, batch, rules=None):
    parts = [detector.process(ticks[k:k + batch], rules) for k in range(0, len(ticks), batch)]
    return np.concatenate([p.score for p in parts]), parts


@pytest.fixture
def settings():
    return DetectorSettings(warmup=20)


def test_scores_do_not_depend_on_batching(model, settings):
    """Exactly: each tick's arithmetic is the same whatever else is in its batch (one stream at a time)."""
    ticks = interleave(series("a", 300, 1), series("b", 300, 2), series("c", 200, 3, anomaly_at=150))
    _, whole = run(Detector(model, settings), ticks, batch=len(ticks))
    for batch in (1, 7, 256):
        _, parts = run(Detector(model, settings), ticks, batch=batch)
        for name in ("score", "error", "forecast"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]),
                                          getattr(whole[0], name), err_msg=f"{name}, batches of {batch}")


def test_resets_are_judged_against_the_previous_accepted_tick_in_the_batch_or_before(model, settings):
    """An out-of-order tick in between neither resets nor becomes the "previous tick" of the next one."""
    rules = ResetRules(max_gap_seconds=120)
    ticks = [Tick("a", T0, 1.0, "x"), Tick("b", T0, 2.0), Tick("a", T0 - 10, 1.0, "y"),  # late: skipped
             Tick("a", T0 + 60, 1.0, "x"), Tick("b", T0 + 600, 2.0),  # a: no change; b: a gap of 600 s
             Tick("a", T0 + 30, 1.0, "z"), Tick("a", T0 + 120, 1.0, "z")]  # late again; then a segment change
    want_outcome = [SCORED, SCORED, OUT_OF_ORDER, SCORED, SCORED, OUT_OF_ORDER, SCORED]
    want_reset = [False, False, False, False, True, False, True]
    for batch in (len(ticks), 1, 2, 3):
        det = Detector(model, settings)
        parts = [det.process(ticks[k:k + batch], rules) for k in range(0, len(ticks), batch)]
        assert np.concatenate([p.outcome for p in parts]).tolist() == want_outcome, batch
        assert np.concatenate([p.reset for p in parts]).tolist() == want_reset, batch
        assert sum((p.resets for p in parts), Counter()) == {"gap": 1, "segment": 1}, batch


def test_a_tick_batch_joined_from_parts_scores_as_the_list_of_ticks(model, settings):
    """The daemon joins one TickBatch per partition (segments and resets only where a part has them)."""
    plain = interleave(series("a", 120, 1), series("b", 120, 2))
    marked = series("c", 60, 3, segment="s1") + series("c", 60, 4, start=60, segment="s2")
    marked[90] = Tick("c", marked[90].ts, marked[90].value, "s2", reset=True)
    want = Detector(model, settings).process(plain + marked)
    got = Detector(model, settings).process(TickBatch.join([TickBatch.of(plain), TickBatch.of(marked)]))
    for name in ("score", "error", "forecast", "outcome", "reset_code"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.resets == want.resets == {"segment": 1, "explicit": 1}


def test_scores_are_in_unit_interval_and_zero_during_warmup(model, settings):
    scores, _ = run(Detector(model, settings), series("a", 300, anomaly_at=200), batch=64)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(scores[:20] == 0)


def test_anomaly_scores_higher_than_clean_history(model, settings):
    ticks = series("a", 400, seed=4, anomaly_at=300)
    scores, _ = run(Detector(model, settings), ticks, batch=100)
    assert scores[300:305].max() > 0.3
    assert scores[300:305].max() > 2 * scores[100:300].max()


@pytest.mark.parametrize("only, kind", [
    ({}, None),
    ({"range_evidence": False, "season_evidence": False}, "forecast"),
    ({"range_evidence": False, "forecast_evidence": False}, "time_of_day"),
])
def test_each_score_names_the_kind_of_evidence_that_made_it(model, only, kind):
    """A score above 0 names its evidence (score records and `streamer score` carry it to the operator); a
    score of 0 names none. With one kind left on, every score is that kind's."""
    result = Detector(model, DetectorSettings(warmup=20, **only)).process(series("a", 400, seed=4, anomaly_at=300))
    names = np.array(EVIDENCE_KINDS)[result.evidence]
    positive = result.score > 0
    assert positive[300:305].any()
    assert np.all((names == "") == ~positive)
    if kind is None:  # all on: the jump of +6 leaves the stream's range, which is certain evidence
        assert result.score[300] == 1.0 and names[300] == "range"
    else:
        assert set(names[positive]) == {kind}


def test_reset_makes_a_stream_identical_to_a_fresh_one(model, settings):
    before = series("a", 150, seed=5, segment="s1")
    after = series("a", 150, seed=6, start=150, segment="s2")
    det = Detector(model, settings)
    _, parts = run(det, before + after, batch=97)
    reset_scores = np.concatenate([p.score for p in parts])[150:]
    assert sum(p.resets["segment"] for p in parts) == 1
    fresh = [Tick("b", t.ts, t.value, t.segment) for t in after]
    fresh_scores, _ = run(Detector(model, settings), fresh, batch=50)
    np.testing.assert_allclose(reset_scores, fresh_scores, atol=1e-6)


def test_reset_reasons(model, settings):
    det = Detector(model, settings)
    rules = ResetRules(max_gap_seconds=120)
    base = [Tick("a", T0, 1.0), Tick("a", T0 + 60, 1.0)]
    result = det.process(base + [
        Tick("a", T0 + 120, 1.0, reset=True),       # explicit
        Tick("a", T0 + 180, 1.0, segment="x"),      # segment change (None -> "x")
        Tick("a", T0 + 1000, 1.0, segment="x"),     # gap of 820 s > 120
        Tick("a", T0 + 1060, 1.0, segment="x"),     # nothing
    ], rules)
    assert dict(result.resets) == {"explicit": 1, "segment": 1, "gap": 1}
    assert result.reset.tolist() == [False, False, True, True, True, False]
    assert result.reset_code.tolist() == [0, 0, 1, 2, 4, 0]  # per tick: RESET_REASONS[code - 1]
    assert [result.reset_reason(i) for i in range(6)] == ["", "", "explicit", "segment", "gap", ""]


def test_session_boundary_resets_at_local_session_start(model, settings):
    rules = ResetRules(session_timezone="America/New_York", session_start="09:30")
    # 2024-03-04 is a Monday; 14:29 UTC = 09:29 EST, 14:30 UTC = 09:30 EST
    ts = [1709562540.0, 1709562600.0, 1709562660.0, 1709562600.0 + 86400]
    det = Detector(model, settings)
    result = det.process([Tick("spy", t, 100.0) for t in ts], rules)
    assert result.reset.tolist() == [False, True, False, True]
    assert result.reset_code.tolist() == [0, 3, 0, 3]
    assert result.resets["session"] == 2


def test_reset_codes_that_start_a_new_stream_are_the_explicit_and_segment_ones():
    from streamer.core import kernel
    from streamer.core.detector import RESET_REASONS

    assert RESET_REASONS[:kernel.NEW_STREAM] == ("explicit", "segment")


def test_a_session_or_gap_reset_restarts_the_lstm_and_keeps_the_calibration(model, settings):
    """After a night or an outage the same stream continues: its LSTM state starts again (h, c zero before the
    step), its statistics stay (no new warm-up: the next ticks score), unlike an explicit reset."""
    rules = ResetRules(max_gap_seconds=3600)
    ticks = series("a", 100)
    later = [Tick("a", t.ts + 86400, t.value) for t in series("a", 5, start=100)]
    kept, fresh = Detector(model, settings), Detector(model, settings)
    kept.process(ticks, rules)
    fresh.process(ticks, rules)
    gap = kept.process(later, rules)
    explicit = fresh.process([Tick("a", later[0].ts, later[0].value, reset=True)] + later[1:], rules)
    assert gap.resets == Counter({"gap": 1}) and explicit.resets == Counter({"explicit": 1})
    slot = kept.slots["a"]
    assert kept.scalars[slot, 0] == 105  # N: the stream's ticks keep counting
    assert not np.isnan(gap.forecast[0])  # the forecast made before the gap is scored
    assert np.isnan(explicit.forecast[0]) and fresh.scalars[fresh.slots["a"], 0] == 5
    # The same as zeroing h and c by hand and going on without a reset.
    by_hand = Detector(model, settings)
    by_hand.process(ticks, rules)
    by_hand.h[by_hand.slots["a"]] = 0.0
    by_hand.c[by_hand.slots["a"]] = 0.0
    same = by_hand.process(later, ResetRules())
    np.testing.assert_array_equal(same.forecast, gap.forecast)
    np.testing.assert_array_equal(same.score, gap.score)


def test_out_of_order_and_duplicate_ticks_are_skipped_without_stepping(model, settings):
    det = Detector(model, settings)
    ticks = series("a", 60)
    first = det.process(ticks[:50])
    state = det.export(["a"])
    late = det.process([ticks[10], Tick("a", ticks[49].ts, 99.0)])  # older, then a duplicate timestamp
    assert late.outcome.tolist() == [OUT_OF_ORDER, OUT_OF_ORDER]
    assert np.isnan(late.score).all()
    after = det.export(["a"])
    for field in StreamStates.ARRAYS:
        np.testing.assert_array_equal(getattr(after, field), getattr(state, field))
    assert (first.outcome == SCORED).all()


def test_each_topic_is_scored_with_its_own_settings(model, settings):
    """`detector.topics`: one detector scores a prices topic without range and time-of-day evidence, exactly as
    a detector configured so would, and every other topic with the settings above it; streams of both stay
    apart, whatever order their batches come in."""
    prices = {"range_evidence": False, "season_evidence": False, "equal_timestamps": True}
    both = Detector(model, settings.model_copy(update={"topics": {"bars": DetectorSettings(**prices)}}))
    sensor, bar = series("sensor", 400, seed=4, anomaly_at=300), series("bar", 400, seed=4, anomaly_at=300)
    got = {"sensor": [], "bar": []}
    for k in range(0, 400, 100):
        got["bar"].append(both.process(bar[k:k + 100], topic="bars"))
        got["sensor"].append(both.process(sensor[k:k + 100], topic="metrics"))
    alone = {"sensor": Detector(model, settings), "bar": Detector(model, settings.model_copy(update=prices))}
    for name, ticks in (("sensor", sensor), ("bar", bar)):
        want = alone[name].process(ticks)
        np.testing.assert_array_equal(np.concatenate([r.score for r in got[name]]), want.score, err_msg=name)
        np.testing.assert_array_equal(np.concatenate([r.evidence for r in got[name]]), want.evidence)
    kinds = {name: {EVIDENCE_KINDS[e] for r in got[name] for e in r.evidence} for name in got}
    assert "range" in kinds["sensor"] and "range" not in kinds["bar"]
    # the topic's equal_timestamps too: a second trade in the bar's last second is scored there only
    again = [Tick("bar", bar[-1].ts, 10.0), Tick("sensor", sensor[-1].ts, 10.0)]
    assert both.process(again[:1], topic="bars").outcome.tolist() == [SCORED]
    assert both.process(again[1:], topic="metrics").outcome.tolist() == [OUT_OF_ORDER]


def test_equal_timestamps_are_scored_in_arrival_order_when_accepted(model, settings):
    """A trade feed stamps several trades in one millisecond: with `equal_timestamps` they are stepped in
    arrival order; an older tick is still out of order."""
    det = Detector(model, settings.model_copy(update={"equal_timestamps": True}))
    ticks = series("a", 50)
    det.process(ticks)
    same = det.process([Tick("a", ticks[-1].ts, 1.0), Tick("a", ticks[-1].ts, 2.0), ticks[10]])
    assert same.outcome.tolist() == [SCORED, SCORED, OUT_OF_ORDER]
    assert det.scalars[det.slots["a"], 0] == 52  # N: two more steps


def test_a_gap_divides_the_forecast_surprise_by_its_square_root_in_steps(model, settings):
    """The same jump scores lower after a long silence than one step after the last tick: a one-step
    forecast vouches for one step of the stream's pace (`gap_scaled`)."""
    def jump_score(gap_steps: int, scaled: bool) -> float:
        only_forecast = {"gap_scaled": scaled, "range_evidence": False, "season_evidence": False}
        det = Detector(model, settings.model_copy(update=only_forecast))
        ticks = series("a", 300)
        det.process(ticks)
        last = ticks[-1]
        return float(det.process([Tick("a", last.ts + 60 * gap_steps, last.value + 8.0)]).score[0])

    assert jump_score(1, True) == jump_score(1, False) > 0.3
    assert jump_score(400, True) < jump_score(400, False)


def test_least_recently_seen_streams_are_evicted(model):
    det = Detector(model, DetectorSettings(max_streams=100))
    det.process([Tick(f"s{i}", T0, 1.0) for i in range(100)])
    det.process([Tick(f"s{i}", T0 + 60, 1.0) for i in range(50, 100)])  # s0..s49 now least recent
    result = det.process([Tick("new", T0 + 120, 1.0)])
    assert result.evicted == 1 and len(det) == 100
    assert "new" in det.slots and "s50" in det.slots
    assert sum(f"s{i}" in det.slots for i in range(50)) == 49


def test_top_scores_are_the_most_recently_anomalous(model, settings):
    from streamer.core.kernel import S

    det = Detector(model, settings)
    det.process(interleave(*(series(f"s{i}", 50, seed=i) for i in range(10))))
    for i in range(10):
        det.scalars[det.slots[f"s{i}"], S.PEAK] = i / 10
    top = det.top_scores(3)
    assert sorted(name for name, _, _ in top) == ["s7", "s8", "s9"]
    assert det.max_peak() == pytest.approx(0.9)


def test_a_one_tick_alarm_is_held_for_peak_hold_seconds(model):
    det = Detector(model, DetectorSettings(warmup=20, peak_hold_seconds=600))  # ticks are 60 s apart
    ticks = series("a", 200, seed=4, anomaly_at=150)[:151] + series("a", 49, seed=5, start=151)
    alarm = det.process(ticks[:151]).score[150]
    assert alarm > 0.5
    after = det.process(ticks[151:156]).score  # 5 minutes later: the latest score fell, the peak holds
    [(_, latest, peak)] = det.top_scores(1)
    assert latest == after[-1] < alarm and peak == alarm
    det.process(ticks[156:])  # 48 minutes later the peak is renewed from later scores
    [(_, latest, peak)] = det.top_scores(1)
    assert peak < alarm


def test_state_per_stream_is_small(model):
    """Every per-slot array of the bundled model within 1.5 KB, which leaves room in the 2 KB budget (issue 15)
    for the tables' spare capacity and the Python-side state (`make bench`: 1,701 B a stream at 10,000 streams,
    1,618 B at 100,000)."""
    det = Detector(model, DetectorSettings())
    det.process([Tick(f"s{i}", T0, 1.0) for i in range(1000)])
    arrays = [v for v in vars(det).values() if isinstance(v, np.ndarray) and len(v) == len(det.names)]
    assert {id(det.h), id(det.scalars), id(det.profile)} <= {id(a) for a in arrays}
    per_slot = sum(a.nbytes for a in arrays)
    assert per_slot / len(det.names) <= 1536


def test_export_restore_continues_exactly(model, settings):
    ticks = interleave(series("a", 200, 1, segment="x"), series("b", 200, 2))
    whole, _ = run(Detector(model, settings), ticks, batch=50)
    first = Detector(model, settings)
    run(first, ticks[:230], batch=50)
    states = first.export(["a", "b"])
    second = Detector(model, settings)
    second.process([Tick("zzz", T0, 1.0)])  # unrelated state already present
    second.restore(states)
    rest, _ = run(second, ticks[230:], batch=50)
    np.testing.assert_allclose(rest, whole[230:], atol=1e-9)


def test_expire_forgets_streams_not_seen_since_a_batch(model, settings):
    det = Detector(model, settings)
    det.process([Tick("old", T0, 1.0), Tick("both", T0, 1.0)])
    mark = det.batches
    det.process([Tick("both", T0 + 60, 1.0), Tick("new", T0 + 60, 1.0)])
    assert det.expire(mark + 1) == 1
    assert sorted(det.slots) == ["both", "new"]


# --- GRU and stacked layers ------------------------------------------------------------------------------------

VARIANTS = [("gru", 1), ("lstm", 2), ("gru", 2)]


def variant_model(cell, layers, hidden=16):
    from streamer.core.model import Forecaster, ModelSpec

    return Forecaster.random(ModelSpec(hidden_size=hidden, cell=cell, layers=layers), seed=4)


@pytest.mark.parametrize("cell, layers", VARIANTS)
def test_every_cell_and_layers_batch_reset_and_restore_exactly(cell, layers, settings):
    """The state tables hold every layer's h (and c for an LSTM; a GRU has none): batching changes nothing,
    a session reset zeroes every layer, and export/restore continues exactly."""
    model = variant_model(cell, layers)
    h_width, c_width = model.spec.state_sizes
    ticks = interleave(series("a", 200, 1), series("b", 200, 2, anomaly_at=150))
    whole, _ = run(Detector(model, settings), ticks, batch=len(ticks))
    det = Detector(model, settings)
    scores, _ = run(det, ticks, batch=7)
    np.testing.assert_array_equal(scores, whole)
    assert det.h.shape[1:] == (h_width,) == (16 * layers,) and det.c.shape[1:] == (c_width,)
    assert c_width == (16 * layers if cell == "lstm" else 0)

    first = Detector(model, settings)
    run(first, ticks[:230], batch=50)
    second = Detector(model, settings)
    second.process([Tick("zzz", T0, 1.0)])
    second.restore(first.export(["a", "b"]))
    rest, _ = run(second, ticks[230:], batch=50)
    np.testing.assert_array_equal(rest, whole[230:])

    rules = ResetRules(max_gap_seconds=3600)
    later = [Tick("a", t.ts + 86400, t.value) for t in series("a", 5, start=200)]
    by_hand = Detector(model, settings)
    run(by_hand, ticks, batch=50)
    assert np.all(by_hand.h[by_hand.slots["a"]] != 0.0)
    gap = by_hand.process(later[:1], rules)
    assert gap.resets == Counter({"gap": 1})
    kept = Detector(model, settings)
    run(kept, ticks, batch=50)
    kept.h[kept.slots["a"]] = 0.0
    kept.c[kept.slots["a"]] = 0.0
    np.testing.assert_array_equal(kept.process(later[:1]).forecast, gap.forecast)


SPARE = 9 / 8  # the state tables grow by an eighth: at worst this many slots allocated per live stream
PYTHON_BYTES = 140  # the Python-side state of a stream (`make bench`: 120 B at 10,000 streams, 136 B at 100,000)


@pytest.mark.parametrize("cell, layers", [("lstm", 1), *VARIANTS])
def test_state_per_stream_of_every_cell_and_layers(cell, layers):
    """The largest model of each cell and depth that `streamer train` accepts (`MAX_STATE_FLOATS`) keeps a stream
    within 2 KB, the tables' spare capacity and the Python-side state included (measured by `benchmarks.bench`'s
    state worker with such models: 2,000 B at 10,000 streams for 196 floats, 2,105 B for 220)."""
    hidden = min(128, MAX_STATE_FLOATS // (layers * (2 if cell == "lstm" else 1)))
    model = variant_model(cell, layers, hidden=hidden)
    assert sum(model.spec.state_sizes) <= MAX_STATE_FLOATS
    det = Detector(model, DetectorSettings())
    det.process([Tick(f"s{i}", T0, 1.0) for i in range(1000)])
    arrays = [v for v in vars(det).values() if isinstance(v, np.ndarray) and len(v) == len(det.names)]
    per_slot = sum(a.nbytes for a in arrays) / len(det.names)
    assert per_slot == 928 + 4 * sum(model.spec.state_sizes)
    assert per_slot * SPARE + PYTHON_BYTES <= 2048
