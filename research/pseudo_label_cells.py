"""Which cells does the pseudo-label rule keep, and how much of the count do they hold?

    python -m research.pseudo_label_cells --frames DIR [--model PATH] [--max-side PX] [--n 40] [--rules balanced,fraction]

Runs the ensemble on N frames spread over the folder, applies each
pseudo-label rule (adapt.selfsup.pseudo_label.select_confident, keep_fraction 0.5)
and prints the share of cells kept, of cells with zero std across the masks,
of occupied cells kept, and of the predicted count that lies in kept cells.
No labels are read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adapt.data.datasets import list_images
from adapt.model.checkpoint import load_checkpoint
from adapt.selfsup.pseudo_label import PseudoLabelConfig, predict_frames, select_confident
from adapt.store.registry import default_base_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--rules", default="balanced,fraction")
    args = p.parse_args()
    paths = list_images(args.frames)
    paths = paths[:: max(1, len(paths) // args.n)][: args.n]
    model = load_checkpoint(args.model or default_base_checkpoint()).build()
    labels = predict_frames(model, paths, torch.device("cpu"), PseudoLabelConfig(max_side=args.max_side))

    def flat(maps: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([m[v] for m, v in zip(maps, labels.valid)])

    mean, std = flat(labels.mean), flat(labels.std)
    occupied = mean > 0
    print(f"# {args.frames}: {len(labels.paths)} frames, model {args.model or 'base'}, mean predicted count {mean.sum() / len(labels.paths):.1f}")
    print("| rule | cells | kept | zero std across masks | occupied cells kept | predicted count in kept cells |")
    print("|---|---|---|---|---|---|")
    for rule in args.rules.split(","):
        cfg = PseudoLabelConfig(rule=rule, max_side=args.max_side)
        keep = flat(select_confident(labels.mean, labels.std, labels.margin, labels.valid, cfg))
        print(f"| {rule} | {mean.size} | {keep.mean():.1%} | {(std == 0).mean():.1%} | {keep[occupied].mean():.1%} | {mean[keep].sum() / max(mean.sum(), 1e-12):.1%} |")


if __name__ == "__main__":
    main()
