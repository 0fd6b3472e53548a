"""Does the flip head read the crowd, or something else in the scene?

    python bench/flip_shortcut.py --model PATH [--max-side PX] NAME=DIR [NAME=DIR ...]

Prints the flip head's held-out accuracy (upright against upside-down) on
each folder of frames. Run it on scenes with people and on the same style
of scene with nobody in it (``crowdwatch synth --count 0:0``): a head that
tells them apart as well without people has learned the scene's own
up-down cue (a sky, a haze gradient), and the flip stage then teaches the
encoder nothing about how crowds look at this camera.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapt.checkpoint import load_checkpoint
from adapt.crowd_dataset import FrameFolder, collate
from adapt.datasets import list_images
from adapt.flip_stage import flip_accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a checkpoint whose flip head was trained")
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("folders", nargs="+", metavar="NAME=DIR")
    args = p.parse_args()
    model = load_checkpoint(args.model).build().eval()
    print(f"# flip head of {args.model}")
    print("| frames | n | flip accuracy |")
    print("|---|---|---|")
    for item in args.folders:
        name, _, folder = item.partition("=")
        paths = list_images(Path(folder))
        if not paths:
            raise SystemExit(f"{folder}: no images")
        loader = DataLoader(FrameFolder(paths, None, max_side=args.max_side), batch_size=1, collate_fn=collate)
        with torch.inference_mode():
            print(f"| {name} | {len(paths)} | {flip_accuracy(model, loader, torch.device('cpu')):.2f} |")


if __name__ == "__main__":
    main()
