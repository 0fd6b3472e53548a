"""Who can be in view: the frame and head-size tests, and how many people a view holds.

A person counts when the head centre is inside the frame and the head is at
least the scene's ``min_head_px`` wide. A view holds as many people as fit
on its countable ground (or seats) at the minimum spacing; asking for more,
or for anyone at all where no head can be a pixel wide, is refused with a
message that says which limit was hit.
"""

from __future__ import annotations

import math

import numpy as np

from .camera import Camera
from .people import SEAT_FRAC, head_radius_m
from .scene import Scene

MIN_SPACING_M = 0.5  # centre to centre: at most HEX_DENSITY people per square metre, a packed crowd
HEX_DENSITY = 2.0 / (math.sqrt(3.0) * MIN_SPACING_M**2)  # hexagonal packing at the minimum spacing: 4.6 / m^2
_ADULT_M = 1.7
_SIT_DROP = 0.52 - SEAT_FRAC  # how much lower a seated head is, as a fraction of standing height


def view_flags(scene: Scene, x: np.ndarray, y: np.ndarray, h: np.ndarray, z: np.ndarray | float = 0.0,
               seated: np.ndarray | bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(head centre inside the frame, some of the body inside the frame) for people at (x, y) of height h
    standing (or seated) on a floor at height z. Both are False for anyone whose head would be narrower
    than the scene's ``min_head_px``: too small to count, such a person is never placed."""
    return in_view(scene.camera, scene.min_head_px, x, y, h, z, seated)


def in_view(cam: Camera, min_head_px: float, x: np.ndarray, y: np.ndarray, h: np.ndarray, z: np.ndarray | float = 0.0,
            seated: np.ndarray | bool = False) -> tuple[np.ndarray, np.ndarray]:
    """view_flags for a bare camera (before its scene is built)."""
    n = len(x)
    h = np.asarray(h, np.float64)
    rh = head_radius_m(h)
    z = np.broadcast_to(np.asarray(z, np.float64), (n,))
    top = z + h * (1.0 - _SIT_DROP * np.asarray(seated, np.float64)) - rh
    uv, dep = cam.project(np.concatenate([np.column_stack([x, y, top]), np.column_stack([x, y, z])]))
    head, feet = uv[:n], uv[n:]
    ok = (dep[:n] > 0.5) & (dep[n:] > 0.5)
    ok &= 2 * rh * cam.focal_px >= min_head_px * np.maximum(dep[:n], 1e-9)
    W, H = cam.width, cam.height
    head_in = ok & (head[:, 0] >= 0) & (head[:, 0] <= W - 1) & (head[:, 1] >= 0) & (head[:, 1] <= H - 1)
    half_w = 0.25 * np.abs(feet[:, 1] - head[:, 1]) + 1
    body_in = ok & (np.maximum(head[:, 0], feet[:, 0]) + half_w >= 0) & (np.minimum(head[:, 0], feet[:, 0]) - half_w <= W - 1) \
        & (np.maximum(head[:, 1], feet[:, 1]) >= 0) & (np.minimum(head[:, 1], feet[:, 1]) <= H - 1)
    return head_in, body_in | head_in


def view_area(cam: Camera, min_head_px: float, grid: int = 32, max_ground_m: float = math.inf) -> float:
    """Square metres of ground (no walls or objects), nearer than max_ground_m, where an adult's head is in
    the frame and countable: the ground under a grid of image cells, each mapped through the plane at head
    height."""
    rh = float(head_radius_m(_ADULT_M))
    zc = _ADULT_M - rh
    gw, gh = grid, max(4, round(grid * cam.height / cam.width))
    uu, vv = np.meshgrid(np.linspace(-0.5, cam.width - 0.5, gw + 1), np.linspace(-0.5, cam.height - 0.5, gh + 1))
    d = cam.rays(uu.ravel(), vv.ravel())
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (zc - cam.height_m) / d[:, 2]
    ok = np.isfinite(t) & (t > 0)
    p = (t[:, None] * d[:, :2]).reshape(gh + 1, gw + 1, 2)
    depth = (t * (d @ cam.R[2])).reshape(gh + 1, gw + 1)
    ok = ok.reshape(gh + 1, gw + 1) & (depth > 0.5)
    ok = ok[:-1, :-1] & ok[1:, :-1] & ok[:-1, 1:] & ok[1:, 1:]
    a, b, c, e = p[:-1, :-1], p[:-1, 1:], p[1:, 1:], p[1:, :-1]
    quad = 0.5 * np.abs((a[..., 0] - c[..., 0]) * (b[..., 1] - e[..., 1]) - (b[..., 0] - e[..., 0]) * (a[..., 1] - c[..., 1]))
    far = np.maximum(np.maximum(depth[:-1, :-1], depth[1:, :-1]), np.maximum(depth[:-1, 1:], depth[1:, 1:]))
    ok &= 2 * rh * cam.focal_px >= min_head_px * far
    centre = 0.25 * (a + b + c + e)
    ok &= np.hypot(centre[..., 0], centre[..., 1]) <= max_ground_m
    return float(np.where(ok, quad, 0.0).sum())


def largest_head_px(cam: Camera) -> float:
    """The widest an adult's head gets anywhere in the frame, standing at least a metre in front of the lens."""
    uu, vv = np.meshgrid(np.linspace(0, cam.width - 1, 17), np.linspace(0, cam.height - 1, 13))
    d = cam.rays(uu.ravel(), vv.ravel())
    rh = float(head_radius_m(_ADULT_M))
    zc = _ADULT_M - rh - cam.height_m
    with np.errstate(divide="ignore", invalid="ignore"):
        t = zc / d[:, 2]
    depth = t * (d @ cam.R[2])
    ground = np.hypot(t * d[:, 0], t * d[:, 1])
    ok = np.isfinite(t) & (t > 0) & (ground >= 1.0) & (depth > 0.5)
    return float((2 * rh * cam.focal_px / depth[ok]).max()) if ok.any() else 0.0


def ground_grid(scene: Scene, k: int = 160) -> tuple[np.ndarray, np.ndarray, float]:
    """(x, y, cell area in m^2) of a k x k grid over the scene's crowd region."""
    r = scene.region
    xs = np.linspace(r.x0, r.x1, k + 1)
    ys = np.linspace(r.y0, r.y1, k + 1)
    xc, yc = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    xx, yy = np.meshgrid(xc, yc)
    return xx.ravel(), yy.ravel(), float((xs[1] - xs[0]) * (ys[1] - ys[0]))


def countable_area(scene: Scene) -> float:
    """Square metres of walkable ground where an adult's head is in the frame and countable."""
    x, y, cell = ground_grid(scene)
    head_in, _ = view_flags(scene, x, y, np.full(len(x), _ADULT_M))
    return float((head_in & scene.walkable(x, y)).sum() * cell)


def countable_seats(scene: Scene) -> int:
    """Seats of the scene's stands whose seated adult's head would be in the frame and countable."""
    total = 0
    for st in scene.stands:
        x, y, z = st.seats()
        head_in, _ = view_flags(scene, x, y, np.full(len(x), _ADULT_M), z, True)
        total += int(head_in.sum())
    return total


def capacity(scene: Scene) -> int:
    """The most people whose heads can be in view: every countable seat, or hexagonal packing at the
    minimum spacing over the countable ground."""
    if scene.stands:
        return countable_seats(scene)
    return int(countable_area(scene) * HEX_DENSITY)


def check_room(scene: Scene, n: int) -> None:
    """Refuse a crowd of n that this view cannot show: no head anywhere as wide as the scene's min_head_px,
    or no room for n."""
    if n <= 0:
        return
    cap = capacity(scene)
    if n <= cap:
        return
    cam = scene.camera
    if not scene.stands:
        big = largest_head_px(cam)
        if big < scene.min_head_px:
            raise ValueError(f"no head in this {cam.width}x{cam.height} view is {scene.min_head_px:g} px wide "
                             f"(the largest is {big:.2f} px): raise the image size or bring the camera closer")
    where = "countable seats" if scene.stands else f"countable ground at {MIN_SPACING_M} m spacing"
    raise ValueError(f"n = {n} people do not fit: this {cam.width}x{cam.height} view holds at most {cap} "
                     f"({where}, heads of at least {scene.min_head_px:g} px)")
