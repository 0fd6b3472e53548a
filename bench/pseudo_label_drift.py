"""Where does one pseudo-label round move the count? Each loss term on its own.

    python bench/pseudo_label_drift.py --labels DIR --synthetic DIR [--model PATH]
        [--max-side PX] [--n 40] [--steps 150] [--variants both,pseudo,synth]

Takes N labelled frames spread over a ShanghaiTech-format folder, pseudo-labels
them with the ensemble (adapt.pseudo_label.predict_frames), then from the same
starting weights runs one fine-tuning round per variant:

- ``both``: synthetic L_s plus the masked pseudo-label loss (what a round does);
- ``pseudo``: the pseudo-label loss alone;
- ``synth``: L_s alone (no target pixels at all);
- ``both-half-lr``: as ``both`` at half the learning rate.

and prints the mean predicted count and MAE on the N frames before and after.
The labels are read only to measure. A self-consistent round should leave the
count where it was; a drift that ``pseudo`` shows and ``synth`` does not comes
from the pseudo labels themselves.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from adapt.adapt import synthetic_batches
from adapt.checkpoint import load_checkpoint
from adapt.datasets import read_dataset
from adapt.flip_stage import loop_forever
from adapt.pseudo_label import PseudoLabelConfig, PseudoLabelled, finetune_round, predict_frames
from adapt.registry import default_base_checkpoint
from adapt.train import seed_everything

VARIANTS = {
    "both": {},
    "both-frame-labels": {"labels_from": "frame"},
    "pseudo-frame-labels": {"synth_weight": 0.0, "labels_from": "frame"},
    "pseudo": {"synth_weight": 0.0},
    "synth": {"real_weight": 0.0},
    "both-half-lr": {"lr_mult": 0.5},
}


def counts(model, paths, cfg) -> np.ndarray:
    return np.array([m.sum() for m in predict_frames(model, paths, torch.device("cpu"), cfg).mean])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, required=True, help="ShanghaiTech-format folder (images + ground truth)")
    p.add_argument("--synthetic", type=Path, required=True, help="labelled synthetic set for L_s")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--variants", default="both,pseudo,synth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=256, help="real training crop (pixels)")
    args = p.parse_args()
    items = read_dataset(args.labels, "shanghaitech").items
    items = items[:: max(1, len(items) // args.n)][: args.n]
    paths = [a.image_path for a in items]
    truth = np.array([a.count for a in items], dtype=float)
    base = load_checkpoint(args.model or default_base_checkpoint()).build()
    cfg = PseudoLabelConfig(max_side=args.max_side, steps_per_round=args.steps, crop=args.crop)
    labels = predict_frames(base, paths, torch.device("cpu"), cfg)
    before = np.array([m.sum() for m in labels.mean])
    print(f"# {args.labels}: {len(paths)} frames, true mean {truth.mean():.1f}, model {args.model or 'base'}, {args.steps} steps")
    print(f"# kept cells {labels.kept_fraction():.1%}, predicted count in kept cells {labels.kept_count_fraction():.1%}")
    print("| variant | mean count before | after | change | MAE before | MAE after | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        v = VARIANTS[name]
        seed_everything(args.seed)
        model = copy.deepcopy(base)
        run_cfg = dataclasses.replace(cfg, lr=cfg.lr * v.get("lr_mult", 1.0), real_weight=v.get("real_weight", cfg.real_weight), synth_weight=v.get("synth_weight", 1.0), labels_from=v.get("labels_from", cfg.labels_from))
        loader = DataLoader(PseudoLabelled(labels, cfg.crop, cfg.max_side, seed=args.seed), batch_size=cfg.real_batch, shuffle=True, drop_last=True)
        synth = synthetic_batches(args.synthetic, cfg.synth_batch, 256, args.seed)
        t0 = time.time()
        finetune_round(model, synth, loop_forever(loader), run_cfg, torch.device("cpu"), labels.cut)
        after = counts(model, paths, cfg)
        print(
            f"| {name} | {before.mean():.1f} | {after.mean():.1f} | {after.mean() / before.mean() - 1:+.1%} "
            f"| {np.abs(before - truth).mean():.2f} | {np.abs(after - truth).mean():.2f} | {time.time() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
