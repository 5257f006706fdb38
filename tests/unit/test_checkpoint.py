import dataclasses

import numpy as np
import pytest

from streamer.config import DetectorSettings
from streamer.core.detector import Detector, StreamStates
from streamer.core.kernel import N_TAILS, PROF
from streamer.core.ticks import Tick
from streamer.daemon.checkpoint import Checkpoint, CheckpointError, LocalStore, decode, encode


def make_checkpoint(model, offset=42) -> Checkpoint:
    det = Detector(model, DetectorSettings())
    det.process([Tick(f"s{i}", 1e9 + k, float(k + i), segment="a" if i % 2 else None)
                 for k in range(30) for i in range(5)])
    return Checkpoint("ticks", 3, offset, model.fingerprint(), det.export(sorted(det.slots)))


def test_roundtrip_keeps_every_field(model):
    cp = make_checkpoint(model)
    back = decode(encode(cp), model.fingerprint())
    assert (back.topic, back.partition, back.offset) == ("ticks", 3, 42)
    assert back.states.names == cp.states.names and back.states.segment == cp.states.segment
    for field in StreamStates.ARRAYS:
        np.testing.assert_array_equal(getattr(back.states, field), getattr(cp.states, field))


def test_checkpoint_of_another_model_is_refused(model):
    data = encode(make_checkpoint(model))
    with pytest.raises(CheckpointError, match="refusing"):
        decode(data, "0123456789abcdef")


def test_checkpoint_of_another_state_layout_is_refused(model):
    """A version that keeps other statistics per stream (the forecast tail had 12 levels, 20 floats fewer, before
    it had 32) must not have its checkpoint misapplied: refused, the partition starts fresh (a warm-up)."""
    cp = make_checkpoint(model)
    old = dataclasses.replace(cp.states, profile=cp.states.profile[:, :-20])
    with pytest.raises(CheckpointError, match="another version"):
        decode(encode(dataclasses.replace(cp, states=old)), model.fingerprint())


def test_checkpoint_written_before_the_slow_tails_is_upgraded_not_refused(model):
    """An upgrade must not warm every stream up again: a checkpoint of the layout before the tails' slow copy
    (`PROF.SLOW_TAILS`) is applied, each stream's slow tails starting as its fast ones."""
    cp = make_checkpoint(model)
    profile = cp.states.profile
    profile[:, :N_TAILS] = np.random.default_rng(0).uniform(0.0, 0.1, (len(profile), N_TAILS))  # learned rates
    profile[:, PROF.SLOW_TAILS:PROF.SLOW_TAILS + N_TAILS] = 0.5  # not what the upgrade puts there
    before = np.delete(profile, np.s_[PROF.SLOW_TAILS:PROF.SLOW_TAILS + N_TAILS], axis=1)
    old = dataclasses.replace(cp, states=dataclasses.replace(cp.states, profile=before))
    back = decode(encode(old), model.fingerprint()).states.profile
    assert back.shape == profile.shape
    np.testing.assert_array_equal(back[:, PROF.SLOW_TAILS:PROF.SLOW_TAILS + N_TAILS], profile[:, :N_TAILS])
    np.testing.assert_array_equal(np.delete(back, np.s_[PROF.SLOW_TAILS:PROF.SLOW_TAILS + N_TAILS], axis=1), before)


def test_damaged_checkpoint_is_refused(model):
    data = encode(make_checkpoint(model))
    with pytest.raises(CheckpointError):
        decode(data[: len(data) // 2], model.fingerprint())


def test_local_store_replaces_atomically(tmp_path, model):
    store = LocalStore(tmp_path, "group", model.fingerprint())
    assert store.load("ticks", 3) is None
    store.save(make_checkpoint(model, offset=10))
    store.save(make_checkpoint(model, offset=20))
    assert store.load("ticks", 3).offset == 20
    assert [p.name for p in (tmp_path / "group" / "ticks").iterdir()] == ["3.ckpt"]  # no temp files left


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 2), ("gru", 2)])
def test_every_layers_state_round_trips_and_another_cell_is_refused(model, cell, layers):
    """A checkpoint carries every layer's h (and c for an LSTM, none for a GRU); one written for a model of
    another cell or depth is refused by its fingerprint, as any other model's is."""
    from streamer.core.model import Forecaster, ModelSpec

    other = Forecaster.random(ModelSpec(hidden_size=8, cell=cell, layers=layers))
    cp = make_checkpoint(other)
    assert cp.states.h.shape == (5, 8 * layers) and cp.states.c.shape == (5, 8 * layers if cell == "lstm" else 0)
    back = decode(encode(cp), other.fingerprint())
    for field in StreamStates.ARRAYS:
        np.testing.assert_array_equal(getattr(back.states, field), getattr(cp.states, field))
    with pytest.raises(CheckpointError, match="refusing"):
        decode(encode(cp), model.fingerprint())
    one_layer = Forecaster.random(ModelSpec(hidden_size=8, cell=cell))
    if layers == 2:
        with pytest.raises(CheckpointError, match="refusing"):
            decode(encode(cp), one_layer.fingerprint())
