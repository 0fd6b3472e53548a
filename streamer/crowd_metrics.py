"""Crowd and social-distancing figures from a density map (pure numpy).

The model outputs a density map at stride 8: ``density[i, j]`` is the expected
number of people in the 8x8 pixel cell ``(i, j)`` of the model input. Everything
here is derived from that map and from per-camera geometry that is computed once
(:class:`CameraGeometry`), so the per-frame work (:func:`compute_metrics`) is a
handful of vectorised sums.

Coordinates:

* *source* pixels: the camera's own frame; zones and calibration points in the
  config are written in these.
* *input* pixels: the model input. The source frame is scaled by one factor
  (aspect kept) and placed at the top-left corner; the rest is zero padding.
  The frame's :class:`crowdwatch.fit.Fit` says how, and travels with it.
* *ground*: metres on the ground plane, through the calibration homography.
  Without calibration the ground is the input image itself (unit: one input
  pixel), see docs/METRICS.md.

The derivations (cell areas, local density, close pairs) are in docs/METRICS.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crowdwatch.fit import Fit
from crowdwatch.geometry import (  # noqa: F401 - re-exported: streamer code and tests use crowd_metrics.*
    DEFAULT_DISTANCE_PX,
    DEFAULT_MAX_CELL_AREA_M2,
    MAX_CALIBRATION_RMSE_M,
    _as_points,
    apply_homography,
    fit_homography,
    polygon_area,
)
from crowdwatch.result import Figures

STRIDE = 8
# Sub-samples per cell side, used for fractional zone coverage and for the
# fraction of a neighbouring cell that lies within the distancing radius.
SUBSAMPLES = 4

Point = tuple[float, float]


class DensityThresholds(Protocol):
    """What compute_metrics needs from a camera's thresholds (config.Thresholds)."""

    @property
    def density_per_m2(self) -> float: ...


# --------------------------------------------------------------------------- homography

# The homography and polygon helpers live in crowdwatch.geometry (the config checks calibrations with them).


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points; (N, 2) x (K, 2) -> (N,) bool."""
    px, py = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for a, b, c, e in zip(x1, y1, x2, y2):
        if b == e:
            continue  # horizontal edges never cross a horizontal ray
        crosses = (b > py) != (e > py)
        x_at = a + (py - b) * (c - a) / (e - b)
        inside ^= crosses & (px < x_at)
    return inside


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True, eq=False)
class CameraGeometry:
    """Per-camera, per-input-size constants; build once, reuse for every frame.

    ``cell_area`` is the ground area of each density cell (m², or input px²
    without calibration), 0 where ``valid`` is False (padding, above the
    horizon, degenerate or farther than ``max_cell_area``). The neighbourhood
    arrays are a sparse matrix W over valid cells: ``W[r, c]`` is the fraction of
    cell c lying within ``distance`` of the centre of cell r, on the ground.
    """

    grid_shape: tuple[int, int]  # (h, w) of the density map
    input_size: tuple[int, int]  # (w, h) of the model input
    stride: int
    calibrated: bool
    distance: float  # metres (px without calibration)
    cell_area: np.ndarray  # (h, w) float64
    valid: np.ndarray  # (h, w) bool
    zone_names: tuple[str, ...]
    zone_weights: np.ndarray  # (Z, h, w) fraction of each cell inside each zone
    valid_index: np.ndarray  # flat indices of valid cells, (V,)
    nb_rows: np.ndarray  # (nnz,) index into valid cells
    nb_cols: np.ndarray  # (nnz,)
    nb_weights: np.ndarray  # (nnz,)
    self_weight: np.ndarray  # (V,) W[r, r]
    disc_area: np.ndarray  # (V,) ground area within `distance` of each valid cell
    total_area: float  # sum of valid cell areas

    @classmethod
    def build(
        cls,
        input_size: tuple[int, int],
        *,
        fit: Fit | None = None,
        zones: Mapping[str, Sequence[Point]] | None = None,
        calibration: tuple[Sequence[Point], Sequence[Point]] | None = None,
        distance: float,
        max_cell_area: float = DEFAULT_MAX_CELL_AREA_M2,
        stride: int = STRIDE,
        subsamples: int = SUBSAMPLES,
    ) -> CameraGeometry:
        """Geometry for frames of ``input_size`` made from the source by ``fit`` (None: they are the source).

        ``zones`` and ``calibration`` image points are in source pixels;
        ``calibration`` is (image points, ground points in metres) or None, in
        which case areas and ``distance`` are in input pixels.
        """
        iw, ih = (int(v) for v in input_size)
        if iw % stride or ih % stride:
            raise ValueError(f"input size {input_size} is not a multiple of the stride {stride}")
        if not (distance > 0 and math.isfinite(distance)):
            raise ValueError(f"distance must be positive, found {distance}")
        fit = fit or Fit.identity(iw, ih)
        if fit.out_size != (iw, ih):
            raise ValueError(f"the fit makes {fit.out_w}x{fit.out_h} frames, not {iw}x{ih}")
        gh, gw = ih // stride, iw // stride
        cw, ch = fit.content_size

        # Cell rectangles clipped to the content (padding is not part of the scene).
        x0 = np.arange(gw, dtype=np.float64)[None, :].repeat(gh, 0) * stride
        y0 = np.arange(gh, dtype=np.float64)[:, None].repeat(gw, 1) * stride
        x1, y1 = np.minimum(x0 + stride, cw), np.minimum(y0 + stride, ch)
        inside = (x1 > x0) & (y1 > y0)

        if calibration is not None:
            h_src = fit_homography(*calibration)
            # input pixels -> source pixels -> ground
            h_in = h_src @ np.diag([1 / fit.scale, 1 / fit.scale, 1.0])
        else:
            h_in = np.eye(3)
            max_cell_area = math.inf

        corners = np.stack([np.stack(c, -1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], axis=-2)
        ground_corners, w = apply_homography(h_in, corners)  # (gh, gw, 4, 2), (gh, gw, 4)
        with np.errstate(invalid="ignore", over="ignore"):
            area = polygon_area(ground_corners)
            valid = inside & np.all(w > 0, axis=-1) & np.isfinite(area) & (area > 0) & (area <= max_cell_area)
        cell_area = np.where(valid, area, 0.0)

        # Sub-sample points of each cell (clipped rectangle), in input pixels.
        frac = (np.arange(subsamples) + 0.5) / subsamples
        sx = x0[..., None, None] + (x1 - x0)[..., None, None] * frac[None, :]  # (gh, gw, 1, k)
        sy = y0[..., None, None] + (y1 - y0)[..., None, None] * frac[:, None]  # (gh, gw, k, 1)
        sub = np.stack(np.broadcast_arrays(sx, sy), axis=-1).reshape(gh, gw, subsamples**2, 2)

        names: list[str] = []
        weights = []
        for name, polygon in (zones or {}).items():
            poly = fit.to_input(_as_points(polygon, f"zone {name!r}", 3))
            hit = points_in_polygon(sub.reshape(-1, 2), poly).reshape(gh, gw, -1)
            names.append(name)
            weights.append(np.where(inside, hit.mean(axis=-1), 0.0))
        zone_weights = np.stack(weights) if weights else np.zeros((0, gh, gw))

        valid_index = np.flatnonzero(valid)
        centres, _ = apply_homography(h_in, np.stack([(x0 + x1) / 2, (y0 + y1) / 2], -1).reshape(-1, 2)[valid_index])
        sub_ground, _ = apply_homography(h_in, sub.reshape(-1, subsamples**2, 2)[valid_index])
        rows, cols, nbw = _neighbours(centres, sub_ground, float(distance))
        v = len(valid_index)
        area_v = cell_area.ravel()[valid_index]
        self_weight = np.zeros(v)
        diag = rows == cols
        self_weight[rows[diag]] = nbw[diag]
        disc_area = np.bincount(rows, weights=nbw * area_v[cols], minlength=v)

        for arr in (cell_area, valid, zone_weights, valid_index, rows, cols, nbw, self_weight, disc_area):
            arr.setflags(write=False)
        return cls(
            grid_shape=(gh, gw),
            input_size=(iw, ih),
            stride=stride,
            calibrated=calibration is not None,
            distance=float(distance),
            cell_area=cell_area,
            valid=valid,
            zone_names=tuple(names),
            zone_weights=zone_weights,
            valid_index=valid_index,
            nb_rows=rows,
            nb_cols=cols,
            nb_weights=nbw,
            self_weight=self_weight,
            disc_area=disc_area,
            total_area=float(area_v.sum()),
        )

    @classmethod
    def for_camera(
        cls,
        camera: object,
        fit: Fit | None = None,
    ) -> CameraGeometry:
        """Build from a ``config.CameraConfig`` (duck-typed to keep this module config-free) for frames made by ``fit``.

        The frame's size is ``fit``'s output: the source pads only up to the next
        multiple of 32, so it can be smaller than the configured box.
        """
        cal = camera.calibration
        return cls.build(
            fit.out_size if fit is not None else (camera.width, camera.height),  # type: ignore[attr-defined]
            fit=fit,
            zones=camera.zones,  # type: ignore[attr-defined]
            calibration=None if cal is None else (cal.image, cal.ground),
            distance=camera.distance_m if cal is not None else camera.distance_px,  # type: ignore[attr-defined]
            max_cell_area=DEFAULT_MAX_CELL_AREA_M2 if cal is None else cal.max_cell_area_m2,
        )


def _neighbours(
    centres: np.ndarray, sub: np.ndarray, radius: float, block: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse W[r, c] = fraction of cell c's sub-points within ``radius`` of centre r.

    Ground points are bucketed into square tiles of side ``radius``, so each
    query tile only looks at its 3x3 tile neighbourhood; cost ~ V x (points
    within 1.5 radius), not V x all points.
    """
    v = len(centres)
    if v == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    k2 = sub.shape[1]
    pts = sub.reshape(-1, 2)
    owner = np.repeat(np.arange(v), k2)
    origin = np.minimum(pts.min(axis=0), centres.min(axis=0))
    ptile = np.floor((pts - origin) / radius).astype(np.int64)
    ctile = np.floor((centres - origin) / radius).astype(np.int64)
    ny = int(max(ptile[:, 1].max(), ctile[:, 1].max())) + 3
    pkey = ptile[:, 0] * ny + ptile[:, 1]
    order = np.argsort(pkey, kind="stable")
    pkey_sorted, pts_sorted, owner_sorted = pkey[order], pts[order], owner[order]
    ckey = ctile[:, 0] * ny + ctile[:, 1]
    r2 = radius * radius
    out_r, out_c, out_n = [], [], []
    for key in np.unique(ckey):
        queries = np.flatnonzero(ckey == key)
        tx, ty = divmod(int(key), ny)
        slices = []
        for dx in (-1, 0, 1):
            lo_key = (tx + dx) * ny + max(ty - 1, 0)
            hi_key = (tx + dx) * ny + ty + 1
            lo, hi = np.searchsorted(pkey_sorted, [lo_key, hi_key + 1])
            if hi > lo:
                slices.append(np.arange(lo, hi))
        if not slices:
            continue
        cand = np.concatenate(slices)
        step = max(1, block // len(queries))
        for start in range(0, len(cand), step):
            part = cand[start : start + step]
            d = centres[queries, None, :] - pts_sorted[None, part, :]
            qi, pj = np.nonzero((d * d).sum(axis=-1) < r2)
            if len(qi):
                pair = queries[qi] * v + owner_sorted[part[pj]]
                uniq, counts = np.unique(pair, return_counts=True)
                out_r.append(uniq // v)
                out_c.append(uniq % v)
                out_n.append(counts)
    if not out_r:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    # A (row, col) pair can come from several candidate blocks: merge them.
    pair = np.concatenate(out_r) * v + np.concatenate(out_c)
    uniq, inverse = np.unique(pair, return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(out_n))
    return uniq // v, uniq % v, counts / k2


# --------------------------------------------------------------------------- per frame


def compute_metrics(
    density: np.ndarray,
    uncertainty: np.ndarray | None,
    geometry: CameraGeometry,
    thresholds: DensityThresholds,
    *,
    mask_counts: np.ndarray | None = None,
) -> Figures:
    """All per-frame figures from one density map (people per cell, shape ``grid_shape``).

    ``uncertainty`` is the model's per-cell std across masks; the count std is
    then bounded by its sum (masks act on the whole map, so cells are strongly
    correlated). If the per-mask counts are known, pass ``mask_counts`` and the
    exact std (ddof=0) is used instead.
    """
    dens = _checked(density, geometry)
    count = max(float(dens.sum()), 0.0)
    zones = {name: max(float((dens * w).sum()), 0.0) for name, w in zip(geometry.zone_names, geometry.zone_weights)}

    if mask_counts is not None:
        mc = np.asarray(mask_counts, dtype=np.float64).ravel()
        if mc.size < 2 or not np.all(np.isfinite(mc)):
            raise ValueError("mask_counts needs at least two finite values")
        unc: float | None = float(mc.std())
    elif uncertainty is not None:
        u = np.asarray(uncertainty, dtype=np.float64).reshape(dens.shape)
        if not np.all(np.isfinite(u)):
            raise ValueError("uncertainty map has non-finite values")
        unc = float(np.abs(u).sum())
    else:
        unc = None

    n, near, rho = _neighbourhood(dens, geometry)
    if len(n):
        others = np.maximum(near - geometry.self_weight, 0.0)
        close_pairs = 0.5 * float((n * others).sum())
        area_v = geometry.cell_area.ravel()[geometry.valid_index]
        over = float(area_v[rho > thresholds.density_per_m2].sum())
        ratio = over / geometry.total_area if geometry.total_area > 0 else 0.0
        peak = float(rho.max())
    else:
        close_pairs, ratio, peak = 0.0, 0.0, 0.0
    return Figures(
        count=count,
        zones=zones,
        uncertainty=unc,
        density_peak_per_m2=peak,
        close_pairs=close_pairs,
        area_over_density_ratio=min(ratio, 1.0),  # a ratio of sums of the same areas; rounding must not push it past 1
        calibrated=geometry.calibrated,
    )


def local_density(density: np.ndarray, geometry: CameraGeometry) -> np.ndarray:
    """(h, w) people per m² averaged over the distancing disc around each cell, 0 off-ground."""
    dens = _checked(density, geometry)
    _, _, rho = _neighbourhood(dens, geometry)
    local = np.zeros(dens.shape)
    local.ravel()[geometry.valid_index] = rho
    return local


def _checked(density: np.ndarray, geometry: CameraGeometry) -> np.ndarray:
    dens = np.asarray(density, dtype=np.float64)
    if dens.ndim == 4 and dens.shape[:2] == (1, 1):
        dens = dens[0, 0]
    if dens.shape != geometry.grid_shape:
        raise ValueError(f"density shape {dens.shape} does not match the geometry grid {geometry.grid_shape}")
    if not np.all(np.isfinite(dens)):
        raise ValueError("density map has non-finite values")
    return dens


def _neighbourhood(dens: np.ndarray, geometry: CameraGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """People per valid cell, people within the distance of each, and the local density there."""
    # Small negative densities are model noise; people cannot be negative.
    n = np.maximum(dens.ravel()[geometry.valid_index], 0.0)
    near = np.bincount(geometry.nb_rows, weights=geometry.nb_weights * n[geometry.nb_cols], minlength=len(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(geometry.disc_area > 0, near / geometry.disc_area, 0.0)
    return n, near, rho
