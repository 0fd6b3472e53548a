"""How tightly the labelled heads of a dataset sit, per scene kind, against a real labelled set.

    python -m research.label_density data/synth-range-dense ../shared/data/shanghaitech_a/train_data [--limit 300]

A density network reads appearance and answers with people per pixel. If renders put
twice as many labelled heads in a patch as real crowds that look the same, the network
learns to count real crowds twice. Per rendered scene kind, by apparent head width
(the renderer's exact ``head_sizes``): the people in the same 32-pixel cell (the median
over people) and the nearest labelled neighbour in head widths. Every set also gets
one row over all its heads; a real set has no head sizes, so that row is all it gets.
Real images are measured at the size ``crowdwatch eval`` feeds the network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from adapt.data.crowd_dataset import fit_max_side
from adapt.data.datasets import read_dataset
from adapt.data.images import load_image
from adapt.training.train import parse_dataset_spec

CELL = 32
EVAL_MAX_SIDE = 1024  # crowdwatch eval --max-side default
HEAD_BINS = ((2, 4), (4, 6), (6, 9), (9, 14), (14, 25), (25, 60))


def people_per_cell(points: np.ndarray, cell: int = CELL) -> np.ndarray:
    """For each point, how many points share its cell."""
    if len(points) == 0:
        return np.zeros(0, int)
    key = (points[:, 1] // cell).astype(np.int64) * 1_000_000 + (points[:, 0] // cell).astype(np.int64)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse]


def nearest_neighbour(points: np.ndarray) -> np.ndarray:
    if len(points) < 2:
        return np.full(len(points), np.nan)
    return cKDTree(points).query(points, k=2)[0][:, 1]


def kinds_of(root: Path) -> dict[str, str]:
    """Image name -> scene kind, "empty" for empty renders; {} for a set without a crowdwatch meta.json."""
    meta = root / "meta.json"
    if not meta.is_file():
        return {}
    return {m["image"]: "empty" if m.get("empty") else m["scene"] for m in json.loads(meta.read_text())["images"]}


def table(root: Path, fmt: str, limit: int) -> None:
    """Per scene kind: a row over all heads, then one per head-width bin where head sizes are known."""
    kinds = kinds_of(root)
    groups: dict[str, list] = {}
    for ann in read_dataset(root, fmt).items:
        kind = kinds.get(ann.image_path.name, "real")
        if kind == "empty" or len(groups.setdefault(kind, [])) >= limit:
            continue
        hw = load_image(ann.image_path).shape[:2]
        scale = fit_max_side(hw, EVAL_MAX_SIDE)[0] / hw[0]
        p = np.asarray(ann.points, float).reshape(-1, 2) * scale
        s = None if ann.head_sizes is None else np.asarray(ann.head_sizes, float) * scale
        groups[kind].append((people_per_cell(p), nearest_neighbour(p), s))
    for kind, rows in sorted(groups.items()):
        cells = np.concatenate([r[0] for r in rows])
        q = np.percentile(cells, [50, 90, 99])
        print(f"| {root} | {kind} | all | {len(cells)} | {q[0]:.0f} (90th {q[1]:.0f}, 99th {q[2]:.0f}) | - |")
        if any(r[2] is None for r in rows):
            continue
        nn, sizes = np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows])
        for lo, hi in HEAD_BINS:
            sel = (sizes >= lo) & (sizes < hi)
            if sel.any():
                print(f"| {root} | {kind} | {lo}-{hi} | {sel.sum()} | {np.median(cells[sel]):.0f} | {np.nanmedian(nn[sel] / sizes[sel]):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="DIR[:format] (crowdwatch synth folders, or a real labelled set)")
    p.add_argument("--limit", type=int, default=300, help="images per scene kind")
    args = p.parse_args()
    print(f"| set | kind | head width px | labels | people in the same {CELL}-px cell (median over people) | nearest label / head width (median) |")
    print("|---|---|---|---|---|---|")
    for spec in args.sets:
        root, fmt = parse_dataset_spec(spec)
        table(root, fmt, args.limit)


if __name__ == "__main__":
    main()
