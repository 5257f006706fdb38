import numpy as np
import torch

from streamer.core.kernel import lstm_step, lstm_weights
from streamer.core.model import ModelSpec
from streamer.offline.train import TorchForecaster


def test_the_compiled_step_is_the_model_step():
    """The daemon's LSTM step (compiled, one stream at a time, a rational tanh) is the trained model's."""
    torch.manual_seed(3)
    model = TorchForecaster(ModelSpec(hidden_size=16)).eval()
    x, h, c = torch.randn(50, dtype=torch.float64) * 6, torch.randn(50, 16), torch.randn(50, 16) * 2
    with torch.inference_mode():
        want_mean, want_log_std, want_h, want_c = model.step(x.float(), h, c)
    weights, gates = lstm_weights(model.to_forecaster()), np.empty(64, dtype=np.float32)
    got_h, got_c = h.numpy().copy(), c.numpy().copy()
    got = np.array([lstm_step(float(x[i]), got_h[i], got_c[i], weights, gates) for i in range(50)])
    assert got_h.dtype == got_c.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], want_mean.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[:, 1], want_log_std.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_h, want_h.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_c, want_c.numpy(), rtol=0, atol=2e-6)
    assert np.abs(x.numpy()).max() > 8  # inputs beyond the clip were exercised


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
