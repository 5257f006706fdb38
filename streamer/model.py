"""The forecaster: an LSTM cell that reads one normalised value per step and predicts the next one.

The model predicts a Gaussian (mean and log standard deviation) for the next value in the units of the
stream's online normalisation, so its error is already scaled by how predictable the stream is.

Streams arrive with arbitrary units, so the input is normalised online, causally, per stream
(`kernel.normalise`); the normaliser's constants travel in the model file because the weights only make sense
with the inputs they were trained on.

File format: ``torch.save`` of a dict holding only tensors, strings and numbers, loaded back with
``weights_only=True``, so loading a model never unpickles arbitrary objects.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

FORMAT = "streamer.forecaster"
VERSION = 1
INPUT_CLIP = 8.0  # normalised inputs are clipped so a wild tick cannot blow up the recurrent state
LOG_STD_MIN, LOG_STD_MAX = -6.0, 4.0  # the predicted log standard deviation's range


class NormaliserSpec(NamedTuple):
    """Exponentially weighted mean/variance with a count-based warm start and a floor on the scale
    (`kernel.normalise`; a tuple, so that the compiled kernel takes it as it is)."""

    alpha: float = 0.01  # EW weight once more than 1/alpha ticks were seen (an effective window of 100)
    min_scale: float = 1e-3  # absolute floor on the standard deviation
    rel_scale: float = 1e-3  # relative floor: a fraction of |mean|, for flat or quantised streams


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int = 64
    normaliser: NormaliserSpec = field(default_factory=NormaliserSpec)


class Forecaster(nn.Module):
    """One LSTM cell and a linear head giving (mean, log_std) of the next normalised value."""

    def __init__(self, spec: ModelSpec = ModelSpec()):
        super().__init__()
        self.spec = spec
        self.cell = nn.LSTMCell(1, spec.hidden_size)
        self.head = nn.Linear(spec.hidden_size, 2)
        self.training_info: dict[str, Any] = {}
        # Forget-gate bias 1 (split over the two bias vectors): remember by default (Jozefowicz et al., 2015).
        with torch.no_grad():
            h = spec.hidden_size
            for bias in (self.cell.bias_ih, self.cell.bias_hh):
                bias[h:2 * h].fill_(0.5)

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One step for a batch of streams: x [B], h/c [B, H] -> (mean [B], log_std [B], h, c). For
        training; inference runs the same function compiled (`kernel.lstm_step`)."""
        h, c = self.cell(x.clamp(-INPUT_CLIP, INPUT_CLIP).unsqueeze(1), (h, c))
        out = self.head(h)
        return out[:, 0], out[:, 1].clamp(LOG_STD_MIN, LOG_STD_MAX), h, c

    @classmethod
    def random_init(cls, spec: ModelSpec, seed: int = 0) -> Forecaster:
        """An untrained model of the given shape (torch's initialisation, seeded): the baseline that tells
        what training adds to detection (benchmarks/loco.py's random_init rows)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(spec).eval()

    def save(self, path: Path, training: dict[str, Any] | None = None) -> None:
        """Write the model; ``training`` must be plain JSON data (weights_only loading accepts nothing else)."""
        training = json.loads(json.dumps(training or {}))  # raises here, not at load time, for other types
        blob = {
            "format": FORMAT,
            "version": VERSION,
            "spec": {"hidden_size": self.spec.hidden_size, "normaliser": self.spec.normaliser._asdict()},
            "training": training,
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | None = None) -> Forecaster:
        """Load a model file (``None``: the bundled default). Raises ValueError for a foreign file."""
        if path is None:
            with importlib.resources.as_file(bundled_model_resource()) as bundled:
                return cls.load(bundled)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for non-model or tampered files
            raise ValueError(f"{path}: not a loadable model file ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path}: not a streamer model file")
        if blob.get("version") != VERSION:
            raise ValueError(f"{path}: model format version {blob.get('version')}, this build reads {VERSION}")
        spec = blob["spec"]
        model = cls(ModelSpec(hidden_size=int(spec["hidden_size"]),
                              normaliser=NormaliserSpec(**spec["normaliser"])))
        model.load_state_dict(blob["state_dict"])
        model.training_info = dict(blob["training"])
        model.eval()
        return model

    def fingerprint(self) -> str:
        """A short digest of the weights: checkpoints record it so state is never applied to another model."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]


def bundled_model_resource():
    return importlib.resources.files("streamer").joinpath("data", "default_model.pt")
