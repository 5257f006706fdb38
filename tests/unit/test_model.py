import numpy as np
import pytest
import torch

from streamer.core.kernel import forecast_step, step_weights
from streamer.core.model import Forecaster, ModelSpec
from streamer.offline.train import TorchForecaster

CELLS_AND_LAYERS = [("lstm", 1), ("gru", 1), ("lstm", 2), ("gru", 2)]


@pytest.mark.parametrize("cell, layers", CELLS_AND_LAYERS)
def test_the_compiled_step_is_the_model_step(cell, layers):
    """The daemon's step (compiled, one stream at a time, a rational tanh) is the trained model's, for every
    cell and number of layers, from arbitrary states."""
    torch.manual_seed(3)
    model = TorchForecaster(ModelSpec(hidden_size=16, cell=cell, layers=layers)).eval()
    h_width, c_width = model.spec.state_sizes
    x, h, c = torch.randn(50, dtype=torch.float64) * 6, torch.randn(50, h_width), torch.randn(50, c_width) * 2
    with torch.inference_mode():
        want_mean, want_log_std, want_h, want_c = model.step(x.float(), h, c)
    weights, gates = step_weights(model.to_forecaster()), np.empty(64, dtype=np.float32)
    got_h, got_c = h.numpy().copy(), c.numpy().copy()
    got = np.array([forecast_step(float(x[i]), got_h[i], got_c[i], weights, gates) for i in range(50)])
    assert got_h.dtype == got_c.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], want_mean.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[:, 1], want_log_std.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_h, want_h.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_c, want_c.numpy(), rtol=0, atol=2e-6)
    assert np.abs(x.numpy()).max() > 8  # inputs beyond the clip were exercised


@pytest.mark.parametrize("cell, layers", CELLS_AND_LAYERS)
def test_random_models_start_as_torch_does(cell, layers):
    """`Forecaster.random` has torch's names and shapes, and an LSTM's forget-gate bias (1) on every layer."""
    spec = ModelSpec(hidden_size=8, cell=cell, layers=layers)
    model = Forecaster.random(spec)
    assert set(model.weights) == set(TorchForecaster(spec).state_dict())
    TorchForecaster.of(model)  # loads: same shapes
    forget = [model.weights[f"{name}.bias_ih"][8:16] for name in ("cell", "cell1")[:layers]]
    assert all(np.all(bias == 0.5) for bias in forget) == (cell == "lstm")


def test_model_spec_names_its_field():
    with pytest.raises(ValueError, match="model cell 'rnn'"):
        ModelSpec(cell="rnn")
    with pytest.raises(ValueError, match="model layers 3"):
        ModelSpec(layers=3)


def test_a_model_file_round_trips_without_torch(tmp_path):
    """Weights, spec, training facts and fingerprint survive save/load (numpy + JSON, no pickle)."""
    import subprocess
    import sys

    from streamer.core.model import Forecaster

    model = Forecaster.random(ModelSpec(hidden_size=8), seed=1)
    model.save(tmp_path / "m.npz", training={"note": "test"})
    back = Forecaster.load(tmp_path / "m.npz")
    assert back.fingerprint() == model.fingerprint() and back.training_info == {"note": "test"}
    assert all(np.array_equal(back.weights[k], model.weights[k]) for k in model.weights)
    script = ("import sys; from streamer.core.detector import Detector; from streamer.config import DetectorSettings; "
              "from streamer.core.model import Forecaster; Detector(Forecaster.load(), DetectorSettings()); "
              "import streamer.daemon.loop, streamer.offline.evaluate, streamer.offline.score; "
              "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    from streamer.core.model import Forecaster

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    try:
        Forecaster.load(tmp_path / "bad.npz")
    except ValueError as exc:
        assert "not a loadable model file" in str(exc)
    else:
        raise AssertionError("a foreign file was loaded")


def test_cell_and_layers_round_trip_and_old_files_are_one_layer_lstms(tmp_path):
    """The spec's cell and layers are in the header; a file without them (all before them) is an LSTM of one
    layer, with the same fingerprint, so checkpoints written for it still apply."""
    import io
    import json

    spec = ModelSpec(hidden_size=8, cell="gru", layers=2)
    Forecaster.random(spec).save(tmp_path / "gru.npz")
    assert Forecaster.load(tmp_path / "gru.npz").spec == spec
    old = Forecaster.random(ModelSpec(hidden_size=8))
    old.save(tmp_path / "old.npz")
    with np.load(tmp_path / "old.npz") as arrays:
        header = json.loads(arrays["header"].tobytes())
        weights = {name: arrays[name] for name in arrays.files if name != "header"}
    del header["spec"]["cell"], header["spec"]["layers"]
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **weights)
    (tmp_path / "old.npz").write_bytes(buffer.getvalue())
    back = Forecaster.load(tmp_path / "old.npz")
    assert back.spec == ModelSpec(hidden_size=8) and back.fingerprint() == old.fingerprint()
    header["spec"]["cell"] = "rnn"
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **weights)
    (tmp_path / "rnn.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="rnn.npz: model cell 'rnn'"):
        Forecaster.load(tmp_path / "rnn.npz")
