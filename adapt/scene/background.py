"""The empty scene: a per-pixel background estimate from a fixed camera's frames.

A plain temporal median keeps people who stood still for part of the buffer as
ghosts, and where people walk past most of the time (a busy pavement in front
of a shop window) it is a blend of passers-by. So the empty scene is the median
of each pixel over the frames where it held still: where it matched its own
value in every frame within ``window_s`` seconds before and after (and in the
nearest frame on each side). Walkers cover a pixel for less time than that;
the background stays. The window is in seconds, from the frames' capture
times, because a buffer's frames are not evenly spaced. Where a pixel never
held still, the median is taken twice: the second time over only the frames
where the pixel agreed with the first estimate. Pixels that were almost never
seen without a foreground object are reported as ``unseen`` rather than trusted
as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_CLEAR_FRACTION = 0.15  # a pixel must be background in this share of frames to be trusted
SPAN_CAP = 10.0  # no frame counts for more than this many times the median frame's time
STILL_QUANTILE = 0.75  # a pixel still for longer than this share of foreground visits last is background


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


def masked_median(frames: np.ndarray, keep: np.ndarray, fallback: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel median over the frames where ``keep`` is true, each frame counted by its weight (default 1;
    the time it stands for where frames are unevenly spaced); ``fallback`` where no frame is kept."""
    T, H, W, C = frames.shape
    w = np.ones(T, np.float32) if weights is None else np.asarray(weights, np.float32)
    out = fallback.copy()
    for y0 in range(0, H, 16):  # row bands keep the sorted copies small
        f = frames[:, y0:y0 + 16]
        k = keep[:, y0:y0 + 16]
        wk = np.where(k, w[:, None, None], np.float32(0))
        ok = k.any(0)
        band = out[y0:y0 + 16]
        for c in range(C):
            order = np.argsort(f[..., c], axis=0, kind="stable")
            vals = np.take_along_axis(f[..., c], order, 0)
            cum = np.cumsum(np.take_along_axis(wk, order, 0), axis=0)
            # the lower weighted median: the first value whose cumulative weight reaches half
            i = np.argmax(cum >= cum[-1:] / 2, axis=0)
            band[..., c][ok] = np.take_along_axis(vals, i[None], 0)[0][ok]
    return out


def frame_spans(times: np.ndarray) -> np.ndarray:
    """(T,) seconds each frame stands for: half the gap to each neighbour (the end frames count their one gap twice)."""
    gaps = np.diff(times)
    if not len(gaps):
        return np.zeros(len(times))
    left = np.concatenate([gaps[:1], gaps])
    right = np.concatenate([gaps, gaps[-1:]])
    return (left + right) / 2


def still_window(fg: np.ndarray, spans: np.ndarray) -> float:
    """Seconds either side a pixel must hold still to count as background: how long walkers cover a pixel.

    The STILL_QUANTILE of the durations of foreground runs (consecutive frames a
    pixel differs from the first estimate) over a grid of pixels, each run
    lasting the time its frames stand for (``spans``, from :func:`frame_spans`).
    """
    s = fg[:, ::4, ::4].reshape(len(fg), -1).T.astype(np.int8)  # pixel-major, so starts and ends pair up
    edges = np.diff(np.pad(s, ((0, 0), (1, 1))), axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    if not len(starts[0]):
        return 0.0
    elapsed = np.concatenate([[0.0], np.cumsum(spans)])
    return float(np.quantile(elapsed[ends[1]] - elapsed[starts[1]], STILL_QUANTILE))


def held_still(frames: np.ndarray, times: np.ndarray, window_s: float, threshold: float) -> np.ndarray:
    """(T, H, W) bool: the pixel matched itself (within ``threshold``) in every frame within ``window_s``
    before and after, and in the nearest frame on each side; false where the window does not fit the buffer."""
    T, H, W, _ = frames.shape
    out = np.zeros((T, H, W), bool)
    fits = (times - times[0] >= window_s) & (times[-1] - times >= window_s)
    fits[0] = fits[-1] = False
    if not fits.any():
        return out
    lags = [j for j in range(1, T) if j == 1 or (times[j:] - times[:-j] <= window_s).any()]
    for y0 in range(0, H, 32):  # row bands keep the int16 copy small
        g = frames[:, y0:y0 + 32].astype(np.int16)
        still = np.ones(g.shape[:3], bool)
        for j in lags:
            same = np.abs(g[j:] - g[:-j]).max(-1) <= threshold
            if j > 1:  # pairs further apart than the window do not constrain
                same |= (times[j:] - times[:-j] > window_s)[:, None, None]
            still[j:] &= same
            still[:-j] &= same
        out[:, y0:y0 + 32] = still & fits[:, None, None]
    return out


def estimate_background(frames: np.ndarray, times: np.ndarray | None = None, min_threshold: float = 18.0) -> Background:
    """The empty scene of a fixed camera from (T, H, W, 3) uint8 frames spread over time.

    ``times`` are the frames' capture times in seconds, increasing; without them
    the frames are taken as evenly spaced one second apart.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(f"need (T, H, W, 3) frames with T >= 2, found {frames.shape}")
    times = np.arange(len(frames), dtype=np.float64) if times is None else np.asarray(times, np.float64)
    if times.shape != (len(frames),) or (np.diff(times) < 0).any():
        raise ValueError(f"need {len(frames)} increasing capture times, found shape {times.shape}")
    spans = frame_spans(times)
    # one frame after a long gap (a camera down, an idle night deduplicated) stands for its time, within bounds
    weights = np.minimum(spans, SPAN_CAP * np.median(spans)) if np.median(spans) > 0 else np.ones(len(frames))
    first = masked_median(frames, np.ones(frames.shape[:3], bool), frames[0], weights)
    thr = max(min_threshold, 4.0 * noise_level(frames[:: max(1, len(frames) // 20)], first))
    fg = foreground(frames, first, thr)
    # grow each object a little: its blurred outline differs from the background too
    kernel = np.ones((7, 7), np.uint8)
    clear = ~np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in fg])
    twice = masked_median(frames, clear, first, weights)
    image = masked_median(frames, held_still(frames, times, still_window(fg, spans), thr), twice, weights)
    unseen = np.tensordot(weights / weights.sum(), clear, axes=1) < MIN_CLEAR_FRACTION
    return Background(image, unseen, thr, len(frames))
