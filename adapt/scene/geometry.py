"""How big a person is on each image row: the camera's ground plane from moving people.

Foreground blobs that look like single upright people (taller than wide, not
cut by the frame) give (feet row, height in pixels) pairs. On a flat ground a
standing person's pixel height grows linearly with the distance of their feet
below the horizon, so a robust line through the per-row medians gives the
horizon and the scale; a pinhole ``Camera`` (the renderer's) is then fitted to
those pairs by a grid search, taking adults as 1.7 m. A configured calibration,
when there is one, is checked against what the people show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from adapt.synth.camera import Camera

PERSON_M = 1.7
MIN_SAMPLES = 12  # fewer single-person blobs than this: the sizes are not trusted
BLUR_GROWTH = 2  # px the 5x5 blur in background.foreground adds to each side of an outline
DEFAULT_FILL = 0.3  # a person's silhouette over height squared when the camera showed too few whole people


@dataclass(frozen=True)
class PersonSizes:
    feet_x: np.ndarray  # (K,) feet columns, pixels
    feet_y: np.ndarray  # (K,) feet rows, pixels
    height_px: np.ndarray  # (K,) blob heights, pixels
    area_px: np.ndarray  # (K,) foreground pixels in the blob

    def __len__(self) -> int:
        return len(self.feet_y)


def blob_stats(fg: np.ndarray) -> list[np.ndarray]:
    """Per frame, the (k, 5) [x, y, w, h, area] boxes of foreground objects after cleaning the masks."""
    T, H, W = fg.shape
    open_k = np.ones((3, 3), np.uint8)
    # tall closing: a person's head, torso and legs often separate where clothes match the background
    close_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, H // 60) | 1, max(5, H // 20) | 1))
    out = []
    for m in fg:
        m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, open_k)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, close_k)
        _, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        out.append(stats[1:].astype(np.float64))
    return out


def person_blobs(blobs: list[np.ndarray], shape: tuple[int, int], min_height_frac: float = 0.04) -> PersonSizes:
    """The blobs that look like one whole upright person: taller than wide, not cut by the frame."""
    H, W = shape
    xs, ys, hs, areas = [], [], [], []
    for stats in blobs:
        for x, y, w, h, area in stats:
            if h < min_height_frac * H or y <= 1 or y + h >= H - 1 or x <= 1 or x + w >= W - 1:
                continue  # too small or cut by the frame edge
            if not (2.0 <= h / max(w, 1) <= 3.6) or area < 0.3 * w * h:
                continue  # groups side by side, or thin structures
            xs.append(x + w / 2)
            ys.append(y + h - BLUR_GROWTH)
            hs.append(h - 2 * BLUR_GROWTH)
            areas.append(area)
    return PersonSizes(*(np.asarray(v, np.float64) for v in (xs, ys, hs, areas)))


def silhouette_fill(sizes: PersonSizes, cam: Camera, tol: float = 0.25) -> float | None:
    """Foreground pixels of one whole person over (their height in pixels)^2, as this camera's foreground shows them.

    Measured on the blobs whose height matches the ground plane at their feet:
    dark clothes on a dark street leave holes a textbook 0.3 would not know of.
    None when fewer than MIN_SAMPLES such blobs were seen.
    """
    if not len(sizes):
        return None
    want = row_person_px(cam, sizes.feet_y)
    ok = np.isfinite(want) & (want > 0)
    ok[ok] = np.abs(np.log(np.maximum(sizes.height_px[ok], 1) / want[ok])) < tol
    if ok.sum() < MIN_SAMPLES:
        return None
    return float(np.median(sizes.area_px[ok] / want[ok] ** 2))


def blob_people(stats: np.ndarray, cam: Camera, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(people in each blob, one person's height at its feet row) for (k, 5) blob boxes.

    A blob holds its area over one person's silhouette at its feet row: groups
    count several, a leg or a head over a matching background counts a fraction.
    Blobs above the horizon hold nobody.
    """
    if not len(stats):
        return np.zeros(0), np.zeros(0)
    person = row_person_px(cam, stats[:, 1] + stats[:, 3] - BLUR_GROWTH)
    one = fill * np.nan_to_num(person, nan=0.0) ** 2
    return np.where(one > 4, stats[:, 4] / np.maximum(one, 1e-9), 0.0), np.nan_to_num(person, nan=0.0)


MIN_SHARE = 0.25  # blobs smaller than this share of one person (fragments, birds, flicker) count nobody


def people_in_motion(blobs: list[np.ndarray], cam: Camera, fill: float = DEFAULT_FILL) -> np.ndarray:
    """(T,) people per frame from foreground area: the sum of ``blob_people`` over blobs of at least MIN_SHARE.

    Rough: people behind one another share pixels, and whoever stood still all
    along is part of the empty scene.
    """
    out = np.zeros(len(blobs))
    for t, stats in enumerate(blobs):
        share = blob_people(stats, cam, fill)[0]
        out[t] = float(share[share >= MIN_SHARE].sum())
    return out


def size_line(sizes: PersonSizes, tol: float = 0.2, seed: int = 0) -> tuple[float, float, float] | None:
    """(slope, horizon row, inlier share) of height = slope * (feet_y - horizon).

    RANSAC over blob pairs: fragments of people, pigeons and merged groups are
    outliers; the line most whole people agree on (within ``tol`` in log size) wins.
    """
    if len(sizes) < MIN_SAMPLES:
        return None
    y, h = sizes.feet_y, sizes.height_px
    rng = np.random.default_rng(seed)
    best, best_in = None, 0.0
    i, j = rng.integers(0, len(y), (2, 2000))
    for a, b in zip(i, j):
        if abs(y[a] - y[b]) < 8:
            continue
        slope = (h[a] - h[b]) / (y[a] - y[b])
        if slope <= 0.05:
            continue
        horizon = y[a] - h[a] / slope
        pred = slope * (y - horizon)
        ok = pred > 0
        inl = np.zeros(len(y), bool)
        inl[ok] = np.abs(np.log(h[ok] / pred[ok])) < tol
        score = float(inl.mean())
        if score > best_in:
            best, best_in = (slope, horizon), score
    if best is None:
        # everyone's feet on about the same row: the horizon is where their heads are
        horizon = float(np.median(y - h))
        return 1.0 * float(np.median(h / np.maximum(y - horizon, 1))), horizon, 0.0
    slope, horizon = best
    pred = slope * (y - horizon)
    inl = (pred > 0) & (np.abs(np.log(np.maximum(h, 1) / np.maximum(pred, 1e-6))) < tol)
    if inl.sum() >= 3 and np.ptp(y[inl]) >= 8:
        slope, icpt = np.polyfit(y[inl], h[inl], 1)
        if slope > 0.05:
            horizon = -icpt / slope
    return float(slope), float(horizon), best_in


def row_person_px(cam: Camera, rows: np.ndarray) -> np.ndarray:
    """Pixel height of a 1.7 m person whose feet are on each row at the image centre column (NaN above the horizon)."""
    g = cam.pixel_to_ground(np.column_stack([np.full(len(rows), cam.cx), rows]))
    out = np.full(len(rows), np.nan)
    ok = np.isfinite(g).all(1) & (g[:, 1] > 0.3)
    if ok.any():
        out[ok] = cam.person_height_px(g[ok], PERSON_M)
    return out


def inliers(sizes: PersonSizes, slope: float, horizon: float, tol: float = 0.2) -> np.ndarray:
    """Blobs within ``tol`` (log size) of the line: whole single people."""
    pred = slope * (sizes.feet_y - horizon)
    ok = pred > 0
    out = np.zeros(len(sizes), bool)
    out[ok] = np.abs(np.log(np.maximum(sizes.height_px[ok], 1) / pred[ok])) < tol
    return out


def best_camera(width: int, height: int, error, max_tilt: float, max_height_m: float) -> tuple[Camera | None, float]:
    """The renderer camera of least ``error(camera)`` over a grid of fields of view, tilts (2 degree steps) and heights."""
    best, best_err = None, math.inf
    for hfov in (40.0, 50.0, 60.0, 70.0, 80.0):
        f = (width / 2) / math.tan(math.radians(hfov) / 2)
        for tilt in np.arange(0.0, max_tilt + 1e-9, 2.0):
            for cam_h in np.exp(np.linspace(math.log(0.8), math.log(max_height_m), 40)):
                cam = Camera(width, height, float(cam_h), float(tilt), f)
                err = error(cam)
                if err < best_err:
                    best, best_err = cam, err
    return best, best_err


def fit_camera(sizes: PersonSizes, width: int, height: int) -> tuple[Camera, float] | None:
    """The renderer camera whose projected person heights best match the whole-person blobs; (camera, median |log error|).

    The line picks the blobs that are whole single people; the camera is then
    fitted to those blobs themselves, since a tilted camera's sizes are not
    exactly linear in the row.
    """
    line = size_line(sizes)
    if line is None:
        return None
    slope, horizon, _ = line
    keep = inliers(sizes, slope, horizon)
    if keep.sum() < 3:
        return None
    y, h = sizes.feet_y[keep], sizes.height_px[keep]

    def error(cam: Camera) -> float:
        got = row_person_px(cam, y)
        return float(np.median(np.abs(np.log(got / h)))) if np.isfinite(got).all() else math.inf

    best, _ = best_camera(width, height, error, max_tilt=70.0, max_height_m=40.0)
    if best is None:
        return None
    got = row_person_px(best, sizes.feet_y[keep])
    return best, float(np.median(np.abs(np.log(got / sizes.height_px[keep]))))


def camera_from_calibration(image_pts: np.ndarray, ground_pts: np.ndarray, width: int, height: int) -> tuple[Camera, float] | None:
    """The renderer camera that maps the calibration's image points to ground points as far apart as configured.

    A ground-plane calibration fixes distances on the ground, not which way is up; the
    camera is fitted to the pairwise distances, which do not depend on where the
    configured ground frame has its origin. Returns (camera, median |log| distance error).
    """
    img = np.asarray(image_pts, np.float64).reshape(-1, 2)
    gnd = np.asarray(ground_pts, np.float64).reshape(-1, 2)
    i, j = np.triu_indices(len(img), 1)
    want = np.hypot(*(gnd[i] - gnd[j]).T)
    if len(want) == 0 or (want <= 0).any():
        return None

    def error(cam: Camera) -> float:
        g = cam.pixel_to_ground(img)
        if not np.isfinite(g).all():
            return math.inf
        got = np.hypot(*(g[i] - g[j]).T)
        return float(np.median(np.abs(np.log(np.maximum(got, 1e-9) / want))))

    best, best_err = best_camera(width, height, error, max_tilt=80.0, max_height_m=60.0)
    return (best, best_err) if best is not None else None


def size_disagreement(a: Camera, b: Camera, rows: np.ndarray) -> float:
    """Median |log| ratio of the person heights two cameras give on the same rows (NaN where either has none)."""
    ha, hb = row_person_px(a, rows), row_person_px(b, rows)
    ok = np.isfinite(ha) & np.isfinite(hb) & (ha > 0) & (hb > 0)
    return float(np.median(np.abs(np.log(ha[ok] / hb[ok])))) if ok.any() else math.inf
