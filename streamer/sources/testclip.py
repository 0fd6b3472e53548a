"""Encode a moving test pattern into a video file with PyAV.

For tests and the decode benchmark: clips are made on the spot (nothing binary
in the repo), with a known frame count, rate and keyframe interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Clip:
    path: Path
    width: int
    height: int
    fps: int
    frames: int
    gop: int  # frames per keyframe interval (fixed: no scene-cut keyframes)


def pattern(width: int, height: int, i: int) -> np.ndarray:
    """Frame i of a pattern that moves every frame (so that no frame is a cheap repeat)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.int32)
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx + 8 * i) % 256
    img[..., 1] = (yy + 4 * i) % 256
    img[..., 2] = ((xx // 40 + yy // 40 + i) % 2) * 200
    return img


def write_clip(
    path: str | Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seconds: float = 2.0,
    gop: int = 25,
    codec: str = "libx264",
    bframes: bool = False,
    container_options: dict[str, str] | None = None,
) -> Clip:
    """Write the clip; H.264 via libx264 (ultrafast), or any PyAV encoder such as mpeg4."""
    path = Path(path)
    frames = round(fps * seconds)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec in ("libx264", "h264"):
            stream.options = {
                "preset": "ultrafast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={2 if bframes else 0}",
            }
        elif not bframes:
            stream.codec_context.max_b_frames = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(width, height, i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Clip(path, width, height, fps, frames, gop)
