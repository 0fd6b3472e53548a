"""The empty scene: a per-pixel background estimate from a fixed camera's frames.

A plain temporal median keeps people who stood still for part of the buffer as
ghosts. So the median is taken twice: the second time per pixel over only the
frames where that pixel agreed with the first estimate. Pixels that were almost
never seen without a foreground object are reported as ``unseen`` rather than
trusted as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_CLEAR_FRACTION = 0.15  # a pixel must be background in this share of frames to be trusted


@dataclass(frozen=True, eq=False)
class Background:
    image: np.ndarray  # (H, W, 3) uint8 RGB, the empty scene
    unseen: np.ndarray  # (H, W) bool, pixels never reliably seen empty
    threshold: float  # foreground threshold in grey levels used to build it
    frames: int  # how many frames it was built from


def noise_level(frames: np.ndarray, reference: np.ndarray) -> float:
    """Robust per-pixel noise (grey levels) of frames around a reference image: 1.4826 x MAD."""
    d = np.abs(frames.astype(np.int16) - reference.astype(np.int16)).max(-1)
    return float(1.4826 * np.median(d))


def foreground(frames: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """(T, H, W) bool: pixels whose colour differs from the background by more than ``threshold``."""
    out = np.empty(frames.shape[:3], bool)
    bg = background.astype(np.int16)
    for t in range(len(frames)):
        d = np.abs(frames[t].astype(np.int16) - bg).max(-1).astype(np.uint8)
        d = cv2.GaussianBlur(d, (5, 5), 0)  # single noisy pixels are not objects
        out[t] = d > threshold
    return out


def masked_median(frames: np.ndarray, keep: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per-pixel median over the frames where ``keep`` is true; ``fallback`` where none is."""
    T, H, W, C = frames.shape
    out = fallback.copy()
    for y0 in range(0, H, 32):  # row bands keep the float copy small
        f = frames[:, y0:y0 + 32].astype(np.float32)
        k = keep[:, y0:y0 + 32]
        f[~np.broadcast_to(k[..., None], f.shape)] = np.nan
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(f, axis=0)
        ok = k.any(0)
        band = out[y0:y0 + 32]
        band[ok] = np.clip(np.rint(med[ok]), 0, 255).astype(np.uint8)
    return out


def estimate_background(frames: np.ndarray, min_threshold: float = 18.0) -> Background:
    """The empty scene of a fixed camera from (T, H, W, 3) uint8 frames spread over time."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(f"need (T, H, W, 3) frames with T >= 2, found {frames.shape}")
    first = np.median(frames, axis=0).astype(np.uint8)
    thr = max(min_threshold, 4.0 * noise_level(frames[:: max(1, len(frames) // 20)], first))
    fg = foreground(frames, first, thr)
    # grow each object a little: its blurred outline differs from the background too
    kernel = np.ones((7, 7), np.uint8)
    clear = ~np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in fg])
    image = masked_median(frames, clear, first)
    unseen = clear.mean(0) < MIN_CLEAR_FRACTION
    return Background(image, unseen, thr, len(frames))
