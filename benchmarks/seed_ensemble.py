"""Score-level ensembles of detectors that differ only in their model: do several seeds average out?

    PYTHONPATH=. python benchmarks/seed_ensemble.py /tmp/A/lstm_s1.npz /tmp/A/lstm_s2.npz

The bundled model's recipe gives 40.69-48.74 mean LOCO over three seeds (docs/detection.md, fourth round).
This combines the per-tick scores of the bundled model's detector and of one detector per MODEL file (mean,
median, max over the detectors, tick by tick) and puts each combination through `loco.py`'s protocol
(in-sample and leave-one-category-out, standard profile). Scores come from `loco.py`'s cache, so models
already evaluated there cost nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loco import CORPORA, PROFILES, Scored, held_out, in_sample, score  # noqa: E402

COMBINERS = {"mean": np.mean, "median": np.median, "max": np.max}


def combined(members: list[Scored], combine) -> Scored:
    base = members[0]
    scores = [combine(np.vstack([m.scores[i] for m in members]), axis=0) for i in range(len(base.keys))]
    return Scored(base.keys, base.folds, scores, base.windows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files besides the bundled one")
    args = parser.parse_args()
    variants = {"bundled": {}} | {path.stem: {"model": str(path)} for path in args.models}
    scored = {c: [score(name, overrides, c, quiet=True) for name, overrides in variants.items()] for c in CORPORA}
    rows = [(name, {c: [scored[c][k]] for c in CORPORA}) for k, name in enumerate(variants)]
    rows += [(f"{how} of all {len(variants)}", {c: [combined(scored[c], f)] for c in CORPORA})
             for how, f in COMBINERS.items()]
    print("variant | " + " | ".join(f"{c} in / LOCO" for c in CORPORA) + " | mean LOCO")
    for name, members in rows:
        figures = [(in_sample(members[c][0].series(), PROFILES[0]), held_out(members[c], PROFILES[0], lambda f: 0))
                   for c in CORPORA]
        print(f"{name} | " + " | ".join(f"{i:.2f} / {h:.2f}" for i, h in figures)
              + f" | {np.mean([h for _, h in figures]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
