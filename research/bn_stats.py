"""How much do BatchNorm statistics alone move the count on a target domain?

    python -m research.bn_stats --model PATH --dataset DIR [--format shanghaitech] [--max-side PX] [--every N]

Counts every N-th labelled image twice: with the model's own (source) BatchNorm
statistics, and after re-estimating them on those target images (AdaBN: a
forward pass in train mode, cumulative average, no gradient). Labels are used
only to report MAE. Adaptation trains in train() mode, so its target batches
pull the statistics this way (research/NOTEBOOK.md, synthetic domain shift).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapt.data.datasets import read_dataset
from adapt.model.checkpoint import load_checkpoint
from adapt.selfsup.pseudo_label import load_padded
from adapt.store.registry import default_base_checkpoint
from adapt.training.engine import predict_counts


def frames(items, max_side: int):
    for item in items:
        image, _ = load_padded(item.image_path, max_side)
        yield torch.from_numpy(image)[None]


@torch.inference_mode()
def counts(model, items, max_side: int) -> np.ndarray:
    model.eval()
    return np.array([predict_counts(model, x)[0].item() for x in frames(items, max_side)])


@torch.no_grad()
def reestimate_batchnorm(model, items, max_side: int) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all target frames
    model.train()
    for x in frames(items, max_side):
        model.trunk(x)
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--format", default="shanghaitech")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--every", type=int, default=5)
    args = p.parse_args()
    items = read_dataset(args.dataset, args.format).items[:: args.every]
    truth = np.array([it.count for it in items], dtype=float)
    model = load_checkpoint(args.model or default_base_checkpoint()).build()
    source = counts(model, items, args.max_side)
    reestimate_batchnorm(model, items, args.max_side)
    target = counts(model, items, args.max_side)
    print(f"# {args.dataset}: {len(items)} images, mean true count {truth.mean():.1f}, model {args.model or 'base'}")
    print("| BatchNorm statistics | mean predicted count | MAE |")
    print("|---|---|---|")
    for name, c in (("source (training renders)", source), ("re-estimated on the target images", target)):
        print(f"| {name} | {c.mean():.1f} | {np.abs(c - truth).mean():.2f} |")


if __name__ == "__main__":
    main()
