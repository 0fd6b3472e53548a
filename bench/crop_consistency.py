"""Does the density net count the same pixels the same way in a crop and in the full frame?

    python bench/crop_consistency.py --frames DIR [--model PATH] [--max-side PX] [--n 16]

For N frames spread over the folder, predicts the full frame and centred
square crops of several sizes, and compares the ensemble-mean count of the
same central 128x128 pixels in each. A context-free net gives one number per
row. Training crops are 256 pixels, so a gap between "full" and 256 is what a
pseudo label cut out of a full-frame prediction would teach the crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adapt.checkpoint import load_checkpoint
from adapt.datasets import list_images
from adapt.network import STRIDE
from adapt.pseudo_label import load_padded
from adapt.registry import default_base_checkpoint

CENTRE = 128  # pixels, the region compared


def region_count(model, image: torch.Tensor, cy: int, cx: int) -> float:
    """Ensemble-mean count of the CENTRE x CENTRE pixels centred on (cy, cx) of a (1, H, W, 3) image."""
    density = model(image)[0][0, 0]
    k = CENTRE // STRIDE // 2
    return float(density[cy // STRIDE - k : cy // STRIDE + k, cx // STRIDE - k : cx // STRIDE + k].sum())


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped base model)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--sizes", default="512,384,256,128")
    args = p.parse_args()
    model = load_checkpoint(args.model or default_base_checkpoint()).build().eval()
    paths = list_images(args.frames)
    paths = paths[:: max(1, len(paths) // args.n)][: args.n]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, list[float]] = {"full frame": []}
    for path in paths:
        image = torch.from_numpy(load_padded(path, args.max_side)[0])[None]
        h, w = image.shape[1:3]
        # centre on the cell grid so every view shares the same cells
        cy, cx = h // 2 // 32 * 32, w // 2 // 32 * 32
        rows["full frame"].append(region_count(model, image, cy, cx))
        for s in sizes:
            y0, x0 = cy - s // 2, cx - s // 2
            if y0 >= 0 and x0 >= 0 and y0 + s <= h and x0 + s <= w:
                rows.setdefault(f"{s}-pixel crop", []).append(region_count(model, image[:, y0 : y0 + s, x0 : x0 + s], s // 2, s // 2))
    print(f"# {args.frames}: {len(paths)} frames, model {args.model or 'base'}, max side {args.max_side}")
    print("| context | frames | mean count of the central 128x128 pixels |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {len(values)} | {np.mean(values):.2f} |")


if __name__ == "__main__":
    main()
