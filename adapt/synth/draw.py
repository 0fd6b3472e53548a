"""Anti-aliased 2D drawing of projected 3D primitives with OpenCV.

Objects are described as short lists of image-space primitives (filled
convex polygons, thick lines with round caps, discs), each with a camera depth
so an object can sort its own parts. Drawing uses 4 fractional bits (cv2
``shift``) so sub-pixel positions stay smooth, and cv2.LINE_AA for soft edges;
people (people.py) use the same conventions in a faster batched form.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4
_ONE = 1 << SHIFT
Color = tuple[float, float, float]


@dataclass(slots=True)
class Prim:
    kind: str  # "poly" | "line" | "disc" | "ring"
    pts: np.ndarray  # poly: (k, 2); line: (2, 2); disc: (1, 2); ring: (k, 2) closed outline
    size: float  # line or ring thickness, or disc radius, in pixels (unused for poly)
    color: Color
    depth: float


def _fx(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32)


def draw_prim(img: np.ndarray, p: Prim, offset: tuple[float, float] = (0.0, 0.0), aa: bool = True) -> None:
    """Draw one primitive into img (H, W, C), shifted by -offset (for drawing into a crop)."""
    lt = cv2.LINE_AA if aa else cv2.LINE_8
    pts = p.pts if offset == (0.0, 0.0) else p.pts - np.asarray(offset)
    if p.kind == "poly":
        q = _fx(pts)
        if len(q) > 4:
            q = cv2.convexHull(q)
        cv2.fillConvexPoly(img, q, p.color, lt, SHIFT)
    elif p.kind == "line":
        q = _fx(pts)
        cv2.line(img, (int(q[0, 0]), int(q[0, 1])), (int(q[1, 0]), int(q[1, 1])), p.color,
                 max(1, int(round(p.size))), lt, SHIFT)
    elif p.kind == "ring":
        cv2.polylines(img, [_fx(pts)], True, p.color, max(1, int(round(p.size))), lt, SHIFT)
    else:
        q = _fx(pts[0])
        cv2.circle(img, (int(q[0]), int(q[1])), max(int(round(p.size * _ONE)), 1), p.color, -1, lt, SHIFT)


def prims_bbox(prims: list[Prim], pad: float = 2.0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) covering all primitives including their thickness."""
    x0 = y0 = np.inf
    x1 = y1 = -np.inf
    for p in prims:
        r = p.size if p.kind == "disc" else (p.size / 2 if p.kind in ("line", "ring") else 0.0)
        x0 = min(x0, float(p.pts[:, 0].min()) - r)
        y0 = min(y0, float(p.pts[:, 1].min()) - r)
        x1 = max(x1, float(p.pts[:, 0].max()) + r)
        y1 = max(y1, float(p.pts[:, 1].max()) + r)
    return x0 - pad, y0 - pad, x1 + pad, y1 + pad


# -- 3D helpers -------------------------------------------------------------------

# faces of a box whose 8 corners are ordered (bottom 0-3, top 4-7), each ring counter-clockwise seen from above
BOX_FACES = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7], [4, 5, 6, 7], [0, 3, 2, 1]])


def box_corners(cx: float, cy: float, z0: float, z1: float, yaw: float, length: float, width: float,
                top_scale: float = 1.0, top_width_scale: float | None = None) -> np.ndarray:
    """8 world corners of an oriented box (optionally tapered at the top, across its width separately) standing on z0."""
    c, s = np.cos(yaw), np.sin(yaw)
    fwd = np.array([c, s])
    left = np.array([-s, c])
    base = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], float)
    out = np.empty((8, 3))
    for k, (a, b) in enumerate(base):
        xy = np.array([cx, cy]) + fwd * a * length / 2 + left * b * width / 2
        out[k] = (*xy, z0)
        tw = top_scale if top_width_scale is None else top_width_scale
        xy_t = np.array([cx, cy]) + fwd * a * length / 2 * top_scale + left * b * width / 2 * tw
        out[k + 4] = (*xy_t, z1)
    return out


def box_face_normals(corners: np.ndarray) -> np.ndarray:
    """Outward unit normals of the six BOX_FACES."""
    centre = corners.mean(0)
    n = np.empty((6, 3))
    for k, f in enumerate(BOX_FACES):
        p = corners[f]
        v = np.cross(p[1] - p[0], p[3] - p[0])
        if np.dot(v, p.mean(0) - centre) < 0:
            v = -v
        n[k] = v / (np.linalg.norm(v) + 1e-12)
    return n

