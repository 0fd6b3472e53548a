"""The empty scene: a per-pixel background estimate from a fixed camera's frames.

A plain temporal median keeps people who stood still for part of the buffer as
ghosts, and where people walk past most of the time (a busy pavement in front
of a shop window) it is a blend of passers-by. So the empty scene is the median
of each pixel over the frames where it held still: where it matched its own
value in the ``stable_window`` frames before and after. Walkers cover a pixel
for less than that; the background stays. Where a pixel never held still, the
median is taken twice: the second time over only the frames where the pixel
agreed with the first estimate. Pixels that were almost never seen without a
foreground object are reported as ``unseen`` rather than trusted as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_CLEAR_FRACTION = 0.15  # a pixel must be background in this share of frames to be trusted
STABLE_QUANTILE = 0.75  # a pixel still for longer than this share of foreground visits last is background
MIN_STABLE, MAX_STABLE = 2, 30  # frames either side a pixel must hold still


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


def stable_window(fg: np.ndarray) -> int:
    """Frames either side a pixel must hold still to count as background: how long walkers cover a pixel.

    The STABLE_QUANTILE of the lengths of foreground runs (consecutive frames a
    pixel differs from the first estimate) over a grid of pixels, in frames of
    this buffer: fast at 25 frames a second, short where frames are far apart.
    """
    s = fg[:, ::4, ::4].reshape(len(fg), -1).astype(np.int8)
    edges = np.diff(np.concatenate([np.zeros((1, s.shape[1]), np.int8), s, np.zeros((1, s.shape[1]), np.int8)]), axis=0)
    starts, ends = np.nonzero(edges.T == 1), np.nonzero(edges.T == -1)  # pixel-major, so starts and ends pair up
    runs = ends[1] - starts[1]
    if not len(runs):
        return MIN_STABLE
    k = int(np.ceil(np.quantile(runs, STABLE_QUANTILE)))
    return int(np.clip(k, MIN_STABLE, min(MAX_STABLE, max(MIN_STABLE, (len(fg) - 1) // 4))))


def held_still(frames: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """(T, H, W) bool: the pixel matched itself (within ``threshold``) in each of the k frames before and after."""
    T, H, W, _ = frames.shape
    out = np.zeros((T, H, W), bool)
    if T <= 2 * k:
        return out
    for y0 in range(0, H, 32):  # row bands keep the int16 copy small
        g = frames[:, y0:y0 + 32].astype(np.int16)
        still = np.ones(g.shape[:3], bool)
        for j in range(1, k + 1):
            same = np.abs(g[j:] - g[:-j]).max(-1) <= threshold
            still[j:] &= same
            still[:-j] &= same
        still[:k] = still[T - k:] = False  # the window must fit inside the buffer
        out[:, y0:y0 + 32] = still
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
    twice = masked_median(frames, clear, first)
    image = masked_median(frames, held_still(frames, stable_window(fg), thr), twice)
    unseen = clear.mean(0) < MIN_CLEAR_FRACTION
    return Background(image, unseen, thr, len(frames))
