"""What ``keep_count`` serves, from a run made without it: MAE and RMSE of the held counts.

    python -m research.held_count --frames DIR --parent EVAL_DIR [--holdout-every 5] RUN_EVAL_DIR ...

``crowdwatch adapt`` holds the parent's mean count on the training frames by
multiplying the candidate's served density by one factor (adapt.selfsup.adaptation.
keep_parent_count). ``count_scale`` is linear, so a candidate's held counts
are its per-image counts times that factor, computed here from the per-image
CSVs of ``crowdwatch eval`` (the parent's and each candidate's, on the same
frames at the same size): factor = mean parent count / mean candidate count
over the training frames, i.e. the frames ``split_holdout`` did not hold out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adapt.data.datasets import list_images
from adapt.selfsup.adaptation import split_holdout
from adapt.training.evaluate import count_errors
from research.count_errors import load


def training_mean(d: dict[str, np.ndarray], train_names: list[str]) -> float:
    """Mean predicted count over the training frames (by image name)."""
    return float(d["pred_count"][np.isin(d["image"], train_names)].mean())


def held_factor(parent: dict[str, np.ndarray], cand: dict[str, np.ndarray], train_names: list[str]) -> float:
    """The factor keep_count applies: parent's mean training-frame count over the candidate's."""
    return training_mean(parent, train_names) / training_mean(cand, train_names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True, help="the folder the runs adapted on")
    p.add_argument("--parent", type=Path, required=True, help="crowdwatch eval --out folder of the parent model")
    p.add_argument("--holdout-every", type=int, default=5)
    p.add_argument("runs", nargs="+", type=Path, help="crowdwatch eval --out folders of candidates adapted without keep_count")
    args = p.parse_args()

    train, _ = split_holdout(list_images(args.frames), args.holdout_every)
    train_names = [t.name for t in train]
    parent = load(args.parent)
    print(f"# held counts: parent {args.parent}, mean count on the {len(train_names)} training frames {training_mean(parent, train_names):.1f}")
    print("| candidate | MAE / RMSE as adapted | mean count | factor | MAE / RMSE held | mean count held |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        cand = load(run)
        factor = held_factor(parent, cand, train_names)
        pred, true = cand["pred_count"], cand["true_count"]
        mae, rmse = count_errors(true, pred)
        mae_h, rmse_h = count_errors(true, pred * factor)
        print(f"| {run} | {mae:.2f} / {rmse:.2f} | {pred.mean():.1f} | {factor:.3f} | {mae_h:.2f} / {rmse_h:.2f} | {pred.mean() * factor:.1f} |")


if __name__ == "__main__":
    main()
