"""Where things move: per-cell foreground statistics over a fixed camera's frames.

Cells are the density map's cells (stride 8), so the statistics line up with
the model's output. A cell that never holds a foreground object over the whole
buffer is static background: no person stood there in any frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STRIDE = 8
CELL_FOREGROUND = 0.15  # share of a cell's pixels that must differ for the cell to count as occupied


def cell_occupancy(fg: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """(T, H, W) bool foreground -> (T, H/stride, W/stride) float share of foreground pixels per cell."""
    T, H, W = fg.shape
    h, w = H // stride, W // stride
    return fg[:, : h * stride, : w * stride].reshape(T, h, stride, w, stride).mean((2, 4))


@dataclass(frozen=True, eq=False)
class MotionStats:
    frequency: np.ndarray  # (h, w) share of frames in which the cell held a foreground object
    frame_share: np.ndarray  # (T,) share of the image that was foreground, per frame
    stride: int = STRIDE

    @property
    def static(self) -> np.ndarray:
        """(h, w) bool: cells no object ever occupied."""
        return self.frequency == 0.0

    @property
    def moving_share(self) -> float:
        """Share of cells that held a foreground object at least once."""
        return float((self.frequency > 0).mean())


def motion_stats(fg: np.ndarray, unseen: np.ndarray, stride: int = STRIDE) -> MotionStats:
    """Statistics of (T, H, W) foreground masks; pixels never seen empty count as occupied."""
    occ = cell_occupancy(fg, stride) > CELL_FOREGROUND
    never = cell_occupancy(unseen[None], stride)[0] > CELL_FOREGROUND
    freq = occ.mean(0)
    freq[never] = np.maximum(freq[never], 1.0)
    return MotionStats(freq.astype(np.float32), fg.mean((1, 2)).astype(np.float32), stride)


def static_on_grid(static: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A static-cell map resized onto a density grid whose valid (unpadded) cells are ``valid``."""
    rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
    out = np.zeros(valid.shape, dtype=bool)
    out[:rows, :cols] = cv2.resize(static.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST).astype(bool)
    return out
