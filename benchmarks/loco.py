"""Leave-one-category-out (LOCO) evaluation of detector variants over the development corpora.

    PYTHONPATH=. python benchmarks/loco.py default no_forecast random_init

Each variant (a named set of `DetectorSettings` overrides and/or a model file, see `VARIANTS`) scores every
file of every corpus once, through `streamer.offline.score_files` (the daemon's detector, fresh per file).
Scores are cached under ``$LOCO_CACHE`` (default /tmp/streamer-loco), keyed by the variant, the model's
bytes and the detector's source, so a table is recomputed in seconds once its variants are cached.

Two figures per corpus and NAB profile:

- **in-sample**: the NAB score of the whole corpus at the threshold chosen on that same corpus (what
  ``streamer evaluate`` prints);
- **LOCO**: for each fold (a category of the corpus), the threshold is chosen on the corpus's other folds
  and the held-out fold is scored at it; the held-out raw scores are summed over the folds and normalised
  once over the whole corpus. A *family* of variants (tunable constants, ``name=[a,b,...]``) is also
  chosen per fold: the member with the best mean in-sample standard score over the training part (the
  other folds of this corpus, plus the other corpora whole), so its held-out figure is out-of-sample.

Folds: nab, its 5 categories; msl (one category, 19 channels), 5 folds of channels taken round-robin in
name order; skab, the anomaly-free run and the valve1 experiments in 4 round-robin groups by experiment
number (the 4 sensors of one experiment stay together). A random detector (uniform scores, 5 seeds
averaged) goes through the same protocol on the same files.

One more figure, "skab, faults only": skab without its anomaly-free run, the layout of the lead's hidden
pump-rig set (every file holds a fault whose window covers ~35 % of it), whose pair of figures (streamer
and the random detector) it reproduces (docs/detection.md, seventh round). It is the figure to watch for
that set; it decides nothing alone, since the anomaly-free run's false alarms count too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import baselines
import numpy as np

from streamer.config import DetectorSettings, Settings
from streamer.core.model import Forecaster
from streamer.offline import nab
from streamer.offline.evaluate import DEFAULT_PROFILES, SUFFIXES, file_series

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LOCO_SHARED", ROOT.parent / "shared"))
CACHE = Path(os.environ.get("LOCO_CACHE", "/tmp/streamer-loco"))
CORPORA = ("nab", "msl", "skab")
FAULTS = "skab, faults only"  # an extra figure: skab's files with a window (`Scored.labelled`)
PROFILES = DEFAULT_PROFILES
RANDOM_SEEDS = nab.RANDOM_SEEDS
FOLD_LOG: list | None = None  # --folds: (fold, threshold, held-out standard score) of each fold
RANDOM_INIT = CACHE / "random_init.npz"  # same shape as the bundled model, untrained (made on first use)

# name -> overrides: detector settings by name, and "model" (a path; "RANDOM_INIT" for the untrained model, or
# "RANDOM_INIT:<seed>:<cell>[:<layers>]" for an untrained one of another cell or depth, e.g. RANDOM_INIT:0:gru).
VARIANTS: dict[str, dict] = {
    "default": {},  # the code's defaults (time-of-day evidence gated by the LSTM during a stream's first day,
    # range novelty gated by the LSTM's surprise, novelty_gate = 1)
    "no_forecast": {"forecast_evidence": False},  # the LSTM contributes nothing (nor gates anything)
    "random_init": {"model": "RANDOM_INIT"},  # the same detector with an untrained LSTM of the same shape
    "ungated": {"season_gate": 0.0, "novelty_gate": 0.0},  # the default before issue 15
    "ungated_random_init": {"season_gate": 0.0, "novelty_gate": 0.0, "model": "RANDOM_INIT"},
    "novelty_ungated": {"novelty_gate": 0.0},  # the default before the novelty gate (first-day season gate only)
    "novelty_ungated_random_init": {"novelty_gate": 0.0, "model": "RANDOM_INIT"},
    "gated_always": {"season_gate_days": 0.0},  # the gate for a stream's whole life
    "gated_always_random_init": {"season_gate_days": 0.0, "model": "RANDOM_INIT"},
}


def variant(spec: str) -> dict[str, dict]:
    """A variant by name, or ad hoc ``name:key=value,key=value`` (values parsed as JSON when they can be)."""
    if ":" not in spec:
        return {spec: VARIANTS[spec]}
    name, assignments = spec.split(":", 1)
    base = dict(VARIANTS.get(name.split("+")[0], {}))
    for item in filter(None, re.split(r",(?![^\[]*\])", assignments)):  # commas outside [...]
        key, value = item.split("=", 1)
        try:
            base[key] = json.loads(value)
        except json.JSONDecodeError:
            base[key] = value
    return {spec: base}


# --- scoring, cached --------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One corpus scored by one variant: per file its key, fold, scores and windows (row indices)."""

    keys: list[str]
    folds: list[str]
    scores: list[np.ndarray]
    windows: list[list[tuple[int, int]]]

    def series(self, scores: list[np.ndarray] | None = None) -> list[nab.Series]:
        return [nab.Series(k, s, w) for k, s, w in zip(self.keys, scores or self.scores, self.windows)]

    def labelled(self) -> Scored:
        """Only the files with an anomaly window: skab without its anomaly-free run is the layout of the lead's
        hidden pump-rig set (every file holds a fault), on which the random detector is strongest."""
        keep = [i for i, w in enumerate(self.windows) if w]
        return Scored(*([field[i] for i in keep] for field in (self.keys, self.folds, self.scores, self.windows)))


def fold_of(corpus: str, key: str, index: int) -> str:
    category, name = key.split("/", 1)
    if corpus == "msl":
        return f"msl-{index % 5}"
    if corpus == "skab":
        if category != "valve1":
            return category
        return f"valve1-{int(name.split('_', 1)[0]) % 4}"
    return category


def corpus_files(corpus: str) -> tuple[Path, list[Path], dict]:
    data = SHARED / corpus / "data"
    windows = nab.load_windows(SHARED / corpus / "windows.json")
    files = sorted(p for p in data.rglob("*") if p.name.endswith(SUFFIXES))
    return data, [p for p in files if p.relative_to(data).as_posix() in windows], windows


def model_path(overrides: dict) -> Path | None:
    path = overrides.get("model")
    if path and path.startswith("RANDOM_INIT"):  # RANDOM_INIT[:<seed>[:<cell>[:<layers>]]]
        parts = path.split(":")[1:]
        seed = int(parts[0]) if parts else 0
        cell = parts[1] if len(parts) > 1 else "lstm"
        layers = int(parts[2]) if len(parts) > 2 else 1
        shape = "" if (cell, layers) == ("lstm", 1) else f"_{cell}{layers}"  # the bundled model's: the old names
        target = RANDOM_INIT if (seed, shape) == (0, "") else RANDOM_INIT.with_name(f"random_init_{seed}{shape}.npz")
        if not target.exists():  # torch's own initialisation, seeded: the trainer's starting point
            import dataclasses

            import torch

            from streamer.offline.train import TorchForecaster

            torch.manual_seed(seed)
            spec = dataclasses.replace(Forecaster.load().spec, cell=cell, layers=layers)
            untrained = TorchForecaster(spec).to_forecaster({"random_init": True, "seed": seed})
            target.parent.mkdir(parents=True, exist_ok=True)
            untrained.save(target)
        return target
    return Path(path) if path else None


def detector_settings(overrides: dict, ignore: tuple[str, ...] = ("model",)) -> DetectorSettings:
    """A variant's detector settings: its overrides, less the keys that are not detector settings (the model,
    and whatever else a benchmark reads from a variant, ``ignore``)."""
    return DetectorSettings(**{k: v for k, v in overrides.items() if k not in ignore})


def cache_key(overrides: dict) -> str:
    effective = detector_settings(overrides).model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(effective, sort_keys=True).encode())  # the settings, defaults included
    path = model_path(overrides)
    digest.update(Path(path or _bundled()).read_bytes())
    for source in ("core/kernel.py", "core/detector.py", "offline/score.py", "core/model.py"):
        digest.update((ROOT / "streamer" / source).read_bytes())
    return digest.hexdigest()[:16]


def _bundled() -> Path:
    from streamer.core.model import bundled_model_resource

    return Path(str(bundled_model_resource()))


def _store(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache file whole or not at all (a run killed mid-write leaves no half file to be read)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target.with_suffix(".tmp.npz"), **arrays)
    target.with_suffix(".tmp.npz").replace(target)


def score(name: str, overrides: dict, corpus: str, quiet: bool = False) -> Scored:
    from streamer.offline.score import score_files

    target = CACHE / cache_key(overrides) / f"{corpus}.npz"
    data, files, windows = corpus_files(corpus)
    keys = [p.relative_to(data).as_posix() for p in files]
    folds = [fold_of(corpus, k, i) for i, k in enumerate(keys)]
    if target.exists():
        blob = np.load(target, allow_pickle=False)
        scores = [blob[f"s{i}"] for i in range(len(keys))]
        located = [[tuple(w) for w in blob[f"w{i}"].reshape(-1, 2).tolist()] for i in range(len(keys))]
        return Scored(keys, folds, scores, located)
    settings = Settings(detector=detector_settings(overrides), model={"path": model_path(overrides)})
    model = Forecaster.load(settings.model.path)
    started = time.perf_counter()
    rows = [file_rows for file_rows, _ in score_files(files, settings, model)]
    elapsed = time.perf_counter() - started
    if not quiet:
        print(f"  scored {name} on {corpus}: {sum(map(len, rows)):,} rows in {elapsed:.1f}s", file=sys.stderr)
    series = [file_series(key, file_rows, windows[key]) for key, file_rows in zip(keys, rows)]
    scores = [s.scores for s in series]
    located = [list(s.windows) for s in series]
    _store(target, {**{f"s{i}": s for i, s in enumerate(scores)},
                    **{f"w{i}": np.array(w, dtype=np.int64).reshape(-1, 2) for i, w in enumerate(located)}})
    (target.parent / "variant.json").write_text(json.dumps({"name": name, **overrides}, default=str))
    return Scored(keys, folds, scores, located)


# --- NAB figures ------------------------------------------------------------------------------------------


def in_sample(series: list[nab.Series], profile: nab.Profile) -> float:
    return nab.sweep(series, profile).normalised


def held_out(members: list[Scored], profile: nab.Profile, choose, log: bool = True) -> float:
    """LOCO figure of one corpus: per fold, ``choose(fold)`` picks a member (a variant of a family) on data
    outside the fold, its threshold is chosen on the other folds, and the fold is scored at it."""
    base = members[0]
    raw = 0.0
    for fold in sorted(set(base.folds)):
        member = members[choose(fold)]
        train = [s for s, f in zip(member.series(), member.folds) if f != fold]
        test = [s for s, f in zip(member.series(), member.folds) if f == fold]
        threshold = nab.sweep(train, profile).threshold
        part = math.fsum(nab.file_raw_score(s, threshold, profile) for s in test)
        raw += part
        if log and FOLD_LOG is not None and profile is PROFILES[0] and any(s.windows for s in test):
            FOLD_LOG.append((fold, threshold, nab.normalise(part, test, profile)))
    return nab.normalise(raw, base.series(), profile)


def baseline(name: str, corpus: str, like: Scored) -> Scored:
    """A baseline detector of `baselines.py` on one corpus (the files, folds and windows of ``like``), cached
    by the detector's name and the module's source."""
    source = hashlib.sha256(Path(baselines.__file__).read_bytes()).hexdigest()[:12]
    target = CACHE / "baselines" / f"{re.sub(r'[^a-z]+', '-', name.lower()).strip('-')}-{source}" / f"{corpus}.npz"
    if target.exists():
        blob = np.load(target, allow_pickle=False)
        return Scored(like.keys, like.folds, [blob[f"s{i}"] for i in range(len(like.keys))], like.windows)
    _, files, _ = corpus_files(corpus)
    started = time.perf_counter()
    scores = [baselines.BASELINES[name](baselines.read_values(p)) for p in files]
    print(f"  scored {name} on {corpus} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    for key, s, ref in zip(like.keys, scores, like.scores):
        if len(s) != len(ref):
            raise ValueError(f"{corpus}/{key}: {len(s)} values, {len(ref)} scored rows")
    _store(target, {f"s{i}": s for i, s in enumerate(scores)})
    return Scored(like.keys, like.folds, scores, like.windows)


@dataclass
class Row:
    name: str
    figures: dict  # corpus -> (in-sample [3], LOCO [3])


def evaluate_family(name: str, members: dict[str, dict], cache: dict) -> Row:
    """One row: a single variant, or a family whose member is chosen per held-out fold."""
    scored = {c: [cache[(m, c)] for m in members] for c in CORPORA}
    standard = PROFILES[0]
    # in-sample standard score of every member on every corpus, and per (corpus, fold) without that fold
    whole = {c: [in_sample(s.series(), standard) for s in scored[c]] for c in CORPORA}

    def chooser(corpus: str):
        def choose(fold: str) -> int:
            if len(members) == 1:
                return 0
            best, best_value = 0, -math.inf
            for m in range(len(members)):
                s = scored[corpus][m]
                part = [x for x, f in zip(s.series(), s.folds) if f != fold]
                values = [in_sample(part, standard)] + [whole[c][m] for c in CORPORA if c != corpus]
                if np.mean(values) > best_value:
                    best, best_value = m, float(np.mean(values))
            return best
        return choose

    figures = {}
    for c in CORPORA:
        best_in = int(np.argmax(whole[c]))  # in-sample: the member chosen on the corpus itself
        ins = [in_sample(scored[c][best_in].series(), p) for p in PROFILES]
        loco = [held_out(scored[c], p, chooser(c)) for p in PROFILES]
        figures[c] = (ins, loco)
    faults = [m.labelled() for m in scored["skab"]]
    best_in = int(np.argmax([in_sample(m.series(), standard) for m in faults]))
    figures[FAULTS] = ([in_sample(faults[best_in].series(), p) for p in PROFILES],
                       [held_out(faults, p, chooser("skab"), log=False) for p in PROFILES])
    return Row(name, figures)


def random_row(cache_any: dict) -> Row:
    parts = {**{c: cache_any[c] for c in CORPORA}, FAULTS: cache_any["skab"].labelled()}
    figures = {}
    for name, base in parts.items():
        ins, loco = np.zeros(3), np.zeros(3)
        for seed in range(RANDOM_SEEDS):
            fake = Scored(base.keys, base.folds, [s.scores for s in nab.random_corpus(base.series(), seed)],
                          base.windows)
            ins += [in_sample(fake.series(), p) for p in PROFILES]
            loco += [held_out([fake], p, lambda fold: 0) for p in PROFILES]
        figures[name] = (list(ins / RANDOM_SEEDS), list(loco / RANDOM_SEEDS))
    return Row(f"random (uniform, {RANDOM_SEEDS} seeds)", figures)


def print_table(rows: list[Row]) -> None:
    width = max(24, *(len(r.name) for r in rows))
    fmt = lambda xs: " / ".join(f"{x:6.2f}" for x in xs)  # noqa: E731
    for c in (*CORPORA, FAULTS):
        print(f"\n{c}: NAB score standard / low-FP / low-FN")
        print(f"{'variant':<{width}}  {'in-sample':^24}  {'LOCO (held-out)':^24}")
        for r in rows:
            ins, loco = r.figures[c]
            print(f"{r.name:<{width}}  {fmt(ins)}  {fmt(loco)}")
    print("\nsummary, standard profile (mean of the three corpora)")
    print(f"{'variant':<{width}}  {'nab in/LOCO':>15}  {'msl in/LOCO':>15}  {'skab in/LOCO':>15}  {'mean LOCO':>9}"
          f"  {'skab faults in/LOCO':>19}")
    for r in rows:
        cells = [f"{r.figures[c][0][0]:6.2f}/{r.figures[c][1][0]:6.2f}" for c in CORPORA]
        mean = np.mean([r.figures[c][1][0] for c in CORPORA])
        faults = f"{r.figures[FAULTS][0][0]:6.2f}/{r.figures[FAULTS][1][0]:6.2f}"
        print(f"{r.name:<{width}}  " + "  ".join(f"{x:>15}" for x in cells) + f"  {mean:9.2f}  {faults:>19}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=list(VARIANTS),
                        help="variant names from VARIANTS, or name:key=value,... ; a family: "
                             "name:key=[a,b,c] (every combination, chosen per held-out fold)")
    parser.add_argument("--folds", action="store_true", help="also print each held-out fold's standard score")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--baselines", action="store_true", help="also score the issue's baseline detectors "
                        "(benchmarks/baselines.py: NAB's windowed Gaussian, River's Half-Space Trees)")
    args = parser.parse_args()
    rows, cache = [], {}
    for spec in args.variants:
        (name, overrides), = variant(spec).items()
        grid = {k: v for k, v in overrides.items() if isinstance(v, list)}
        members: dict[str, dict] = {}
        if grid:
            import itertools

            for combo in itertools.product(*grid.values()):
                members[f"{name}{dict(zip(grid, combo))}"] = {**overrides, **dict(zip(grid, combo))}
        else:
            members[name] = overrides
        for member, member_overrides in members.items():
            for c in CORPORA:
                cache[(member, c)] = score(member, member_overrides, c)
        global FOLD_LOG
        FOLD_LOG = [] if args.folds else None
        rows.append(evaluate_family(name, members, cache))
        if FOLD_LOG:
            print(f"{name} held-out folds (standard): " + ", ".join(f"{f} {v:.1f} @{t:.3f}" for f, t, v in FOLD_LOG))
        print(f"  evaluated {name}", file=sys.stderr)
    any_member = next(iter(cache))[0]
    if args.baselines:
        for name in baselines.BASELINES:
            for c in CORPORA:
                cache[(name, c)] = baseline(name, c, cache[(any_member, c)])
            rows.append(evaluate_family(name, {name: {}}, cache))
    rows.append(random_row({c: cache[(any_member, c)] for c in CORPORA}))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({r.name: r.figures for r in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
