"""Does the flip head read the crowd, or something else in the scene?

    python -m research.flip_shortcut --model PATH [--max-side PX] [--paint-out] NAME=DIR [NAME=DIR ...]

Prints the flip head's held-out accuracy (upright against upside-down) on
each folder of frames. Run it on scenes with people and on the same style
of scene with nobody in it (``crowdwatch synth --count 0:0``): a head that
tells them apart as well without people has learned the scene's own
up-down cue (a sky, a haze gradient), and the flip stage then teaches the
encoder nothing about how crowds look at this camera.

A real camera has no empty renders; ``--paint-out`` also measures the head
on the same frames with their people painted out (``cv2.inpaint`` over the
cells where the model itself predicts people, dilated by one cell).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from adapt.data.crowd_dataset import FrameFolder, collate
from adapt.data.datasets import list_images
from adapt.model.checkpoint import load_checkpoint
from adapt.model.network import STRIDE
from adapt.selfsup.flip_stage import flip_accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a checkpoint whose flip head was trained")
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--paint-out", action="store_true", help="also measure with the people painted out")
    p.add_argument("--threshold", type=float, default=0.02, help="--paint-out: people per cell above which a cell is painted")
    p.add_argument("folders", nargs="+", metavar="NAME=DIR")
    args = p.parse_args()
    model = load_checkpoint(args.model).build().eval()
    print(f"# flip head of {args.model}")
    print("| frames | n | flip accuracy |" + (" people painted out | share of the frame painted |" if args.paint_out else ""))
    print("|---|---|---|" + ("---|---|" if args.paint_out else ""))
    for item in args.folders:
        name, _, folder = item.partition("=")
        paths = list_images(Path(folder))
        if not paths:
            raise SystemExit(f"{folder}: no images")
        loader = DataLoader(FrameFolder(paths, None, max_side=args.max_side), batch_size=1, collate_fn=collate)
        with torch.inference_mode():
            row = f"| {name} | {len(paths)} | {flip_accuracy(model, loader, torch.device('cpu')):.2f} |"
            if args.paint_out:
                painted, share = paint_out_people(model, loader, args.threshold)
                row += f" {flip_accuracy(model, painted, torch.device('cpu')):.2f} | {share:.2f} |"
        print(row, flush=True)


def paint_out_people(model, loader, threshold: float) -> tuple[list[dict], float]:
    """Batches like the loader's, with every cell the model puts people in inpainted."""
    out, shares = [], []
    for batch in loader:
        h, w = (int(v) for v in batch["valid_hw"][0])
        image = batch["image"][:, :h, :w]
        density = model.ensemble(image).mean(0)[0, 0].numpy()
        cells = (density > threshold).astype(np.uint8)
        cells = cv2.dilate(cells, np.ones((3, 3), np.uint8))
        mask = cv2.resize(cells, (density.shape[1] * STRIDE, density.shape[0] * STRIDE), interpolation=cv2.INTER_NEAREST)[:h, :w]
        rgb = image[0].numpy()
        filled = cv2.inpaint(np.ascontiguousarray(rgb), mask, 5, cv2.INPAINT_TELEA)
        shares.append(float(mask.mean()))
        out.append({"image": torch.from_numpy(filled)[None], "valid_hw": torch.tensor([[h, w]])})
    return out, float(np.mean(shares))


if __name__ == "__main__":
    main()
