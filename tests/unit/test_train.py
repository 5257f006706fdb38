"""Training: the detector's view of recorded files, stateful batching, and reproducible training runs."""

import argparse
import math
from importlib.resources import files

import numpy as np
import orjson
import pytest
import torch

from streamer.config import DetectorSettings, ResetRules, Settings, TickSettings
from streamer.core.detector import Detector
from streamer.core.model import Forecaster, ModelSpec
from streamer.core.ticks import TickDecoder, read_records
from streamer.devtools.synth import generate, write_jsonl_gz
from streamer.offline.train import (
    LOSSES,
    Corpus,
    TorchForecaster,
    _run_steps,
    _Tensors,
    forecasts,
    gaussian_nll,
    laplace_nll,
    layout,
    normalise,
    read_corpus,
    split_streams,
    train,
)
from streamer.offline.train_command import LOSS_NAMES, TrainConfig, add_arguments, run

FIELDS = TickSettings()


def _write(path, rows):
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def _ticks(path, fields=FIELDS):
    decoder = TickDecoder(fields)
    return [t for r in read_records(path, fields) for t in decoder.decode_obj(r.obj)]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl.gz"
    write_jsonl_gz(generate(16, 300, seed=11, anomalies=True, segment_fraction=0.2), path, FIELDS)
    return path


def _tiny_config(**overrides):
    config = dict(hidden_size=16, epochs=3, chunk=32, batch=8, lr=3e-3, seed=1, val_fraction=0.25,
                  patience=10, progress=False)
    config.update(overrides)
    return TrainConfig(**config)


# --- reading ----------------------------------------------------------------------------------------------


def test_reset_rules_cut_sequences_like_the_detector(tmp_path):
    rows = [
        {"stream": "a", "ts": 0, "value": 1.0, "segment": "x"},
        {"stream": "b", "ts": 0, "values": {"u": 1.0, "v": 2.0}},
        {"stream": "a", "ts": 60, "value": 2.0, "segment": "x"},
        {"stream": "b", "ts": 60, "values": {"u": 1.5, "v": 2.5}},
        {"stream": "a", "ts": 30, "value": 9.0, "segment": "x"},  # out of order: dropped
        {"stream": "a", "ts": 120, "value": 3.0, "segment": "y"},  # segment change
        {"stream": "a", "ts": 180, "value": 4.0, "segment": "y"},
        {"stream": "a", "ts": 240, "value": 5.0, "segment": "y", "reset": True},  # explicit
        {"stream": "a", "ts": 300, "value": 6.0, "segment": "y"},
        {"stream": "a", "ts": 9000, "value": 7.0, "segment": "y"},  # gap
        {"stream": "a", "ts": 9060, "value": 8.0, "segment": "y"},
        {"stream": "b", "ts": 120, "value": "oops"},  # invalid: skipped
        {"stream": "b", "ts": 180, "values": {"u": 2.0, "v": 3.0}},
    ]
    path = _write(tmp_path / "r.jsonl", rows)
    rules = ResetRules(max_gap_seconds=3600)
    corpus = read_corpus([path], FIELDS, rules)
    got = sorted((s, seq.tolist()) for s, seq in zip(corpus.streams, corpus.sequences))
    assert got == [("a", [1.0, 2.0]), ("a", [3.0, 4.0]), ("a", [5.0, 6.0]), ("a", [7.0, 8.0]),
                   ("b/u", [1.0, 1.5, 2.0]), ("b/v", [2.0, 2.5, 3.0])]
    assert corpus.skipped == {"out_of_order": 1, "bad_type": 1}
    detector = Detector(Forecaster.random(ModelSpec(hidden_size=4)), DetectorSettings())
    good = [r for r in rows if r.get("value") != "oops"]
    ticks = [t for r in good for t in TickDecoder(FIELDS).decode_obj(r)]
    assert corpus.resets == detector.process(ticks, rules).resets
    assert corpus.ticks == 14  # every tick the detector scores (8 of a, 3 of each channel of b)


def test_session_resets_follow_the_detector(tmp_path):
    rows = [{"stream": "s", "ts": 1767225600 + 1800 * i, "value": float(i)} for i in range(100)]
    path = _write(tmp_path / "s.jsonl", rows)
    rules = ResetRules(session_timezone="America/New_York", session_start="09:30")
    corpus = read_corpus([path], FIELDS, rules)
    detector = Detector(Forecaster.random(ModelSpec(hidden_size=4)), DetectorSettings())
    assert corpus.resets == detector.process(_ticks(path), rules).resets
    assert corpus.resets["session"] == 2 and [len(s) for s in corpus.sequences] == [29, 48, 23]


def test_streams_continue_across_input_files(tmp_path):
    first = _write(tmp_path / "1.jsonl", [{"stream": "a", "ts": i, "value": float(i)} for i in range(3)])
    second = _write(tmp_path / "2.jsonl", [{"stream": "a", "ts": i, "value": float(i)} for i in range(2, 6)])
    corpus = read_corpus([first, second], FIELDS, ResetRules())
    assert [s.tolist() for s in corpus.sequences] == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    assert corpus.skipped == {"out_of_order": 1}


# --- stateful batching --------------------------------------------------------------------------------------


def test_lanes_continue_from_batch_to_batch_and_reset_at_sequence_starts():
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=int(n)) + 100 * i for i, n in enumerate(rng.integers(2, 150, 40))]
    chunk = 16
    lanes = layout(sequences, rng.permutation(40), lanes=6, chunk=chunk)
    steps = lanes.values.shape[1]
    assert lanes.values.shape[0] == 6 and steps % chunk == 0
    seen = set()
    for b in range(6):
        owner = lanes.owner[b]
        for t in range(steps):
            i = owner[t]
            starts = t == 0 or owner[t - 1] != i
            # The state is zeroed exactly where a sequence (or the padding) starts, wherever the chunk edge is.
            assert lanes.reset[b, t] == starts or (i < 0 and lanes.reset[b, t])
            if i < 0:
                assert not lanes.has_target[b, t]
                continue
            if starts:
                assert i not in seen
                seen.add(i)
                offset = t
            # Batch k+1's row b picks up where batch k's row b stopped: position t holds element t - start.
            assert lanes.values[b, t] == sequences[i][t - offset]
            assert lanes.has_target[b, t] == (t - offset < len(sequences[i]) - 1)
        assert np.all(owner[: np.flatnonzero(owner >= 0).max() + 1] >= 0)  # no holes inside a lane
    assert seen == set(range(40))
    load = [(lanes.owner[b] >= 0).sum() for b in range(6)]
    assert max(load) - min(load) < 150  # balanced: each sequence went to the shortest lane


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 2)])
def test_state_carried_over_chunks_equals_one_pass(cell, layers):
    torch.manual_seed(0)
    model = TorchForecaster(ModelSpec(hidden_size=8, cell=cell, layers=layers)).eval()
    rng = np.random.default_rng(1)
    sequences = [np.cumsum(rng.normal(size=int(n))) for n in rng.integers(5, 60, 12)]
    data = _Tensors(layout(sequences, range(12), lanes=3, chunk=8), model.spec.normaliser)
    with torch.no_grad():
        whole, _, _, _ = _run_steps(model, data, 0, data.steps, *model.zero_state(3))
        h, c = model.zero_state(3)
        parts = []
        for start in range(0, data.steps, 8):
            mu, _, h, c = _run_steps(model, data, start, start + 8, h.detach(), c.detach())
            parts.append(mu)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)


# --- the detector's normalisation and forward path ---------------------------------------------------------


def test_inputs_and_targets_use_the_detectors_normaliser():
    """The normaliser's formula, written out: EW mean and variance with weight max(1/n, alpha), scale = std +
    max(min_scale, rel_scale * |mean|); the first value sets the mean."""
    values = np.array([5.0, 5.0, 6.0, 4.0, 100.0, 5.5])
    lanes = layout([values], [0], 1)
    spec = ModelSpec().normaliser
    x, y, mean, scale = normalise(lanes, spec)
    m = v = 0.0
    for t, value in enumerate(values):
        alpha = max(1.0 / (t + 1), spec.alpha)
        delta = value - m
        m, v = m + alpha * delta, (1.0 - alpha) * (v + alpha * delta * delta)
        s = math.sqrt(v) + max(spec.min_scale, spec.rel_scale * abs(m))
        assert (mean[0, t], scale[0, t]) == (m, s)
        assert x[0, t] == np.float32((value - m) / s)
        if t + 1 < len(values):
            assert y[0, t] == np.float32(np.clip((values[t + 1] - m) / s, -8, 8))
    assert mean[0, 0] == 5.0  # the first value sets the mean
    assert y[0, -1] == 0 and not lanes.has_target[0, -1]


def test_the_normaliser_restarts_where_a_lane_starts_a_sequence():
    lanes = layout([np.array([1.0, 2.0, 3.0]), np.array([50.0, 60.0])], [0, 1], 1)  # one lane, two sequences
    _, _, mean, _ = normalise(lanes, ModelSpec().normaliser)
    assert mean[0, 3] == 50.0  # the second sequence's first value sets the mean again


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_training_forecasts_equal_the_detectors(tiny_corpus, cell, layers):
    """A trained model, converted, forecasts in the detector's kernel what it does in torch: every cell and
    number of layers."""
    model, _ = train(read_corpus([tiny_corpus], FIELDS, ResetRules()),
                     _tiny_config(epochs=1, cell=cell, layers=layers))
    assert (model.spec.cell, model.spec.layers) == (cell, layers)
    ticks = _ticks(tiny_corpus)
    # The trainer's normaliser is the detector's without its outlier clip (`detector.normaliser_clip`, which
    # departs from it only after a value beyond 5 scales): with the clip off they are the same arithmetic.
    result = Detector(model, DetectorSettings(normaliser_clip=0)).process(ticks)
    # Per stream, the detector's forecasts are those of each segment run through the training path.
    for stream in {t.stream for t in ticks}:
        idx = [i for i, t in enumerate(ticks) if t.stream == stream]
        segments = [ticks[i].segment for i in idx]
        values = np.array([ticks[i].value for i in idx])
        cuts = [0] + [k for k in range(1, len(idx)) if segments[k] != segments[k - 1]] + [len(idx)]
        expected = np.concatenate([forecasts(model, values[a:b]) for a, b in zip(cuts, cuts[1:])])
        # Equal up to float32 rounding: the detector's matrix products run over 16 streams at once, not 1.
        np.testing.assert_allclose(result.forecast[idx], expected, rtol=1e-4, atol=1e-5 * np.ptp(values),
                                   equal_nan=True)
        assert np.isnan(expected).sum() == len(cuts) - 1


# --- training runs ------------------------------------------------------------------------------------------


def test_validation_split_is_by_stream_and_seeded():
    streams = [f"s{i}" for i in range(50) for _ in range(2)]
    val = split_streams(streams, 0.2, seed=3)
    assert len(val) == 10 and val == split_streams(streams, 0.2, seed=3) != split_streams(streams, 0.2, 4)
    assert split_streams(["only"], 0.5, 0) == set()


def test_training_is_reproducible_and_learns(tiny_corpus):
    corpus = read_corpus([tiny_corpus], FIELDS, ResetRules())
    model, summary = train(corpus, _tiny_config())
    again, _ = train(corpus, _tiny_config())
    assert model.fingerprint() == again.fingerprint()
    other, _ = train(corpus, _tiny_config(seed=2, epochs=1))
    assert other.fingerprint() != model.fingerprint()
    history = summary["val_nll_history"]
    assert len(history) == 4 and summary["best_val_nll"] == min(history) < history[0] - 0.05
    assert summary["val_streams"] == 4
    assert torch.get_num_threads() >= 1 and not torch.are_deterministic_algorithms_enabled()  # restored


def test_no_usable_sequences():
    with pytest.raises(ValueError):
        train(Corpus(), _tiny_config())


def test_train_command_writes_a_loadable_model(tiny_corpus, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "m.npz"
    args = parser.parse_args([str(tiny_corpus), "--output", str(out), "--hidden-size", "8", "--epochs", "2",
                              "--chunk", "32", "--batch", "8", "--seed", "5"])
    assert run(args, Settings()) == 0
    model = Forecaster.load(out)  # numpy + JSON, no pickle
    assert model.hidden_size == 8
    info = model.training_info
    assert info["seed"] == 5 and info["epochs_run"] == 2 and info["best_val_nll"] > -10
    assert info["inputs"][0]["path"] == str(tiny_corpus) and len(info["inputs"][0]["sha256"]) == 64
    assert info["recipe"].startswith("streamer train ") and "--hidden-size 8" in info["recipe"]
    assert info["train_seconds"] >= 0 and info["ticks"] == 16 * 300


def test_train_command_takes_a_cell_and_layers(tiny_corpus, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "m.npz"
    args = parser.parse_args([str(tiny_corpus), "--output", str(out), "--hidden-size", "8", "--epochs", "1",
                              "--chunk", "32", "--batch", "8", "--cell", "gru", "--layers", "2"])
    assert run(args, Settings()) == 0
    model = Forecaster.load(out)
    assert (model.spec.cell, model.spec.layers, model.hidden_size) == ("gru", 2, 8)
    assert "--cell gru --layers 2" in model.training_info["recipe"]


@pytest.mark.parametrize("size", [["--hidden-size", "256"], ["--hidden-size", "128", "--layers", "2"]])
def test_train_command_rejects_too_much_state(tiny_corpus, tmp_path, size, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tiny_corpus), "--output", str(tmp_path / "m.npz"), *size])
    assert run(args, Settings()) == 2
    assert "--hidden-size" in capsys.readouterr().err


def test_bundled_model():
    path = files("streamer").joinpath("data", "default_model.npz")
    assert path.stat().st_size < 400_000
    model = Forecaster.load()
    assert model.hidden_size <= 128
    info = model.training_info
    assert info["recipe"].startswith("streamer train ") and info["best_val_nll"] < 1.0
    for key in ("inputs", "seed", "epochs_run", "best_val_nll", "train_seconds"):
        assert key in info


def test_laplace_likelihood():
    y, mu = torch.tensor([0.0, 3.0]), torch.zeros(2)
    log_scale = torch.zeros(2)
    np.testing.assert_allclose(laplace_nll(y, mu, log_scale).numpy(), [np.log(2.0), 3.0 + np.log(2.0)], rtol=1e-6)
    # a spike costs linearly under the Laplace, quadratically under the Gaussian
    assert float(laplace_nll(torch.tensor([10.0]), torch.zeros(1), torch.zeros(1))) < float(
        gaussian_nll(torch.tensor([10.0]), torch.zeros(1), torch.zeros(1)))


def test_training_with_the_laplace_loss(tiny_corpus):
    corpus = read_corpus([tiny_corpus], FIELDS, ResetRules())
    model, summary = train(corpus, _tiny_config(loss="laplace"))
    gaussian, _ = train(corpus, _tiny_config())
    assert model.fingerprint() != gaussian.fingerprint()
    assert summary["config"]["loss"] == "laplace"
    assert summary["best_val_nll"] == min(summary["val_nll_history"]) < summary["val_nll_history"][0]


def test_the_command_offers_every_loss_of_the_trainer():
    assert set(LOSS_NAMES) == set(LOSSES)
