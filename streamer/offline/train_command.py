"""``streamer train``: its arguments, its settings (`TrainConfig`) and its run, without importing torch until
it runs, so that every other command's start-up stays free of it (`streamer.offline.train` is the trainer)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamer.config import ResetRules
from streamer.core.model import GATES, MAX_LAYERS, ModelSpec
from streamer.core.ticks import RecordError

LOSS_NAMES = ("gaussian", "laplace")  # `streamer.offline.train.LOSSES`
# h and c floats a stream (`ModelSpec.state_sizes`), at most: with the detector's other 928 bytes a slot, the
# tables' spare capacity (they grow by an eighth) and the Python-side state (120-136 B), a stream's whole state
# stays within the 2 KB budget (a one-layer LSTM of 96 units, a two-layer one of 48; the bundled model's 64 units
# keep 512 B; `make bench` measures 1,701 B with it)
MAX_STATE_FLOATS = 192


@dataclass
class TrainConfig:
    hidden_size: int = 64
    cell: str = "lstm"  # a key of `model.GATES`
    layers: int = 1
    epochs: int = 24
    chunk: int = 64
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 4
    max_minutes: float = 0.0  # 0: no limit
    grad_clip: float = 1.0
    ema: float = 0.99  # decay of the weight average that is validated and saved (0: the raw weights)
    threads: int = 1
    loss: str = "gaussian"  # likelihood of the head: gaussian | laplace (see LOSSES)
    progress: bool | None = None  # None: a progress bar on a terminal only



def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="recorded files (.csv/.jsonl, optionally .gz) in the daemon's tick format")
    parser.add_argument("--output", "-o", type=Path, required=True, help="model file to write")
    parser.add_argument("--hidden-size", type=int, default=d.hidden_size,
                        help=f"hidden units per layer (default {d.hidden_size}; at most 128, and "
                             f"units x layers x (2 for an LSTM, 1 for a GRU) at most {MAX_STATE_FLOATS}: "
                             "recurrent state <= 768 B/stream)")
    parser.add_argument("--cell", choices=tuple(GATES), default=d.cell,
                        help=f"recurrent cell (default {d.cell}; gru: 3 gates instead of 4 and no cell state: "
                             "half the recurrent state, ~15%% less kernel time a tick)")
    parser.add_argument("--layers", type=int, choices=range(1, MAX_LAYERS + 1), default=d.layers,
                        help=f"stacked cells, the second reading the first's h (default {d.layers}; 2: twice "
                             "the recurrent state, ~2.6x the kernel time a tick and 2-2.4x the training time)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    parser.add_argument("--chunk", type=int, default=d.chunk,
                        help=f"truncated-BPTT length in steps (default {d.chunk})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"parallel lanes (default {d.batch})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction,
                        help=f"fraction of the streams held out for validation (default {d.val_fraction})")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help=f"stop after this many epochs without a better validation NLL "
                             f"(default {d.patience})")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes,
                        help="stop after this much wall time, keeping the best weights (default: no limit)")
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip,
                        help=f"gradient-norm clip (default {d.grad_clip})")
    parser.add_argument("--ema", type=float, default=d.ema,
                        help=f"decay of the averaged weights that are validated and saved (default {d.ema}; "
                             "0: the raw weights)")
    parser.add_argument("--loss", choices=LOSS_NAMES, default=d.loss,
                        help=f"likelihood of the forecast head (default {d.loss}; laplace: heavier tails)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help=f"torch threads (default {d.threads}: bit-reproducible and as fast for this size)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(args: argparse.Namespace, settings) -> int:
    import torch

    from streamer.offline.train import read_corpus, train

    if not 1 <= args.hidden_size <= 128:
        print("streamer train: --hidden-size must be between 1 and 128", file=sys.stderr)
        return 2
    state = ModelSpec(args.hidden_size, cell=args.cell, layers=args.layers).state_sizes
    if sum(state) > MAX_STATE_FLOATS:
        print(f"streamer train: --hidden-size {args.hidden_size} with --cell {args.cell} --layers {args.layers} "
              f"keeps {sum(state)} floats of recurrent state a stream, at most {MAX_STATE_FLOATS} allowed",
              file=sys.stderr)
        return 2
    config = TrainConfig(hidden_size=args.hidden_size, cell=args.cell, layers=args.layers, epochs=args.epochs,
                         chunk=args.chunk, batch=args.batch,
                         lr=args.lr, seed=args.seed, val_fraction=args.val_fraction, patience=args.patience,
                         max_minutes=args.max_minutes, grad_clip=args.grad_clip, ema=args.ema,
                         threads=args.threads, loss=args.loss)
    rules = ResetRules(**settings.resets.model_dump(exclude={"topics"}))
    began = time.monotonic()
    try:
        corpus = read_corpus(args.inputs, settings.ticks, rules)
    except (OSError, RecordError) as exc:
        print(f"streamer train: {exc}", file=sys.stderr)
        return 1
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(corpus.skipped.items())) or "none"
    print(f"read {corpus.ticks} ticks of {len(set(corpus.streams))} streams in {len(corpus.sequences)} "
          f"sequences in {time.monotonic() - began:.1f} s (skipped: {skipped})", file=sys.stderr)
    try:
        model, summary = train(corpus, config)
    except ValueError as exc:
        print(f"streamer train: {exc}", file=sys.stderr)
        return 1
    recipe = " ".join(["streamer train", *map(str, args.inputs), "--output", str(args.output),
                       *(f"--{k.replace('_', '-')} {v}" for k, v in summary["config"].items())])
    model.save(args.output, training={
        "inputs": [{"path": str(p), "sha256": _sha256(p)} for p in args.inputs],
        "ticks": corpus.ticks,
        "skipped": dict(corpus.skipped),
        "resets": dict(corpus.resets),
        "seed": config.seed,
        "recipe": recipe,
        "torch": str(torch.__version__),
        **summary,
    })
    print(f"wrote {args.output} ({Path(args.output).stat().st_size} bytes): best val NLL "
          f"{summary['best_val_nll']} at epoch {summary['best_epoch']} of {summary['epochs_run']}, "
          f"{summary['train_seconds']} s", file=sys.stderr)
    return 0
