"""Training the forecaster: ``streamer train INPUT... --output MODEL``.

The trainer sees the data exactly as the detector does:

- files are read with `read_records` and decoded with `TickDecoder.decode_obj` (invalid ticks are skipped and
  counted, as the daemon does); inputs are read in the order given, one stream continuing across files;
- per stream, ticks not later than the stream's previous tick are dropped (the detector skips them as out of
  order), and the detector's reset rules cut a stream into independent *sequences*: an explicit ``reset``, a
  change of ``segment``, a new session day, or a gap over ``max_gap_seconds`` (`ResetRules`);
- inputs and targets come from the detector's own normaliser (`kernel.normalise`), restarted at every sequence start
  (where the detector zeroes a stream's statistics): ``x_t = (v_t - mean_t) / scale_t`` with ``v_t`` folded
  into ``mean_t``/``var_t``, target ``(v_{t+1} - mean_t) / scale_t`` (clipped to +-`TARGET_CLIP`), so that
  ``mean_t + scale_t * mu_t`` is the detector's forecast of ``v_{t+1}``;
- the forward pass is `TorchForecaster.step`, the detector's recurrent step (`kernel.forecast_step` is the same
  function compiled), one step at a time.

Stateful truncated BPTT: the sequences are laid end to end in ``batch`` parallel *lanes*; batch ``k`` is the
``chunk`` steps ``[k*chunk, (k+1)*chunk)`` of every lane, and the recurrent state is carried (detached) from one
batch to the next, zeroed where a lane starts a new sequence, just as the detector zeroes a reset stream.
The loss is the Gaussian negative log-likelihood of the targets. Adam with gradient-norm clipping and a
cosine-decayed learning rate; an exponential moving average of the weights is what gets validated (a held-out
split by stream, seeded) and saved; early stopping on validation NLL keeps the best average. Seeded and
deterministic (single-threaded by default: as fast as two threads for this model size, and bit-reproducible).
"""

from __future__ import annotations

import copy
import heapq
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from streamer.config import ResetRules, TickSettings
from streamer.core import kernel
from streamer.core.detector import RESET_REASONS, ResetPolicy
from streamer.core.model import INPUT_CLIP, LOG_STD_MAX, LOG_STD_MIN, Forecaster, ModelSpec, NormaliserSpec, layer_name
from streamer.core.ticks import InvalidTick, Tick, TickDecoder, object_array, read_records
from streamer.offline.train_command import TrainConfig

TARGET_CLIP = 8.0  # a spike's target is clipped like the inputs are, so that one tick cannot dominate a batch
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


# --- the network, as a torch module -------------------------------------------------------------------------


class TorchForecaster(nn.Module):
    """`streamer.core.model.Forecaster` as a torch module: the spec's cells (`nn.LSTMCell` or `nn.GRUCell`, one
    per layer, named as in the model file) and a linear head giving (mean, log_std) of the next normalised
    value. Trained here; the daemon runs its weights in the compiled kernel."""

    CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}

    def __init__(self, spec: ModelSpec | None = None):
        super().__init__()
        self.spec = spec = spec or ModelSpec()
        h = spec.hidden_size
        # Layer 0, the head, then the layers above: a one-layer model draws its initial weights as it always did.
        self.cell = self.CELLS[spec.cell](1, h)
        self.head = nn.Linear(h, 2)
        for layer in range(1, spec.layers):
            setattr(self, layer_name(layer), self.CELLS[spec.cell](h, h))
        if spec.cell == "lstm":
            # Forget-gate bias 1 (split over the two bias vectors): remember by default (Jozefowicz et al., 2015).
            with torch.no_grad():
                for cell in self.cells:
                    for bias in (cell.bias_ih, cell.bias_hh):
                        bias[h:2 * h].fill_(0.5)

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def cells(self) -> list[nn.Module]:
        return [getattr(self, layer_name(layer)) for layer in range(self.spec.layers)]

    def zero_state(self, lanes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The state of ``lanes`` fresh streams: h and c as the detector's tables hold them
        (`ModelSpec.state_sizes`)."""
        h_width, c_width = self.spec.state_sizes
        return torch.zeros(lanes, h_width), torch.zeros(lanes, c_width)

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One step for a batch of streams: x [B], h [B, layers*H], c [B, layers*H] (LSTM) or [B, 0] (GRU)
        -> (mean [B], log_std [B], h, c). Layer l's state is columns [l*H, (l+1)*H); layer l + 1 reads layer
        l's new h."""
        size, lstm = self.spec.hidden_size, self.spec.cell == "lstm"
        inputs = x.clamp(-INPUT_CLIP, INPUT_CLIP).unsqueeze(1)
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            part = slice(layer * size, (layer + 1) * size)
            if lstm:
                inputs, c_new = cell(inputs, (h[:, part], c[:, part]))
                cs.append(c_new)
            else:
                inputs = cell(inputs, h[:, part])
            hs.append(inputs)
        out = self.head(inputs)
        h = hs[0] if len(hs) == 1 else torch.cat(hs, 1)
        c = c if not lstm else cs[0] if len(cs) == 1 else torch.cat(cs, 1)
        return out[:, 0], out[:, 1].clamp(LOG_STD_MIN, LOG_STD_MAX), h, c

    @classmethod
    def of(cls, model: Forecaster) -> TorchForecaster:
        module = cls(model.spec)
        module.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in model.weights.items()})
        return module.eval()

    def to_forecaster(self, training: dict | None = None) -> Forecaster:
        return Forecaster(self.spec, {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()},
                          training or {})


# --- reading: the detector's view of recorded files ---------------------------------------------------------


@dataclass
class Corpus:
    """Independent training sequences (a stream between two resets), with the stream each belongs to."""

    streams: list[str] = field(default_factory=list)
    sequences: list[np.ndarray] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # invalid-tick reasons and "out_of_order"
    resets: Counter = field(default_factory=Counter)  # reset reasons, as the detector counts them
    ticks: int = 0

    def add(self, stream: str, values: np.ndarray) -> None:
        if len(values) >= 2:  # a lone tick has nothing to forecast
            self.streams.append(stream)
            self.sequences.append(np.asarray(values, dtype=np.float64))


def read_corpus(paths: list[Path], fields: TickSettings, rules: ResetRules) -> Corpus:
    """Read recorded files into per-stream sequences cut at the detector's resets (the same `ResetPolicy`,
    and the same out-of-order rule: a tick not later than every earlier tick of its stream is skipped).

    Sequences are listed in the order they end while reading (a reset ends one; the streams' last sequences
    follow, in order of first appearance), which is the order training lays them into lanes.
    """
    decoder = TickDecoder(fields)
    corpus = Corpus()
    by_stream: dict[str, list[tuple[int, Tick]]] = defaultdict(list)  # (position in the reading, tick)
    position = 0
    for path in paths:
        for record in read_records(Path(path), fields):
            try:
                ticks = decoder.decode_obj(record.obj)
            except InvalidTick as exc:
                corpus.skipped[exc.reason] += 1
                continue
            for tick in ticks:
                by_stream[tick.stream].append((position, tick))
                position += 1
    policy = ResetPolicy(rules)
    ended: list[tuple[float, str, np.ndarray]] = []  # (when the sequence ended, stream, values)
    for first_seen, (stream, entries) in enumerate(by_stream.items()):
        ts = np.array([t.ts for _, t in entries])
        later = ts > np.maximum.accumulate(np.concatenate(([-np.inf], ts[:-1])))
        if not later.all():
            corpus.skipped["out_of_order"] += int(np.count_nonzero(~later))
            entries = [e for e, ok in zip(entries, later.tolist()) if ok]
            ts = ts[later]
        ticks = [t for _, t in entries]
        segment, day = object_array([t.segment for t in ticks]), policy.days(ts)
        explicit = np.array([t.reset for t in ticks], dtype=bool)
        code = policy.reasons(explicit[1:], segment[1:], segment[:-1], day[1:], day[:-1], ts[1:], ts[:-1])
        for reason, n in zip(RESET_REASONS, np.bincount(code, minlength=len(RESET_REASONS) + 1)[1:].tolist()):
            if n:
                corpus.resets[reason] += n
        cuts = np.flatnonzero(code) + 1
        ends = [entries[i][0] for i in cuts.tolist()] + [position + first_seen]  # the last ends after reading
        values = np.array([t.value for t in ticks])
        ended += [(end, stream, sequence) for end, sequence in zip(ends, np.split(values, cuts))]
        corpus.ticks += len(ticks)
    for _, stream, sequence in sorted(ended, key=lambda e: e[0]):
        corpus.add(stream, sequence)
    return corpus


# --- lanes: stateful batching --------------------------------------------------------------------------------


@dataclass
class Lanes:
    """Sequences laid end to end in parallel lanes, time along axis 1 (a multiple of the chunk length)."""

    values: np.ndarray  # [B, T] float64 (0 past the end of a lane)
    reset: np.ndarray  # [B, T] bool: a sequence (or the padding) starts here, so the state is zeroed first
    has_target: np.ndarray  # [B, T] bool: step t is followed by step t+1 of the same sequence
    owner: np.ndarray  # [B, T] int: index of the sequence at this step, -1 for padding


def layout(sequences: list[np.ndarray], order, lanes: int, chunk: int = 1) -> Lanes:
    """Lay ``sequences`` (taken in ``order``) into ``lanes`` lanes, each into the currently shortest lane."""
    order = [int(i) for i in order]
    lanes = max(1, min(lanes, len(order)))
    heap = [(0, b) for b in range(lanes)]
    placed: list[tuple[int, int, int]] = []  # (sequence, lane, start)
    ends = [0] * lanes
    for i in order:
        used, b = heapq.heappop(heap)
        placed.append((i, b, used))
        ends[b] = used + len(sequences[i])
        heapq.heappush(heap, (ends[b], b))
    steps = max(ends) if ends else 0
    steps = max(chunk, -(-steps // chunk) * chunk)
    values = np.zeros((lanes, steps))
    reset = np.zeros((lanes, steps), dtype=bool)
    has_target = np.zeros((lanes, steps), dtype=bool)
    owner = np.full((lanes, steps), -1, dtype=np.int64)
    for i, b, start in placed:
        n = len(sequences[i])
        values[b, start:start + n] = sequences[i]
        reset[b, start] = True
        has_target[b, start:start + n - 1] = True
        owner[b, start:start + n] = i
    for b in range(lanes):
        reset[b, ends[b]:] = True
    return Lanes(values, reset, has_target, owner)


def normalise(lanes: Lanes, spec: NormaliserSpec):
    """Inputs, targets and the normaliser's (mean, scale) at every step, as the detector computes them.

    The detector's own compiled arithmetic (`kernel.normalise_lanes`); a lane's statistics are zeroed where
    it starts a sequence (the detector zeroes a reset stream's row). Returns float32 ``x``, float32 ``y``
    (clipped; 0 where there is no target) and float64 ``mean``, ``scale``, all ``[B, T]``.
    """
    values = lanes.values
    means, scales = kernel.normalise_lanes(values, lanes.reset, spec)
    x = ((values - means) / scales).astype(np.float32)
    y = np.zeros_like(values)
    y[:, :-1] = (values[:, 1:] - means[:, :-1]) / scales[:, :-1]
    y = np.where(lanes.has_target, np.clip(y, -TARGET_CLIP, TARGET_CLIP), 0.0).astype(np.float32)
    return x, y, means, scales


class _Tensors:
    """Time-major tensors of one layout, ready for the step loop."""

    def __init__(self, lanes: Lanes, spec: NormaliserSpec):
        x, y, self.mean, self.scale = normalise(lanes, spec)
        self.x = torch.from_numpy(np.ascontiguousarray(x.T))  # [T, B]
        self.y = torch.from_numpy(np.ascontiguousarray(y.T))
        self.mask = torch.from_numpy(np.ascontiguousarray(lanes.has_target.T)).float()
        self.keep = torch.from_numpy(np.ascontiguousarray(~lanes.reset.T)).float().unsqueeze(2)  # [T, B, 1]
        self.any_reset = lanes.reset.any(axis=0).tolist()
        self.steps, self.lanes = self.x.shape


def _run_steps(model: TorchForecaster, data: _Tensors, start: int, stop: int, h: torch.Tensor, c: torch.Tensor):
    """Steps [start, stop) of every lane: (mu [n, B], log_std [n, B], h, c)."""
    mus, log_stds = [], []
    for t in range(start, stop):
        if data.any_reset[t]:
            keep = data.keep[t]
            h, c = h * keep, c * keep
        mu, log_std, h, c = model.step(data.x[t], h, c)
        mus.append(mu)
        log_stds.append(log_std)
    return torch.stack(mus), torch.stack(log_stds), h, c


def gaussian_nll(y: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood of ``y`` under N(mu, exp(log_std)^2)."""
    return 0.5 * ((y - mu) * torch.exp(-log_std)) ** 2 + log_std + _HALF_LOG_2PI


def laplace_nll(y: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood of ``y`` under Laplace(mu, exp(log_scale)): heavier tails than the
    Gaussian, so a spike costs linearly, not quadratically, and the head does not chase it."""
    return (y - mu).abs() * torch.exp(-log_scale) + log_scale + _LOG_2


LOSSES = {"gaussian": gaussian_nll, "laplace": laplace_nll}


@torch.inference_mode()
def evaluate(model: TorchForecaster, data: _Tensors, chunk: int = 256, loss: str = "gaussian") -> float:
    """Mean NLL per target (under ``loss``) over a whole layout (state carried through, as in serving)."""
    h, c = model.zero_state(data.lanes)
    total, count = 0.0, 0.0
    for start in range(0, data.steps, chunk):
        stop = min(start + chunk, data.steps)
        mu, log_std, h, c = _run_steps(model, data, start, stop, h, c)
        mask = data.mask[start:stop]
        total += float((LOSSES[loss](data.y[start:stop], mu, log_std) * mask).sum())
        count += float(mask.sum())
    return total / max(count, 1.0)


@torch.inference_mode()
def forecasts(model: Forecaster, values: np.ndarray) -> np.ndarray:
    """The forecast of each tick of one sequence through the training code path (NaN for the first tick).

    Equals the detector's ``forecast`` for the same ticks of a fresh stream (the tests check it).
    """
    model = TorchForecaster.of(model)
    lanes = layout([np.asarray(values, dtype=np.float64)], [0], 1)
    data = _Tensors(lanes, model.spec.normaliser)
    mu, _, _, _ = _run_steps(model, data, 0, len(values), *model.zero_state(1))
    out = np.full(len(values), np.nan)
    out[1:] = (data.mean[0, :-1] + data.scale[0, :-1] * mu[:-1, 0].double().numpy())[: len(values) - 1]
    return out


# --- training -------------------------------------------------------------------------------------------------


@torch.no_grad()
def _update_average(averaged: TorchForecaster, model: TorchForecaster, decay: float) -> None:
    for avg, param in zip(averaged.parameters(), model.parameters()):
        avg.lerp_(param, 1.0 - decay)


def split_streams(streams: list[str], fraction: float, seed: int) -> set[str]:
    """The validation streams: a seeded ``fraction`` of the distinct stream names (at least one if any)."""
    names = sorted(set(streams))
    if fraction <= 0 or len(names) < 2:
        return set()
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    rng = np.random.default_rng([seed, 0xDA7A])
    return {names[i] for i in rng.permutation(len(names))[:count]}


def train(corpus: Corpus, config: TrainConfig, log=None) -> tuple[Forecaster, dict]:
    """Train a forecaster on ``corpus``; returns the best model (by validation NLL) and a summary dict."""
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, config.threads))
    torch.use_deterministic_algorithms(True)
    try:
        model, summary = _train(corpus, config, log)
        return model.to_forecaster(), summary
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(corpus: Corpus, config: TrainConfig, log) -> tuple[TorchForecaster, dict]:
    began = time.monotonic()
    if not corpus.sequences:
        raise ValueError("no training sequences (every stream has fewer than 2 ticks between resets)")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TorchForecaster(ModelSpec(hidden_size=config.hidden_size, cell=config.cell, layers=config.layers))
    spec = model.spec.normaliser
    val_streams = split_streams(corpus.streams, config.val_fraction, config.seed)
    train_ids = [i for i, s in enumerate(corpus.streams) if s not in val_streams]
    val_ids = [i for i, s in enumerate(corpus.streams) if s in val_streams]
    val_data = _Tensors(layout(corpus.sequences, val_ids, 256, 256), spec) if val_ids else None
    train_ticks = sum(len(corpus.sequences[i]) for i in train_ids)
    log(f"training on {len(train_ids)} sequences ({train_ticks} ticks) of "
        f"{len(set(corpus.streams)) - len(val_streams)} streams; validating on {len(val_ids)} sequences of "
        f"{len(val_streams)} streams")

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    averaged = copy.deepcopy(model).eval()  # an exponential moving average of the weights: what is evaluated
    best = math.inf
    best_state = {k: v.clone() for k, v in averaged.state_dict().items()}
    best_epoch, bad_epochs, stopped = 0, 0, "epochs"
    history: list[float] = []
    if val_data is not None:
        best = evaluate(model, val_data, loss=config.loss)
        history.append(round(best, 5))
        log(f"epoch 0: val NLL {best:.4f}")
    deadline = began + config.max_minutes * 60 if config.max_minutes > 0 else math.inf
    lane_steps = math.ceil(train_ticks / max(1, min(config.batch, len(train_ids))))
    epoch_steps = math.ceil(lane_steps / config.chunk)  # about: lanes end unevenly
    bar = tqdm(total=config.epochs * epoch_steps, unit="batch", file=sys.stderr, dynamic_ncols=True,
               disable=None if config.progress is None else not config.progress)
    total_steps = config.epochs * epoch_steps
    updates = 0
    lr = config.lr
    train_nll = math.nan
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        data = _Tensors(layout(corpus.sequences, rng.permutation(train_ids), config.batch, config.chunk), spec)
        model.train()
        h, c = model.zero_state(data.lanes)
        total, count = 0.0, 0.0
        out_of_time = False
        for start in range(0, data.steps, config.chunk):
            stop = start + config.chunk
            mu, log_std, h, c = _run_steps(model, data, start, stop, h.detach(), c.detach())
            mask = data.mask[start:stop]
            n = float(mask.sum())
            if n:
                nll = (LOSSES[config.loss](data.y[start:stop], mu, log_std) * mask).sum()
                # Cosine decay from lr to lr/20 over the planned batches.
                lr = config.lr * (0.05 + 0.475 * (1 + math.cos(math.pi * min(1.0, updates / total_steps))))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                (nll / n).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                updates += 1
                _update_average(averaged, model, min(config.ema, (1 + updates) / (10 + updates)))
                total += float(nll.detach())
                count += n
            bar.update(1)
            if bar.n % 20 == 0 and count:
                bar.set_postfix(epoch=epoch, nll=f"{total / count:.3f}", val=f"{best:.3f}", refresh=False)
            if time.monotonic() > deadline:
                out_of_time = True
                break
        model.eval()
        train_nll = total / max(count, 1.0)
        if val_data is None:
            best, best_epoch = train_nll, epoch
            best_state = {k: v.clone() for k, v in averaged.state_dict().items()}
            log(f"epoch {epoch}: train NLL {train_nll:.4f}")
        else:
            val = evaluate(averaged, val_data, loss=config.loss)
            history.append(round(val, 5))
            improved = val < best - 1e-4
            log(f"epoch {epoch}: train NLL {train_nll:.4f}, val NLL {val:.4f}{' *' if improved else ''}, "
                f"lr {lr:.2g}, {time.monotonic() - began:.0f} s")
            if improved:
                best, best_epoch, bad_epochs = val, epoch, 0
                best_state = {k: v.clone() for k, v in averaged.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= config.patience:
                    stopped = "patience"
                    break
        if out_of_time:
            stopped = "max_minutes"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    summary = {
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "best_val_nll": round(best, 5) if val_data is not None else None,
        "final_train_nll": round(train_nll, 5),
        "val_nll_history": history,
        "stopped": stopped,
        "train_seconds": round(time.monotonic() - began, 1),
        "train_sequences": len(train_ids),
        "train_ticks": train_ticks,
        "val_streams": len(val_streams),
        "val_sequences": len(val_ids),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
    return model, summary


# --- the `streamer train` command --------------------------------------------------------------------------------
