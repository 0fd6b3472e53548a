"""Density maps from head points, at the network's output stride.

Conventions
-----------
* Points are continuous ``(x, y)`` pixel coordinates; the image covers
  ``[0, W) x [0, H)`` and output cell ``(i, j)`` covers
  ``[j*stride, (j+1)*stride) x [i*stride, (i+1)*stride)``.
* Each point inside the image adds a 2-D isotropic Gaussian whose mass is
  integrated *analytically* over every cell (differences of ``erf``, separable
  in x and y) and then renormalised over the cells inside the image. A point
  on an edge or in a corner therefore still adds exactly 1, and
  ``density.sum()`` equals the number of in-image points up to float32
  rounding. Points outside the image add nothing and are counted in
  ``DensityResult.outside``.
* The map is built as ``A_y^T @ A_x`` per group of points, where ``A_x`` holds
  each point's mass per cell column and ``A_y`` per cell row. Points are
  grouped by y so each group only touches a horizontal band of rows; this
  keeps both memory and time linear in the number of points.

Sigma rule (:class:`SigmaRule`, defaults)
-----------------------------------------
* Known head diameter ``d`` (finite and > 0): ``sigma = 0.25 * d``, so about
  95% of the mass falls within the head disc (±2 sigma = the diameter).
* Otherwise geometry-adaptive (Zhang et al., MCNN): ``sigma = 0.3 * mean
  distance to the k = 3 nearest other points`` (fewer when the image has fewer
  than 4 points). A lone point gets ``lone_sigma = 8 px`` (one output cell).
* Finally clipped to ``[1, 32] px``: the floor avoids degenerate kernels from
  duplicated points, the ceiling stops isolated people in sparse scenes from
  being smeared over half the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import erf

STRIDE = 8

# The Gaussian is integrated over +-TRUNCATE sigma around each point before
# renormalising; the mass beyond 5 sigma (6e-7) is negligible.
TRUNCATE = 5.0
# Points per matrix product: bounds the temporary (group, cells) matrices.
GROUP = 1024


@dataclass(frozen=True)
class SigmaRule:
    """How the per-point Gaussian width is chosen; see the module docstring."""

    head_factor: float = 0.25
    beta: float = 0.3
    k: int = 3
    lone_sigma: float = 8.0
    min_sigma: float = 1.0
    max_sigma: float = 32.0

    def __post_init__(self) -> None:
        if not (0 < self.min_sigma <= self.max_sigma):
            raise ValueError(f"need 0 < min_sigma <= max_sigma, found {self.min_sigma}, {self.max_sigma}")
        if self.head_factor <= 0 or self.beta <= 0 or self.k < 1 or self.lone_sigma <= 0:
            raise ValueError(f"sigma rule parameters must be positive: {self}")


DEFAULT_RULE = SigmaRule()


@dataclass(frozen=True)
class DensityResult:
    density: np.ndarray  # float32 (H // stride, W // stride), people per cell
    outside: int  # points dropped because they lie outside [0, W) x [0, H)

    @property
    def count(self) -> float:
        return float(self.density.sum(dtype=np.float64))


def as_points(points: np.ndarray | list) -> np.ndarray:
    """Validate and return points as float64 (N, 2); an empty input gives (0, 2)."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), found {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points contain NaN or infinity")
    return p


def kernel_sigmas(
    points: np.ndarray,
    head_sizes: np.ndarray | None = None,
    rule: SigmaRule = DEFAULT_RULE,
) -> np.ndarray:
    """Per-point Gaussian sigma in pixels, float64 (N,).

    Head sizes that are NaN or <= 0 count as unknown for that point, which then
    falls back to the geometry-adaptive rule.
    """
    p = as_points(points)
    n = len(p)
    sig = np.full(n, rule.lone_sigma, dtype=np.float64)
    known = np.zeros(n, dtype=bool)
    if head_sizes is not None:
        hs = np.asarray(head_sizes, dtype=np.float64).reshape(-1)
        if hs.shape != (n,):
            raise ValueError(f"head_sizes must have shape ({n},), found {np.shape(head_sizes)}")
        known = np.isfinite(hs) & (hs > 0)
        sig[known] = rule.head_factor * hs[known]
    need = ~known
    if n >= 2 and need.any():
        k = min(rule.k, n - 1)
        # k + 1 because the nearest neighbour of each point is itself.
        dist, _ = cKDTree(p).query(p[need], k=k + 1)
        sig[need] = rule.beta * dist[:, 1:].mean(axis=1)
    return np.clip(sig, rule.min_sigma, rule.max_sigma)


def _cell_mass(centres: np.ndarray, sigmas: np.ndarray, first: int, last: int, stride: int) -> np.ndarray:
    """Mass of N 1-D Gaussians in cells ``first..last-1``, each row normalised to 1.

    Rows are renormalised over exactly these cells; callers choose the range
    inside the image and wide enough (TRUNCATE sigma) for every point.
    """
    edges = np.arange(first, last + 1, dtype=np.float64) * stride
    z = (edges[None, :] - centres[:, None]) / (np.sqrt(2.0) * sigmas[:, None])
    mass = np.diff(erf(z), axis=1)  # 2 * (Phi(b) - Phi(a)); the factor 2 goes away below
    total = mass.sum(axis=1, keepdims=True)
    # A point inside the image always has >= ~half its mass in its own cell, so
    # total > 0; the guard only protects against pathological inputs.
    return mass / np.where(total > 0, total, 1.0)


def density_map(
    points: np.ndarray,
    image_hw: tuple[int, int],
    head_sizes: np.ndarray | None = None,
    stride: int = STRIDE,
    *,
    sigmas: np.ndarray | None = None,
    rule: SigmaRule = DEFAULT_RULE,
) -> DensityResult:
    """Density map of ``points`` for an image of ``image_hw`` = (H, W) pixels.

    ``sigmas`` (pixels, one per point) overrides the sigma rule; augmentation
    passes sigmas computed once on the full image and rescaled, so that
    neighbours cut off by a crop do not change a point's kernel. They are still
    clipped to the rule's range.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if stride < 1 or h <= 0 or w <= 0 or h % stride or w % stride:
        raise ValueError(f"image size {h}x{w} (HxW) must be positive multiples of stride {stride}")
    p = as_points(points)
    if sigmas is None:
        sig = kernel_sigmas(p, head_sizes, rule)
    else:
        sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if sig.shape != (len(p),) or not np.isfinite(sig).all():
            raise ValueError(f"sigmas must be {len(p)} finite values, found shape {np.shape(sigmas)}")
        sig = np.clip(sig, rule.min_sigma, rule.max_sigma)

    inside = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
    p, sig = p[inside], sig[inside]
    hc, wc = h // stride, w // stride
    out = np.zeros((hc, wc), dtype=np.float64)

    order = np.argsort(p[:, 1], kind="stable")  # group by y: each group touches a band of rows
    for start in range(0, len(order), GROUP):
        idx = order[start : start + GROUP]
        gp, gs = p[idx], sig[idx]
        reach = TRUNCATE * gs
        y0 = max(0, int(np.floor((gp[:, 1] - reach).min() / stride)))
        y1 = min(hc, int(np.ceil((gp[:, 1] + reach).max() / stride)) + 1)
        x0 = max(0, int(np.floor((gp[:, 0] - reach).min() / stride)))
        x1 = min(wc, int(np.ceil((gp[:, 0] + reach).max() / stride)) + 1)
        ay = _cell_mass(gp[:, 1], gs, y0, y1, stride)
        ax = _cell_mass(gp[:, 0], gs, x0, x1, stride)
        out[y0:y1, x0:x1] += ay.T @ ax
    return DensityResult(density=out.astype(np.float32), outside=int((~inside).sum()))
