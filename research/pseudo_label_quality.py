"""Are the confident cells right? Pseudo labels against the truth, by uncertainty.

    python -m research.pseudo_label_quality --labels DIR [--format shanghaitech] [--model PATH] [--max-side PX] [--n 40] [--bins 5]

The pseudo-label stage trusts the cells whose ensemble spread is low. That
only helps if those cells are nearer the truth than the rest. This runs the
ensemble on N labelled frames, selects cells with the default rule
(adapt.selfsup.pseudo_label.select_confident) and compares the pseudo density with
the true density (head points, adapt.data.density) over groups of cells. Both maps
are blurred by ``--blur`` cells first, so that neither a head a cell away
from its mark nor a prediction sharper or flatter than the labels' kernels
reads as a count error; cells are grouped by their unblurred statistics:

- occupied cells (ensemble mean > 0) in bins of relative std (std / mean),
  each bin pooled over all frames: predicted over true count in those cells;
- the cells the rule keeps and drops, and the true count in the cells it
  keeps as empty (people the pseudo labels call "no one here").

The labels are read for this measurement only; no model is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from adapt.data.crowd_dataset import fit_max_side
from adapt.data.datasets import read_dataset
from adapt.data.density import density_map
from adapt.data.images import load_image
from adapt.model.checkpoint import load_checkpoint
from adapt.model.network import STRIDE
from adapt.selfsup.pseudo_label import PseudoLabelConfig, predict_frames
from adapt.store.registry import default_base_checkpoint


def scaled_points(item, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Head points in the frame as predict_frames resized it, and that size."""
    h0, w0 = load_image(item.image_path).shape[:2]
    h, w = fit_max_side((h0, w0), max_side)
    return item.points * np.array([w / w0, h / h0], dtype=np.float32), (h, w)


def true_density(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """True density of (resized) head points on the network's cell grid of ``shape``."""
    hc, wc = shape
    return density_map(points, (hc * STRIDE, wc * STRIDE)).density


def add_frame_options(p: argparse.ArgumentParser) -> None:
    """The labelled frames and the model the region benchmarks run on."""
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--format", default="shanghaitech")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=40, help="frames, spread evenly over the dataset")


def predict_labelled(args: argparse.Namespace, cfg: PseudoLabelConfig):
    """(pseudo labels of N evenly spread labelled frames, their items by image path)."""
    items = read_dataset(args.labels, args.format).items
    items = items[:: max(1, len(items) // args.n)][: args.n]
    model = load_checkpoint(args.model or default_base_checkpoint()).build()
    labels = predict_frames(model, [it.image_path for it in items], torch.device("cpu"), cfg)
    return labels, {it.image_path: it for it in items}


def ratio(pred: float, true: float) -> float:
    return pred / true if true > 0 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_frame_options(p)
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--blur", type=float, default=2.0, help="Gaussian sigma in cells applied to both maps before comparing")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    cfg = PseudoLabelConfig(max_side=args.max_side)
    labels, by_path = predict_labelled(args, cfg)
    truth = [true_density(scaled_points(by_path[path], args.max_side)[0], m.shape) for path, m in zip(labels.paths, labels.mean)]

    def flat(maps) -> np.ndarray:
        return np.concatenate([np.asarray(m)[v] for m, v in zip(maps, labels.valid)])

    def blur(maps) -> list[np.ndarray]:
        return [gaussian_filter(np.asarray(m, dtype=np.float64), args.blur) for m in maps]

    mean, std, keep = flat(labels.mean), flat(labels.std), flat(labels.keep)
    pred, true = flat(blur(labels.mean)), flat(blur(truth))
    occupied = mean > 0
    rel = std[occupied] / mean[occupied]
    edges = np.quantile(rel, np.linspace(0, 1, args.bins + 1))
    rows = []
    for b in range(args.bins):
        inside = (rel >= edges[b]) & (rel <= edges[b + 1]) if b == args.bins - 1 else (rel >= edges[b]) & (rel < edges[b + 1])
        pm, tm = pred[occupied][inside].sum(), true[occupied][inside].sum()
        rows.append({"group": f"occupied, std/mean bin {b + 1} of {args.bins} ({edges[b]:.2f}-{edges[b + 1]:.2f})",
                     "cells": int(inside.sum()), "pred": float(pm), "true": float(tm), "ratio": ratio(pm, tm)})
    for name, where in (("kept, occupied", keep & occupied), ("dropped, occupied", ~keep & occupied),
                        ("kept, empty (pseudo label 0)", keep & ~occupied), ("dropped, empty", ~keep & ~occupied), ("all", np.ones_like(keep))):
        pm, tm = pred[where].sum(), true[where].sum()
        rows.append({"group": name, "cells": int(where.sum()), "pred": float(pm), "true": float(tm), "ratio": ratio(pm, tm)})

    n = len(labels.paths)
    print(f"# {args.labels}: {n} frames, model {args.model or 'base'}, rule {cfg.rule}, keep_fraction {cfg.keep_fraction}, blur {args.blur} cells")
    print("| cells | how many | predicted count per frame | true count per frame | predicted / true |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {r['cells']} | {r['pred'] / n:.1f} | {r['true'] / n:.1f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"frames": n, "model": str(args.model or "base"), "blur": args.blur, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
