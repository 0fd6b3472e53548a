"""Which label-free statistic tells a better adapted model from a worse one?

    python -m research.gate_signals --frames DIR [--max-side PX] [--n 24]
        [--base PATH] --noadapt-mae MAE [--synthetic DIR] [--synthetic-n 40] RUN_DIR [RUN_DIR ...]

For the base model and every candidate checkpoint stored in the RUN_DIRs
(``research/adaptation.py --out`` folders: ``<row>.pt`` next to ``rows.json``),
measures on N of the held-out frames (the same every-5th split the gate uses):

- count, count std across masks, std per counted person (today's gate);
- tiles: the summed counts of the frame's four quadrants, each predicted on
  its own, over the whole-frame count (1 for a network whose count does not
  depend on how much of the scene it sees);
- half: the count of the frame at half resolution over the full-resolution
  count (1 for a network whose count does not depend on the scale);
- synthetic MAE: count MAE on labelled synthetic renders, which are free.

Each row is printed next to the MAE that the labels gave the model afterwards
(``rows.json``), so one can see which statistic moves with it. Nothing here
is used by the gate; this is the experiment that chooses what the gate uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from adapt.data.crowd_dataset import CrowdDataset
from adapt.data.datasets import list_images, read_dataset
from adapt.data.images import load_image
from adapt.model.checkpoint import load_checkpoint
from adapt.selfsup.adaptation import split_holdout
from adapt.selfsup.pseudo_label import fit_and_pad
from adapt.store.registry import default_base_checkpoint
from adapt.training.engine import predict_counts
from adapt.training.evaluate import count_errors, run_eval
from research.adaptation import ADAPTED


def padded(image: np.ndarray, max_side: int | None) -> torch.Tensor:
    return torch.from_numpy(fit_and_pad(image, max_side)[0])[None]


def quadrants(image: torch.Tensor) -> list[torch.Tensor]:
    """The four quadrants, cut on the 32-px grid so no cell is shared."""
    h, w = image.shape[1:3]
    cy, cx = h // 2 // 32 * 32, w // 2 // 32 * 32
    return [image[:, :cy, :cx], image[:, :cy, cx:], image[:, cy:, :cx], image[:, cy:, cx:]]


@torch.inference_mode()
def signals(model, frames: list[np.ndarray], max_side: int | None) -> dict:
    counts, stds, tiles, halves = [], [], [], []
    for frame in frames:
        image = padded(frame, max_side)
        count, std, _ = predict_counts(model, image)
        c = float(count[0])
        counts.append(c)
        stds.append(float(std[0]))
        tiles.append(sum(float(predict_counts(model, q)[0][0]) for q in quadrants(image)))
        half_side = max(image.shape[1:3]) // 2
        halves.append(float(predict_counts(model, padded(frame, half_side))[0][0]))
    c, s = float(np.mean(counts)), float(np.mean(stds))
    return {
        "count": c, "std": s, "std_per_person": s / (c + 1.0),
        # ratios of means: frames with a handful of people would dominate a mean of ratios
        "tiles": float(np.sum(tiles) / max(np.sum(counts), 1e-9)),
        "half": float(np.sum(halves) / max(np.sum(counts), 1e-9)),
    }


@torch.inference_mode()
def synthetic_mae(model, dataset) -> float:
    results, _ = run_eval(model, dataset, torch.device("cpu"), None)
    return count_errors(np.array([r.true_count for r in results]), np.array([r.pred_count for r in results]))[0]


def candidates(runs: list[Path]):
    for run in runs:
        rows = {r["row"]: r["mae"] for r in json.loads((run / "rows.json").read_text())}
        for key, name in ADAPTED.items():
            if (run / f"{key}.pt").is_file() and name in rows:
                yield f"{run.name}/{key}", run / f"{key}.pt", rows[name]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=24, help="held-out frames to measure on")
    p.add_argument("--synthetic", type=Path, default=None, help="labelled synthetic renders (shanghaitech layout, as `crowdwatch synth` writes them)")
    p.add_argument("--synthetic-n", type=int, default=40)
    p.add_argument("--base", type=Path, default=None, help="the parent of every run (default: the shipped base model)")
    p.add_argument("--noadapt-mae", type=float, required=True, help="the base model's MAE on the target")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(2)

    _, held = split_holdout(list_images(args.frames), 5)
    held = held[:: max(1, len(held) // args.n)][: args.n]
    frames = [load_image(path) for path in held]
    synth = None
    if args.synthetic:
        index = read_dataset(args.synthetic, "shanghaitech", limit=args.synthetic_n)
        synth = CrowdDataset(index.items, None, max_side=args.max_side)

    models = [("base", args.base or default_base_checkpoint(), args.noadapt_mae), *candidates(args.runs)]
    table = []
    for name, path, mae in models:
        model = load_checkpoint(path).build().eval()
        row = {"model": name, "mae": mae, **signals(model, frames, args.max_side)}
        if synth is not None:
            row["synthetic_mae"] = synthetic_mae(model, synth)
        table.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    keys = [k for k in table[0] if k not in ("model", "mae")]
    print(f"\n# {args.frames}: {len(frames)} held-out frames, max side {args.max_side}")
    print("| model | MAE | better than base? | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for row in table:
        better = "-" if row["model"] == "base" else ("yes" if row["mae"] < args.noadapt_mae else "no")
        print(f"| {row['model']} | {row['mae']:.2f} | {better} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
