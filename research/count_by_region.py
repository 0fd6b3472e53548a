"""Where does the count go wrong? Predicted against true count by region of the frame.

    python -m research.count_by_region --labels DIR [--format shanghaitech] [--model PATH] [--max-side PX] [--n 40] [--views DIR] [--json OUT]

A global over- or undercount can come from the crowd itself (heads counted
twice, dense crowds under-resolved) or from things that are not people
(foliage, signs, textures). This splits every cell of the density map by its
distance to the nearest labelled head:

- *background*: cells farther than ``--near`` pixels from any head, where
  the truth is almost zero (only the tails of the labels' kernels);
- crowd cells, grouped by the spacing of the nearest head to its own nearest
  neighbour (a proxy for head size in a crowd);

and by horizontal bands (top quarter = far away in most views). ``--views``
writes the frames with the most predicted background count, the background
prediction overlaid in colour and the labelled heads as green dots.

Labels are read for this measurement only; no model is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from adapt.data.images import load_image
from adapt.model.network import STRIDE
from adapt.selfsup.pseudo_label import PseudoLabelConfig
from research.pseudo_label_quality import add_frame_options, predict_labelled, scaled_points, true_density

SPACING_EDGES = (0, 8, 16, 32, 64, np.inf)


def cell_regions(points: np.ndarray, shape: tuple[int, int], near_px: float) -> np.ndarray:
    """Per cell: -1 for background, else the spacing bin of its nearest head."""
    hc, wc = shape
    yy, xx = np.mgrid[0:hc, 0:wc]
    centres = np.stack([(xx + 0.5) * STRIDE, (yy + 0.5) * STRIDE], -1).reshape(-1, 2)
    if len(points) == 0:
        return np.full(shape, -1)
    tree = cKDTree(points)
    spacing = tree.query(points, k=2)[0][:, 1] if len(points) > 1 else np.array([np.inf])
    dist, nearest = tree.query(centres)
    region = np.digitize(spacing[nearest], SPACING_EDGES) - 1
    return np.where(dist > near_px, -1, region).reshape(shape)


def region_name(k: int, near_px: float) -> str:
    if k < 0:
        return f"background (> {near_px:g} px from any head)"
    lo, hi = SPACING_EDGES[k], SPACING_EDGES[k + 1]
    return f"crowd, head spacing {lo:g}-{hi:g} px" if np.isfinite(hi) else f"crowd, head spacing > {lo:g} px"


def save_view(path: Path, image_path: Path, size: tuple[int, int], pred: np.ndarray, background: np.ndarray, points: np.ndarray) -> None:
    import cv2

    h, w = size
    img = cv2.resize(load_image(image_path), (w, h), interpolation=cv2.INTER_AREA)
    heat = np.where(background, pred, 0.0)
    heat = cv2.resize(heat, (pred.shape[1] * STRIDE, pred.shape[0] * STRIDE), interpolation=cv2.INTER_NEAREST)[:h, :w]
    heat = np.clip(heat / max(float(heat.max()), 1e-6) * 3 * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[..., ::-1]
    out = np.where(heat[..., None] > 20, (0.4 * img + 0.6 * colour).astype(np.uint8), img)
    for x, y in points:
        cv2.circle(out, (int(x), int(y)), 3, (0, 255, 0), -1)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_frame_options(p)
    p.add_argument("--near", type=float, default=32.0, help="pixels from the nearest head beyond which a cell is background")
    p.add_argument("--views", type=Path, default=None, help="write the 6 frames with the most background count here")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    labels, by_path = predict_labelled(args, PseudoLabelConfig(max_side=args.max_side))

    regions: dict[int, np.ndarray] = {}
    bands = np.zeros((4, 2))
    per_frame = []
    for path, mean, valid in zip(labels.paths, labels.mean, labels.valid):
        pred, valid = np.asarray(mean, np.float64), np.asarray(valid)
        points, size = scaled_points(by_path[path], args.max_side)
        true = true_density(points, pred.shape)
        region = cell_regions(points, pred.shape, args.near)
        for k in np.unique(region):
            cells = (region == k) & valid
            regions.setdefault(int(k), np.zeros(3))[:] += (pred[cells].sum(), true[cells].sum(), cells.sum())
        rows = int(np.flatnonzero(valid.any(1)).max()) + 1
        for b in range(4):
            band = slice(b * rows // 4, (b + 1) * rows // 4)
            bands[b] += (pred[band][valid[band]].sum(), true[band][valid[band]].sum())
        background = (region < 0) & valid
        per_frame.append((float(pred[background].sum()), path, pred, background, points, size))

    n = len(per_frame)
    out = {"frames": n, "model": str(args.model or "base"), "max_side": args.max_side, "near_px": args.near, "regions": [], "bands": []}
    print(f"# {args.labels}: {n} frames, model {args.model or 'base'}, max side {args.max_side}")
    print("| cells | cells per frame | predicted count per frame | true count per frame | predicted / true |")
    print("|---|---|---|---|---|")
    for k in sorted(regions):
        pm, tm, c = regions[k]
        name = region_name(k, args.near)
        out["regions"].append({"region": name, "cells": c / n, "pred": pm / n, "true": tm / n})
        print(f"| {name} | {c / n:.0f} | {pm / n:.1f} | {tm / n:.1f} | {pm / max(tm, 1e-9):.2f} |")
    for b in range(4):
        pm, tm = bands[b]
        name = f"band {b + 1} of 4 from the top"
        out["bands"].append({"band": name, "pred": pm / n, "true": tm / n})
        print(f"| {name} | - | {pm / n:.1f} | {tm / n:.1f} | {pm / max(tm, 1e-9):.2f} |")
    if args.views:
        args.views.mkdir(parents=True, exist_ok=True)
        for fp, path, pred, background, points, size in sorted(per_frame, key=lambda r: -r[0])[:6]:
            save_view(args.views / f"{Path(path).stem}.png", path, size, pred, background, points)
            print(f"{Path(path).name}: background count {fp:.1f} -> {args.views / (Path(path).stem + '.png')}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
