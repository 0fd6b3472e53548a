"""Peer counters for the accuracy benchmark (``bench/accuracy.py``); the product never uses them.

- :func:`hog_count`: OpenCV's default HOG people detector (Dalal-Triggs
  linear SVM, 64x128 window), one count per frame = the detections left after
  merging overlapping windows. By default the merging is OpenCV's own
  (``detectMultiScale`` with ``groupThreshold=2``: ``cv2.groupRectangles``
  with eps 0.2, which keeps a cluster only if it holds at least 3 raw
  windows); with ``nms_iou`` set, OpenCV's grouping is off
  (``groupThreshold=0``) and :func:`nms` (greedy, by SVM score, IoU) merges
  the raw windows instead.
- :func:`constant_prediction`: the mean or median of the true counts for
  every frame. These are oracles: they read the labels of the very frames
  they are scored on, so no real counter can know them in advance.

Metrics are the project's (:func:`adapt.evaluate.count_errors`, MAE and
RMSE; papers call the RMSE "MSE").
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from adapt.training.evaluate import count_errors


@dataclass(frozen=True)
class HogParams:
    win_stride: tuple[int, int] = (8, 8)
    padding: tuple[int, int] = (8, 8)
    scale: float = 1.05
    hit_threshold: float = 0.0
    group_threshold: int = 2      # OpenCV's default (its C++ finalThreshold); ignored when nms_iou is set
    nms_iou: float | None = None  # None: OpenCV's grouping; else greedy NMS of the raw windows at this IoU
    max_side: int | None = None   # downscale (INTER_AREA) so the longer side fits; None: the frame as it is
    grey: bool = False            # detect on the BT.601 luma instead of the BGR frame

    def describe(self) -> dict:
        return asdict(self)


def people_detector() -> cv2.HOGDescriptor:
    """``cv2.HOGDescriptor()`` (64x128 window) with OpenCV's default people SVM."""
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    return hog


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression: best score first, drop boxes with IoU > ``iou``.

    ``boxes`` are (N, 4) as (x, y, w, h), as OpenCV returns them.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = area[i] + area[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def hog_boxes(image_bgr: np.ndarray, params: HogParams = HogParams(), detector: cv2.HOGDescriptor | None = None) -> np.ndarray:
    """People boxes (N, 4) as (x, y, w, h) in the coordinates of the (possibly downscaled) frame."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 BGR image (H, W, 3), found {image_bgr.dtype} {image_bgr.shape}")
    hog = detector or people_detector()
    img = image_bgr
    if params.max_side is not None and max(img.shape[:2]) > params.max_side:
        s = params.max_side / max(img.shape[:2])
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
    if params.grey:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.shape[0] < hog.winSize[1] or img.shape[1] < hog.winSize[0]:
        return np.zeros((0, 4), dtype=np.int64)  # no window fits
    group = 0 if params.nms_iou is not None else params.group_threshold
    rects, weights = hog.detectMultiScale(
        img, hitThreshold=params.hit_threshold, winStride=params.win_stride, padding=params.padding,
        scale=params.scale, groupThreshold=group,
    )
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    if params.nms_iou is not None and len(rects):
        rects = rects[nms(rects, np.asarray(weights).reshape(-1), params.nms_iou)]
    return rects


def hog_count(image_bgr: np.ndarray, params: HogParams = HogParams(), detector: cv2.HOGDescriptor | None = None) -> int:
    """People counted in one frame by the HOG detector: the number of merged detections."""
    return int(len(hog_boxes(image_bgr, params, detector)))


def constant_prediction(true: np.ndarray, kind: str) -> np.ndarray:
    """Every frame predicted as the mean or median of ``true`` (an oracle: it reads the labels)."""
    t = np.asarray(true, dtype=np.float64)
    if kind not in ("mean", "median"):
        raise ValueError(f"kind must be 'mean' or 'median', found {kind!r}")
    if t.size == 0:
        return t.copy()
    value = float(np.mean(t)) if kind == "mean" else float(np.median(t))
    return np.full_like(t, value)


def score(true, pred) -> dict:
    """MAE, RMSE, mean predicted and mean true count, and the number of frames."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"true {t.shape} and predicted {p.shape} counts differ in shape")
    mae, rmse = count_errors(t, p)
    return {
        "mae": mae, "rmse": rmse, "n": int(t.size),
        "mean_pred": float(p.mean()) if p.size else float("nan"),
        "mean_true": float(t.mean()) if t.size else float("nan"),
    }


def cpu_name() -> str:
    """The CPU model string from /proc/cpuinfo (or platform's guess), with the usable core count."""
    import os

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"
