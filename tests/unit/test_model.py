import numpy as np
import torch

from streamer.model import FastStep, Forecaster, ModelSpec


def test_fast_step_is_the_model_step():
    torch.manual_seed(3)
    model = Forecaster(ModelSpec(hidden_size=16))
    x, h, c = torch.randn(50, dtype=torch.float64) * 6, torch.randn(50, 16), torch.randn(50, 16) * 2
    with torch.inference_mode():
        want = model.step(x.float(), h, c)
    got = FastStep(model)(x.numpy(), h, c)
    assert got[0].dtype == got[1].dtype == np.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.as_tensor(a), b, rtol=0, atol=2e-6)
