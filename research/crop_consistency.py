"""Does the density net count the same pixels the same way in a crop and in the full frame?

    python -m research.crop_consistency --frames DIR [--model PATH] [--max-side PX] [--n 16]

For N frames spread over the folder, predicts the full frame and centred
square crops of several sizes, and compares, for each crop, the ensemble-mean
count of all its cells predicted from the crop with the same cells cut out of
the full-frame prediction. A context-free net gives a ratio of 1. Pseudo
labels are cut out of full-frame predictions, so a ratio above 1 is what a
crop of that size would teach the network to unlearn.

(The first version compared only the central 128x128 pixels. On ShanghaiTech B
those hold ~0.1 people, so it read 1.0 and hid a 1.5x gap.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adapt.data.datasets import list_images
from adapt.model.checkpoint import load_checkpoint
from adapt.model.network import STRIDE
from adapt.selfsup.pseudo_label import load_padded
from adapt.store.registry import default_base_checkpoint


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
    in_crop: dict[int, list[float]] = {s: [] for s in sizes}
    in_frame: dict[int, list[float]] = {s: [] for s in sizes}
    for path in paths:
        image = torch.from_numpy(load_padded(path, args.max_side)[0])[None]
        full = model(image)[0][0, 0]
        h, w = image.shape[1:3]
        # centre on the 32-px grid so the crop's cells are the frame's cells
        cy, cx = h // 2 // 32 * 32, w // 2 // 32 * 32
        for s in sizes:
            y0, x0 = cy - s // 2, cx - s // 2
            if y0 < 0 or x0 < 0 or y0 + s > h or x0 + s > w:
                continue
            in_crop[s].append(float(model(image[:, y0 : y0 + s, x0 : x0 + s])[0].sum()))
            in_frame[s].append(float(full[y0 // STRIDE : (y0 + s) // STRIDE, x0 // STRIDE : (x0 + s) // STRIDE].sum()))
    print(f"# {args.frames}: {len(paths)} frames, model {args.model or 'base'}, max side {args.max_side}")
    print("| crop | frames | count in the crop, predicted on the crop | same cells, from the full frame | ratio |")
    print("|---|---|---|---|---|")
    for s in sizes:
        if in_crop[s]:
            a, b = np.mean(in_crop[s]), np.mean(in_frame[s])
            print(f"| {s} px | {len(in_crop[s])} | {a:.2f} | {b:.2f} | {a / max(b, 1e-9):.2f} |")


if __name__ == "__main__":
    main()
