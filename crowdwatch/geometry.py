"""Ground-plane geometry shared by the config (validation) and the metrics (pure numpy).

Moved out of ``streamer/crowd_metrics.py`` so that ``crowdwatch.config`` can
check a calibration at load time without importing ``streamer``.
"""

from __future__ import annotations

import math

import numpy as np

# A cell covering more ground than this is "too far": a person there is a couple
# of pixels wide, the model cannot resolve them and the cell's area is dominated
# by the projective blow-up near the horizon.
DEFAULT_MAX_CELL_AREA_M2 = 4.0
# Without calibration, distances are in input pixels (four cells by default).
DEFAULT_DISTANCE_PX = 32.0
# Calibrations with more than four points must fit this well (RMS, metres).
MAX_CALIBRATION_RMSE_M = 0.5


def _as_points(points: object, what: str, minimum: int) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} must be a list of [x, y] pairs, found shape {arr.shape}")
    if arr.shape[0] < minimum:
        raise ValueError(f"{what} needs at least {minimum} points, found {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has non-finite coordinates")
    return arr


def _normaliser(pts: np.ndarray) -> np.ndarray:
    # Hartley normalisation: centroid at 0, mean distance sqrt(2); keeps the DLT
    # well conditioned when pixels (~1000) and metres (~10) are mixed.
    centre = pts.mean(axis=0)
    spread = np.sqrt(((pts - centre) ** 2).sum(axis=1)).mean()
    if spread <= 0:
        raise ValueError("points are all identical")
    s = math.sqrt(2.0) / spread
    return np.array([[s, 0, -s * centre[0]], [0, s, -s * centre[1]], [0, 0, 1.0]])


def apply_homography(h: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (N, 2) points; returns (xy, w) where w > 0 means below the horizon."""
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 2)
    hom = flat @ h[:, :2].T + h[:, 2]
    w = hom[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = hom[:, :2] / w[:, None]
    return xy.reshape(pts.shape), w.reshape(pts.shape[:-1])


def fit_homography(image_points: object, ground_points: object) -> np.ndarray:
    """Homography from image pixels to ground metres (DLT, least squares for > 4 points).

    The sign is fixed so that ``w > 0`` at the calibration points: image points
    that map with ``w <= 0`` are above the horizon. Raises ValueError with a
    readable reason for degenerate or inconsistent calibrations.
    """
    src = _as_points(image_points, "image points", 4)
    dst = _as_points(ground_points, "ground points", 4)
    if src.shape != dst.shape:
        raise ValueError(f"{src.shape[0]} image points but {dst.shape[0]} ground points")
    ts, td = _normaliser(src), _normaliser(dst)
    s = src @ ts[:2, :2].T + ts[:2, 2]
    d = dst @ td[:2, :2].T + td[:2, 2]
    rows = []
    for (x, y), (u, v) in zip(s, d):
        rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    a = np.asarray(rows)
    _, sv, vt = np.linalg.svd(a)
    # A unique solution needs rank 8; three collinear points (of four) or
    # repeated points leave a second null direction.
    if sv[7] <= 1e-9 * sv[0]:
        raise ValueError("points are degenerate (three or more collinear, or repeated)")
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    h = h / np.abs(h).max()
    if abs(np.linalg.det(h)) < 1e-12:
        raise ValueError("homography is singular: three or more points are collinear in one of the two sets")
    _, w = apply_homography(h, src.mean(axis=0, keepdims=True))
    if w[0] < 0:
        h = -h
    _, w = apply_homography(h, src)
    if np.any(w <= 0):
        raise ValueError("calibration points lie on both sides of the horizon; check the point order")
    if src.shape[0] > 4:
        mapped, _ = apply_homography(h, src)
        rmse = float(np.sqrt(((mapped - dst) ** 2).sum(axis=1).mean()))
        if rmse > MAX_CALIBRATION_RMSE_M:
            raise ValueError(
                f"points do not fit one ground plane: RMS error {rmse:.2f} m "
                f"(at most {MAX_CALIBRATION_RMSE_M} m); check for a typo"
            )
    return h


def polygon_area(points: np.ndarray) -> np.ndarray:
    """Shoelace area of polygons, ``points`` of shape (..., K, 2); always >= 0."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(axis=-1))


def point_outside(points: object, size: tuple[int, int] | None) -> int | None:
    """Index of the first point outside a ``size`` = (w, h) frame (edges included), or None.

    Without a size only negative coordinates are outside (every frame starts at 0, 0).
    """
    for i, (x, y) in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 2)):
        if x < 0 or y < 0 or (size is not None and (x > size[0] or y > size[1])):
            return i
    return None


def _orientation(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> int:
    cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (cross > 0) - (cross < 0)


def _on_segment(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_touch(p1: tuple[float, float], p2: tuple[float, float], q1: tuple[float, float], q2: tuple[float, float]) -> bool:
    """Whether segments p1-p2 and q1-q2 share a point (crossing or touching)."""
    o1, o2 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    o3, o4 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return ((o1 == 0 and _on_segment(p1, p2, q1)) or (o2 == 0 and _on_segment(p1, p2, q2))
            or (o3 == 0 and _on_segment(q1, q2, p1)) or (o4 == 0 and _on_segment(q1, q2, p2)))  # fmt: skip


def self_crossing(points: list[tuple[float, float]] | tuple[tuple[float, float], ...]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges of a closed polygon that meet (edge i runs from point i to i+1), or None.

    A zone whose outline crosses itself (a figure eight from two swapped points)
    has no single inside: which lobes count depends on the fill rule.
    """
    n = len(points)
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing edge
            if segments_touch(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]):
                return i, j
    return None
