"""A model's count on chosen frames of an unlabelled video, for checking against a person's count.

    python -m research.frame_counts VIDEO --model models/pets/VERSION/model.pt --frames 50,150,250 [--size 480x384] [--sheet runs/frames.png]

Prints frame number, count and the std across masks. ``--sheet`` writes the frames
with their density blended in (blend_heatmap, as the live overlay draws it), so a
person can count each frame and see where the model put its people. The sheet
shows people: keep it under runs/, out of the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from adapt.model.checkpoint import load_model
from adapt.training.engine import predict_counts
from crowdwatch.video import VideoReader
from streamer.overlay import blend_heatmap


def read_frames(video: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB frames by their index in decoding order."""
    out: dict[int, np.ndarray] = {}
    with VideoReader(video) as reader:
        for i, (frame, _) in enumerate(reader.frames()):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if len(out) == len(wanted):
                break
    missing = wanted - set(out)
    if missing:
        raise SystemExit(f"{video}: no frames {sorted(missing)} (the clip is shorter)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video", type=Path)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--frames", required=True, help="comma list of frame numbers (0-based, decoding order)")
    p.add_argument("--size", default="480x384", help="WxH fed to the model, multiples of 32 (the camera's input box)")
    p.add_argument("--sheet", type=Path, help="write the frames with their density views here (PNG)")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if w % 32 or h % 32:
        raise SystemExit(f"--size must be multiples of 32, found {args.size}")
    wanted = sorted({int(v) for v in args.frames.split(",")})
    model, _ = load_model(args.model)
    model.eval()
    tiles = []
    for i, rgb in sorted(read_frames(args.video, set(wanted)).items()):
        x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            count, std, per_mask = predict_counts(model, torch.from_numpy(x)[None])
        print(f"frame {i}: {float(count[0]):.1f} people (std across masks {float(std[0]):.2f})")
        if args.sheet:
            tile = blend_heatmap(cv2.cvtColor(x, cv2.COLOR_RGB2BGR), per_mask.mean(0)[0, 0].numpy())
            cv2.putText(tile, f"frame {i}: {float(count[0]):.1f}", (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
            tiles.append(tile)
    if args.sheet:
        tiles += [np.zeros_like(tiles[0])] * (len(tiles) % 2)
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.sheet), np.vstack([np.hstack(tiles[k:k + 2]) for k in range(0, len(tiles), 2)]))
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
