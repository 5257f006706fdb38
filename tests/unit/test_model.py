import numpy as np
import torch

from streamer.kernel import lstm_step, lstm_weights
from streamer.model import Forecaster, ModelSpec


def test_the_compiled_step_is_the_model_step():
    """The daemon's LSTM step (compiled, one stream at a time, a rational tanh) is the trained model's."""
    torch.manual_seed(3)
    model = Forecaster(ModelSpec(hidden_size=16))
    x, h, c = torch.randn(50, dtype=torch.float64) * 6, torch.randn(50, 16), torch.randn(50, 16) * 2
    with torch.inference_mode():
        want_mean, want_log_std, want_h, want_c = model.step(x.float(), h, c)
    weights, gates = lstm_weights(model), np.empty(64, dtype=np.float32)
    got_h, got_c = h.numpy().copy(), c.numpy().copy()
    got = np.array([lstm_step(float(x[i]), got_h[i], got_c[i], weights, gates) for i in range(50)])
    assert got_h.dtype == got_c.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], want_mean.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[:, 1], want_log_std.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_h, want_h.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_c, want_c.numpy(), rtol=0, atol=2e-6)
    assert np.abs(x.numpy()).max() > 8  # inputs beyond the clip were exercised
