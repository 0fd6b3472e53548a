"""The Fit: how a camera frame becomes the model input, and how its pixels map onto it.

Scale with the aspect kept, then pad (black, right and bottom) to multiples of
32. Padding rather than cropping: no pixel of the scene is lost, a padded band
holds no people so it adds nothing to the count, and source coordinates map by
a plain scale, with no offset. The box is first rounded down to multiples of
32, so the padded output never exceeds it.

The source plans it (``streamer.sources``) and it travels with the frame and its
result on the wire (``crowdwatch.wire``): the infer stage maps zones and the
calibration with it, the overlay maps zones onto the picture with it; nobody
rebuilds it from sizes.
"""

from __future__ import annotations

from typing import Annotated

import cv2
import msgspec
import numpy as np

ALIGN = 32
MAX_SIDE = 65535

Side = Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]


def floor_to(n: int, k: int = ALIGN) -> int:
    return n // k * k


def ceil_to(n: int, k: int = ALIGN) -> int:
    return -(-n // k) * k


class Fit(msgspec.Struct, frozen=True):
    src_w: Side
    src_h: Side
    scale: Annotated[float, msgspec.Meta(gt=0)]  # content = source * scale
    content_w: Side
    content_h: Side
    out_w: Side  # the model input: >= content (multiples of 32 when planned)
    out_h: Side

    def __post_init__(self) -> None:
        # Also runs on decoding: a Fit from the wire that does not map pixels consistently is refused.
        for what, src, content, out in (("width", self.src_w, self.content_w, self.out_w), ("height", self.src_h, self.content_h, self.out_h)):
            if content > out or abs(content - src * self.scale) > 1:
                raise ValueError(f"inconsistent fit {what}: source {src} x {self.scale} is not content {content} within output {out}")

    @classmethod
    def plan(cls, src_w: int, src_h: int, box_w: int | None, box_h: int | None) -> Fit:
        if src_w <= 0 or src_h <= 0:
            raise ValueError(f"frame size must be positive; found {src_w}x{src_h}")
        if box_w is None and box_h is None:
            scale = 1.0
            content_w, content_h = src_w, src_h
        else:
            limit_w = floor_to(box_w) if box_w is not None else None
            limit_h = floor_to(box_h) if box_h is not None else None
            if (limit_w is not None and limit_w < ALIGN) or (limit_h is not None and limit_h < ALIGN):
                raise ValueError(f"box must be at least {ALIGN}x{ALIGN}; found {box_w}x{box_h}")
            scale = min(s for s in (
                limit_w / src_w if limit_w is not None else None,
                limit_h / src_h if limit_h is not None else None,
            ) if s is not None)
            # round() can overshoot the limit by one pixel; the limit always wins.
            content_w = max(1, round(src_w * scale))
            content_h = max(1, round(src_h * scale))
            if limit_w is not None:
                content_w = min(content_w, limit_w)
            if limit_h is not None:
                content_h = min(content_h, limit_h)
        return cls(src_w, src_h, scale, content_w, content_h, ceil_to(content_w), ceil_to(content_h))

    @classmethod
    def identity(cls, w: int, h: int) -> Fit:
        """A frame that already is the model input (no Fit known): source pixels are input pixels."""
        return cls(w, h, 1.0, w, h, w, h)

    @property
    def out_size(self) -> tuple[int, int]:
        return self.out_w, self.out_h

    @property
    def content_size(self) -> tuple[int, int]:
        return self.content_w, self.content_h

    def to_input(self, points: object) -> np.ndarray:
        """Source pixels (N, 2) -> model input pixels."""
        return np.asarray(points, dtype=np.float64) * self.scale

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(src_h, src_w, 3) uint8 -> (out_h, out_w, 3) uint8, C-contiguous."""
        if rgb.shape[:2] != (self.src_h, self.src_w):
            raise ValueError(f"expected a {self.src_w}x{self.src_h} image; found shape {rgb.shape}")
        if (self.content_w, self.content_h) != (self.src_w, self.src_h):
            # INTER_AREA averages the source pixels under each output pixel: no aliasing when
            # shrinking. It is slow and blurry when enlarging, where INTER_LINEAR is the norm.
            interpolation = cv2.INTER_AREA if self.scale < 1.0 else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (self.content_w, self.content_h), interpolation=interpolation)
        if (self.out_w, self.out_h) == (self.content_w, self.content_h):
            return np.ascontiguousarray(rgb)
        out = np.zeros((self.out_h, self.out_w, 3), dtype=np.uint8)
        out[: self.content_h, : self.content_w] = rgb
        return out
