"""Which cells does the pseudo-label rule keep, and how much of the count do they hold?

    python bench/pseudo_label_cells.py --frames DIR [--model PATH] [--max-side PX] [--n 40]

Runs the ensemble on N frames spread over the folder, applies the pseudo-label
rule (adapt.pseudo_label.select_confident with its defaults) and prints the
share of cells kept, of cells with zero std across the masks, and of the
predicted count that lies in kept cells. No labels are read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adapt.checkpoint import load_checkpoint
from adapt.datasets import list_images
from adapt.pseudo_label import PseudoLabelConfig, predict_frames
from adapt.registry import default_base_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=40)
    args = p.parse_args()
    paths = list_images(args.frames)
    paths = paths[:: max(1, len(paths) // args.n)][: args.n]
    model = load_checkpoint(args.model or default_base_checkpoint()).build()
    labels = predict_frames(model, paths, torch.device("cpu"), PseudoLabelConfig(max_side=args.max_side))
    mean = np.concatenate([m.ravel() for m in labels.mean])
    std = np.concatenate([s.ravel() for s in labels.std])
    keep = np.concatenate([k.ravel() for k in labels.keep])
    print(f"# {args.frames}: {len(labels.paths)} frames, model {args.model or 'base'}, mean predicted count {mean.sum() / len(labels.paths):.1f}")
    print("| cells | kept | zero std across masks | predicted count in kept cells |")
    print("|---|---|---|---|")
    print(f"| {mean.size} | {keep.mean():.1%} | {(std == 0).mean():.1%} | {mean[keep].sum() / max(mean.sum(), 1e-12):.1%} |")


if __name__ == "__main__":
    main()
