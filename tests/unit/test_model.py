import torch

from streamer.model import FastCell, Forecaster, ModelSpec


def test_fast_cell_is_the_lstm_cell():
    torch.manual_seed(3)
    model = Forecaster(ModelSpec(hidden_size=16))
    x, h, c = torch.randn(50) * 3, torch.randn(50, 16), torch.randn(50, 16) * 2
    with torch.inference_mode():
        want = model.step(x, h, c)
        got = model.step(x, h, c, FastCell(model.cell))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
