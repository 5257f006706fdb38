"""The forecaster's weights: a recurrent cell (an LSTM by default, or a GRU; one layer or two stacked) that
reads one normalised value per step, and a linear head that predicts the next one.

The model predicts a Gaussian (mean and log standard deviation) for the next value in the units of the
stream's online normalisation, so its error is already scaled by how predictable the stream is.

Streams arrive with arbitrary units, so the input is normalised online, causally, per stream
(`kernel.normalise`); the normaliser's constants travel in the model file because the weights only make sense
with the inputs they were trained on.

This module is numpy only: the daemon and the offline scorers run the compiled kernel and never import
torch. `streamer.offline.train.TorchForecaster` is the same network as a torch module, for training; it
converts to and from `Forecaster`.

File format (``.npz``): the weights under torch's ``state_dict`` names, one torch ``LSTMCell`` or ``GRUCell``
per layer, named ``cell`` (layer 0, reading the normalised value) and ``cell1`` (layer 1, reading layer 0's
h) (`layer_name`): ``cell.weight_ih`` [G*H, 1], ``cell.weight_hh`` [G*H, H], ``cell.bias_ih``/
``cell.bias_hh`` [G*H], ``cell1.weight_ih`` [G*H, H] and so on, with G = 4 gates for an LSTM (input,
forget, cell, output) and 3 for a GRU (reset, update, new), then ``head.weight`` [2, H] and ``head.bias``
[2] on the top layer's h; plus one JSON ``header`` (format, version, spec, training facts), read with
``allow_pickle=False``: loading a model never executes code. The spec's ``cell`` and ``layers`` were added
without a version change: a file without them (every file before them) is a one-layer LSTM.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FORMAT = "streamer.forecaster"
VERSION = 2  # 2: numpy arrays + JSON (1 was a torch.save file)
INPUT_CLIP = 8.0  # normalised inputs are clipped so a wild tick cannot blow up the recurrent state
LOG_STD_MIN, LOG_STD_MAX = -6.0, 4.0  # the predicted log standard deviation's range
BUNDLED = "default_model.npz"
GATES = {"lstm": 4, "gru": 3}  # the cells `ModelSpec.cell` names, and their gate units per hidden unit
MAX_LAYERS = 2


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
    cell: str = "lstm"  # a key of GATES
    layers: int = 1  # stacked cells, 1 to MAX_LAYERS: layer l + 1 reads layer l's new h

    def __post_init__(self) -> None:
        if self.cell not in GATES:
            raise ValueError(f"model cell {self.cell!r}: must be one of {', '.join(GATES)}")
        if not 1 <= self.layers <= MAX_LAYERS:
            raise ValueError(f"model layers {self.layers}: must be between 1 and {MAX_LAYERS}")

    @property
    def state_sizes(self) -> tuple[int, int]:
        """The widths of a stream's recurrent state: h of every layer (layer l at [l*H, (l+1)*H)), and c of
        every layer for an LSTM (a GRU has no cell state: 0)."""
        width = self.layers * self.hidden_size
        return width, width if self.cell == "lstm" else 0


def layer_name(layer: int) -> str:
    """The state_dict prefix of layer ``layer``'s cell: ``cell`` for layer 0 (so a one-layer model keeps the
    names it always had), ``cell1`` for layer 1."""
    return "cell" if layer == 0 else f"cell{layer}"


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every weight's torch name and shape, in the order `Forecaster.random` draws them."""
    hidden, units = spec.hidden_size, GATES[spec.cell] * spec.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(spec.layers):
        name = layer_name(layer)
        shapes |= {f"{name}.weight_ih": (units, 1 if layer == 0 else hidden), f"{name}.weight_hh": (units, hidden),
                   f"{name}.bias_ih": (units,), f"{name}.bias_hh": (units,)}
    return shapes | {"head.weight": (2, hidden), "head.bias": (2,)}


@dataclass
class Forecaster:
    """The recurrent cells (`ModelSpec`) and a linear head giving (mean, log_std) of the next normalised value,
    as arrays."""

    spec: ModelSpec
    weights: dict[str, np.ndarray]  # float32, torch's state_dict names and shapes (`weight_shapes`)
    training_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = weight_shapes(self.spec)
        got = {name: tuple(array.shape) for name, array in self.weights.items()}
        if got != want:
            raise ValueError(f"model weights {got} do not match hidden_size {self.spec.hidden_size}, cell "
                             f"{self.spec.cell}, layers {self.spec.layers}: {want}")
        self.weights = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in self.weights.items()}

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @classmethod
    def random(cls, spec: ModelSpec = ModelSpec(), seed: int = 0) -> Forecaster:
        """An untrained model, initialised as torch initialises `LSTMCell`, `GRUCell` and `Linear` (uniform
        within 1/sqrt(H)), with an LSTM's forget-gate bias at 1 (split over the two bias vectors, every layer,
        as `TorchForecaster` starts): the baseline a trained model must beat, and a small model for tests."""
        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(spec.hidden_size)
        weights = {name: rng.uniform(-bound, bound, shape).astype(np.float32)
                   for name, shape in weight_shapes(spec).items()}
        h = spec.hidden_size
        if spec.cell == "lstm":
            for layer in range(spec.layers):
                for bias in ("bias_ih", "bias_hh"):
                    weights[f"{layer_name(layer)}.{bias}"][h:2 * h] = 0.5
        return cls(spec, weights)

    def save(self, path: Path, training: dict[str, Any] | None = None) -> None:
        """Write the model; ``training`` (facts about how it was trained) must be plain JSON data."""
        training = json.loads(json.dumps(training if training is not None else self.training_info))
        header = {"format": FORMAT, "version": VERSION, "training": training,
                  "spec": {"hidden_size": self.spec.hidden_size, "normaliser": self.spec.normaliser._asdict(),
                           "cell": self.spec.cell, "layers": self.spec.layers}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **self.weights)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | None = None) -> Forecaster:
        """Load a model file (``None``: the bundled default). Raises ValueError for a foreign file."""
        if path is None:
            with importlib.resources.as_file(bundled_model_resource()) as bundled:
                return cls.load(bundled)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                header = json.loads(arrays["header"].tobytes())
                weights = {name: arrays[name] for name in arrays.files if name != "header"}
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a loadable model file ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a streamer model file")
        if header.get("version") != VERSION:
            raise ValueError(f"{path}: model format version {header.get('version')}, this build reads {VERSION}")
        spec = header["spec"]
        try:
            model_spec = ModelSpec(int(spec["hidden_size"]), NormaliserSpec(**spec["normaliser"]),
                                   str(spec.get("cell", "lstm")), int(spec.get("layers", 1)))
        except ValueError as exc:  # a cell or depth this build does not know
            raise ValueError(f"{path}: {exc}") from None
        return cls(model_spec, weights, dict(header["training"]))

    def fingerprint(self) -> str:
        """A short digest of the weights: checkpoints record it so state is never applied to another model."""
        digest = hashlib.sha256()
        for name, array in sorted(self.weights.items()):
            digest.update(name.encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]


def bundled_model_resource():
    return importlib.resources.files("streamer").joinpath("data", BUNDLED)
