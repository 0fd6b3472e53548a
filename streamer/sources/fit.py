"""Fit a frame into the model's input box: scale with aspect kept, then pad to multiples of 32.

Padding (black, right and bottom) rather than cropping: no pixel of the scene is
lost, a padded band holds no people so it adds nothing to the count, and source
coordinates map by a plain scale, with no offset. The box is first rounded down
to multiples of 32, so the padded output never exceeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ALIGN = 32


def floor_to(n: int, k: int = ALIGN) -> int:
    return n // k * k


def ceil_to(n: int, k: int = ALIGN) -> int:
    return -(-n // k) * k


@dataclass(frozen=True)
class Fit:
    src_w: int
    src_h: int
    scale: float  # content = source * scale
    content_w: int
    content_h: int
    out_w: int  # multiples of 32, >= content
    out_h: int

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
