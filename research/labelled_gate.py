"""With a few labelled frames, how often does the gate publish a candidate, and what is then served?

    python -m research.labelled_gate --frames DIR --parent EVAL_DIR [--n 8] [--draws 1000]
        [--held] [--seed 0] CANDIDATE_EVAL_DIR ...

Given ``--labels``, ``crowdwatch adapt`` lets MAE on the labelled frames
decide: adapt.selfsup.gate.gate publishes the candidate when its MAE on them
is not above the parent's. This replays that function over many random
draws of N labelled frames from the per-image CSVs of ``crowdwatch eval``
(the parent's and each candidate's, on the same frames), and reports:

- how often the candidate is published;
- the MAE on the frames not drawn of what then serves (the candidate when
  published, the parent when not), averaged over the draws, next to the
  parent's and the candidate's own MAE on those frames.

``--held`` first multiplies each candidate's counts by the factor that
``keep_count`` applies (research/held_count.py), for candidates adapted before
``keep_count`` existed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adapt.data.datasets import list_images
from adapt.selfsup.adaptation import split_holdout
from adapt.selfsup.gate import FrameStats, gate
from research.count_errors import load
from research.held_count import held_factor


def labelled_stats(true: np.ndarray, pred: np.ndarray) -> FrameStats:
    """What the gate is given for the labelled frames (only MAE decides)."""
    return FrameStats(len(true), float(pred.mean()), float("nan"), mae=float(np.abs(pred - true).mean()))


def replay(true: np.ndarray, parent: np.ndarray, cand: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> dict[str, float]:
    """The gate's labelled decisions over ``draws`` random sets of ``n`` frames; MAE measured on the frames left."""
    published, served, parent_rest, cand_rest = [], [], [], []
    unused = FrameStats(0, float("nan"), float("nan"))  # the label-free figures play no part once labels decide
    for _ in range(draws):
        pick = np.zeros(len(true), bool)
        pick[rng.choice(len(true), n, replace=False)] = True
        labelled = (labelled_stats(true[pick], parent[pick]), labelled_stats(true[pick], cand[pick]))
        accept = gate(unused, unused, labelled=labelled).accepted
        rest_p = np.abs(parent[~pick] - true[~pick]).mean()
        rest_c = np.abs(cand[~pick] - true[~pick]).mean()
        published.append(accept)
        served.append(rest_c if accept else rest_p)
        parent_rest.append(rest_p)
        cand_rest.append(rest_c)
    return {"published": float(np.mean(published)), "served": float(np.mean(served)), "parent": float(np.mean(parent_rest)), "candidate": float(np.mean(cand_rest))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True, help="the folder the candidates adapted on (for --held)")
    p.add_argument("--parent", type=Path, required=True, help="crowdwatch eval --out folder of the parent model")
    p.add_argument("--n", type=int, default=8, help="labelled frames per draw")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--held", action="store_true", help="hold each candidate's mean training-frame count at the parent's first")
    p.add_argument("--holdout-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("candidates", nargs="+", type=Path, help="crowdwatch eval --out folders of candidates")
    args = p.parse_args()

    parent = load(args.parent)
    train, _ = split_holdout(list_images(args.frames), args.holdout_every)
    train_names = [t.name for t in train]
    print(f"# {args.draws} draws of {args.n} labelled frames; MAE on the frames not drawn, averaged over the draws")
    print("| candidate | published | MAE served | parent | candidate |")
    print("|---|---|---|---|---|")
    for folder in args.candidates:
        cand = load(folder)
        if not np.array_equal(cand["image"], parent["image"]):
            raise SystemExit(f"{folder}: not the parent's frames in the parent's order")
        pred = cand["pred_count"]
        if args.held:
            pred = pred * held_factor(parent, cand, train_names)
        r = replay(parent["true_count"], parent["pred_count"], pred, args.n, args.draws, np.random.default_rng(args.seed))
        print(f"| {folder}{' (held)' if args.held else ''} | {r['published']:.0%} | {r['served']:.2f} | {r['parent']:.2f} | {r['candidate']:.2f} |")


if __name__ == "__main__":
    main()
