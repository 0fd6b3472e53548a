"""Buildings and walls: vertical planes of facades that close off the view.

Outdoors a row of buildings stands behind the crowd (with a far skyline when
the horizon is in view) and sometimes a side street; indoors, walls rise to a
ceiling just above the camera. Walls follow the street grid and are rejected
when they would fill the frame or hide most of the ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import Camera
from .facades import FacadeBlocks, sample_facade_blocks
from .styles import Look, Style


@dataclass(eq=False)
class Facade:
    """A vertical plane of buildings along the segment p0 -> p1 (ground metres)."""

    p0: np.ndarray
    p1: np.ndarray
    blocks: FacadeBlocks

    @property
    def direction(self) -> np.ndarray:
        d = self.p1 - self.p0
        return d / np.linalg.norm(d)

    @property
    def normal(self) -> np.ndarray:
        """Horizontal unit normal pointing to the camera's side (the camera is at the origin)."""
        d = self.direction
        n = np.array([-d[1], d[0]])
        return n if np.dot(n, -self.p0) > 0 else -n

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Metres in front of the facade (positive on the camera's side)."""
        n = self.normal
        return (x - self.p0[0]) * n[0] + (y - self.p0[1]) * n[1]


def make_facade(rng: np.random.Generator, centre: np.ndarray, yaw: float, half_len: float, heights, blocks, lit: float,
            interior: bool = False) -> Facade:
    d = np.array([math.cos(yaw), math.sin(yaw)])
    fb = sample_facade_blocks(rng, 2 * half_len, heights, blocks, lit, interior)
    return Facade(centre - d * half_len, centre + d * half_len, fb)


def coverage(cam: Camera, facades: list[Facade], grid: int = 40) -> tuple[float, np.ndarray]:
    """(fraction of a coarse pixel grid that sees the ground, fraction that sees each facade)."""
    uu, vv = np.meshgrid(np.linspace(0, cam.width - 1, grid), np.linspace(0, cam.height - 1, int(grid * 0.75)))
    d = cam.rays(uu.ravel(), vv.ravel())
    C = cam.center
    with np.errstate(divide="ignore", invalid="ignore"):
        t_best = np.where(d[:, 2] < -1e-6, C[2] / -d[:, 2], np.inf)
        surf = np.where(np.isfinite(t_best), 0, -1)
        for k, fac in enumerate(facades):
            t, _, inside = facade_hits(fac, C, d, t_best)
            t_best = np.where(inside, t, t_best)
            surf[inside] = k + 1
    return float((surf == 0).mean()), np.array([(surf == k + 1).mean() for k in range(len(facades))])


def sample_walls(rng: np.random.Generator, cam: Camera, style: Style, look: Look, near_m: float, far_m: float,
                 reach_m: float, angle: float) -> tuple[list[Facade], float | None]:
    """Walls for a crowd between near_m and far_m (ground Y) and up to reach_m sideways; and a ceiling height indoors."""
    facades: list[Facade] = []
    lit = float(rng.uniform(0.2, 0.6)) if look.lamps_on and style.outdoor else 0.0
    # walls follow the street grid: parallel or perpendicular to the street axis, whichever faces the camera
    yaw = angle % (math.pi / 2)
    if yaw > math.pi / 4:
        yaw -= math.pi / 2
    span = far_m - near_m
    horizon_visible = np.isnan(cam.pixel_to_ground(np.array([[cam.cx, 0.0]]))).any()
    ground0, _ = coverage(cam, [])
    max_wall = 0.3 if style.outdoor else 0.45

    def try_add(make, tries: int = 4) -> None:
        # a wall must not fill the frame nor hide most of the ground the crowd stands on
        for _ in range(tries):
            f = make()
            ground, cover = coverage(cam, facades + [f])
            if cover[-1] <= max_wall and ground >= 0.6 * ground0:
                facades.append(f)
                return

    if not style.outdoor:
        # a hall: walls up to a ceiling just above the camera, so no sky anywhere
        ceiling = cam.height_m + float(rng.uniform(0.4, 2.0))
        wall_h = (ceiling + 0.1, ceiling + 0.2)
        reach = reach_m
        try_add(lambda: make_facade(rng, np.array([0.0, near_m + span * rng.uniform(0.5, 1.1)]), yaw, 200.0, wall_h,
                                (6.0, 20.0), 0.0, True), 8)
        for side in (-1, 1):
            if rng.random() < 0.6:
                try_add(lambda side=side: make_facade(rng, np.array([side * rng.uniform(0.35, 0.9) * reach, far_m / 2]),
                                        yaw + math.pi / 2, 200.0, wall_h, (6.0, 20.0), 0.0, True))
        return facades, ceiling
    if horizon_visible or rng.random() < 0.45:
        lo, hi = (0.45, 1.15) if horizon_visible else (0.6, 1.3)
        try_add(lambda: make_facade(rng, np.array([0.0, near_m + span * rng.uniform(lo, hi)]), yaw, 300.0, (6.0, 45.0),
                                (8.0, 30.0), lit), 6)
        if horizon_visible:
            back = max([f.p0[1] for f in facades] + [far_m])
            # a distant skyline closes the horizon
            try_add(lambda: make_facade(rng, np.array([0.0, back + rng.uniform(60, 250)]), yaw, 900.0, (15.0, 90.0),
                                    (15.0, 60.0), lit * 0.5))
    if rng.random() < 0.3:
        side = rng.choice([-1, 1])
        reach = reach_m
        try_add(lambda: make_facade(rng, np.array([side * rng.uniform(0.5, 1.0) * reach, far_m / 2]), yaw + math.pi / 2,
                                300.0, (6.0, 35.0), (8.0, 25.0), lit))
    return facades, None


def facade_hits(fac: Facade, C: np.ndarray, d: np.ndarray, t_best: np.ndarray):
    """Ray hits on one facade: (t, (along-facade s, height z, block index), mask of nearest hits)."""
    nrm = fac.normal
    den = d[:, 0] * nrm[0] + d[:, 1] * nrm[1]
    num = (fac.p0[0] - C[0]) * nrm[0] + (fac.p0[1] - C[1]) * nrm[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(den < -1e-6, num / den, np.inf)
    tf = np.where(np.isfinite(t), t, 0.0)  # misses get a dummy hit; `inside` rejects them
    hx = C[0] + tf * d[:, 0]
    hy = C[1] + tf * d[:, 1]
    hz = C[2] + tf * d[:, 2]
    s = (hx - fac.p0[0]) * fac.direction[0] + (hy - fac.p0[1]) * fac.direction[1]
    blk = np.searchsorted(fac.blocks.edges, s) - 1
    inside = (blk >= 0) & (blk < len(fac.blocks.heights)) & np.isfinite(t)
    blk = np.clip(blk, 0, len(fac.blocks.heights) - 1)
    inside &= (hz >= 0) & (hz <= fac.blocks.heights[blk]) & (t < t_best)
    return t, (s, hz, blk), inside
