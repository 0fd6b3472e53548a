"""Pinhole camera over a flat ground plane.

World frame (metres): X to the right, Y forward along the ground, Z up; the
ground is z = 0 and the camera sits at (0, 0, height_m) looking along +Y,
pitched down by ``tilt_deg`` and rolled by ``roll_deg``. Pixel coordinates
follow OpenCV drawing: integer coordinates are pixel centres, x to the right,
y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# Nominal adult size used to keep sampled cameras in a useful range.
_REF_PERSON_M = 1.7


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    height_m: float
    tilt_deg: float
    focal_px: float
    roll_deg: float = 0.0
    cx: float = field(default=float("nan"))
    cy: float = field(default=float("nan"))

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, found {self.width}x{self.height}")
        if self.height_m <= 0 or self.focal_px <= 0:
            raise ValueError("camera height_m and focal_px must be positive")
        # Principal point defaults to the image centre (pixel-centre convention).
        if math.isnan(self.cx):
            object.__setattr__(self, "cx", (self.width - 1) / 2.0)
        if math.isnan(self.cy):
            object.__setattr__(self, "cy", (self.height - 1) / 2.0)

    # -- intrinsics / extrinsics -------------------------------------------------
    @cached_property
    def K(self) -> np.ndarray:
        return np.array([[self.focal_px, 0.0, self.cx], [0.0, self.focal_px, self.cy], [0.0, 0.0, 1.0]])

    @cached_property
    def R(self) -> np.ndarray:
        """World-to-camera rotation; rows are the camera x (right), y (down), z (forward) axes."""
        t = math.radians(self.tilt_deg)
        fwd = np.array([0.0, math.cos(t), -math.sin(t)])
        right = np.array([1.0, 0.0, 0.0])
        down = np.cross(fwd, right)
        r = math.radians(self.roll_deg)
        c, s = math.cos(r), math.sin(r)
        # Roll turns the image plane axes about the optical axis.
        x_axis = c * right + s * down
        y_axis = -s * right + c * down
        return np.stack([x_axis, y_axis, fwd])

    @cached_property
    def center(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.height_m])

    # -- projection --------------------------------------------------------------
    def to_camera(self, world_xyz: np.ndarray) -> np.ndarray:
        p = np.asarray(world_xyz, dtype=np.float64).reshape(-1, 3)
        return (p - self.center) @ self.R.T

    def project(self, world_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) in metres -> (pixels (N, 2), depth along the optical axis (N,)).

        Points behind the camera get depth <= 0 and meaningless pixels; callers filter on depth.
        """
        pc = self.to_camera(world_xyz)
        z = pc[:, 2]
        zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
        uv = np.empty((len(pc), 2))
        uv[:, 0] = self.focal_px * pc[:, 0] / zs + self.cx
        uv[:, 1] = self.focal_px * pc[:, 1] / zs + self.cy
        return uv, z

    def ground_to_image(self) -> np.ndarray:
        """3x3 homography mapping ground metres (X, Y, 1) to pixels."""
        R = self.R
        t = -R @ self.center
        H = self.K @ np.column_stack([R[:, 0], R[:, 1], t])
        return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H

    def image_to_ground(self) -> np.ndarray:
        """3x3 homography mapping pixels (x, y, 1) to ground metres (X, Y) on z = 0.

        Valid for pixels below the horizon; above it the mapped w is negative.
        """
        Hinv = np.linalg.inv(self.ground_to_image())
        return Hinv / Hinv[2, 2] if abs(Hinv[2, 2]) > 1e-12 else Hinv

    # -- rays ----------------------------------------------------------------------
    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit world-frame ray directions through pixels (u, v); shape (..., 3)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        dc = np.stack([(u - self.cx) / self.focal_px, (v - self.cy) / self.focal_px, np.ones(np.broadcast(u, v).shape)], -1)
        d = dc @ self.R  # camera -> world is R^T, applied to row vectors as d @ R
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def pixel_to_ground(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) -> ground metres (N, 2); NaN for pixels at or above the horizon."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        d = self.rays(uv[:, 0], uv[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d[:, 2] < -1e-9, -self.height_m / d[:, 2], np.nan)
        return np.column_stack([t * d[:, 0], t * d[:, 1]])

    def person_height_px(self, ground_xy: np.ndarray, height_m: float = _REF_PERSON_M) -> np.ndarray:
        """Projected height in pixels of an upright person standing at ground points (N, 2)."""
        g = np.asarray(ground_xy, dtype=np.float64).reshape(-1, 2)
        feet = np.column_stack([g, np.zeros(len(g))])
        head = np.column_stack([g, np.full(len(g), height_m)])
        uf, _ = self.project(feet)
        uh, _ = self.project(head)
        return np.linalg.norm(uf - uh, axis=1)

    def to_dict(self) -> dict[str, float]:
        return {
            "width": self.width,
            "height": self.height,
            "height_m": round(self.height_m, 6),
            "tilt_deg": round(self.tilt_deg, 6),
            "focal_px": round(self.focal_px, 6),
            "roll_deg": round(self.roll_deg, 6),
            "cx": round(self.cx, 6),
            "cy": round(self.cy, 6),
        }


def _row_person_px(cam: Camera, v: float) -> float:
    g = cam.pixel_to_ground(np.array([[cam.cx, v]]))
    if not np.isfinite(g).all() or g[0, 1] <= 0.3:
        return float("nan")
    return float(cam.person_height_px(g)[0])


def sample_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    """A random elevated surveillance-style camera.

    Heights 2.5-25 m, tilts 12-65 degrees, horizontal FOV 35-85 degrees, a little roll.
    Draws are rejected until an adult near the bottom edge is 8-42 % of the image
    height and one at the image centre is 2.5-22 % of it, which spans ShanghaiTech B
    street photos and fixed pedestrian cameras such as PETS2009.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image too small for a camera: {width}x{height}")
    cam = None
    for _ in range(200):
        height_m = float(np.exp(rng.uniform(np.log(2.5), np.log(25.0))))
        tilt = float(rng.uniform(12.0, 65.0))
        hfov = math.radians(rng.uniform(35.0, 85.0))
        focal = (width / 2.0) / math.tan(hfov / 2.0)
        roll = float(np.clip(rng.normal(0.0, 1.2), -4.0, 4.0))
        cam = Camera(width, height, height_m, tilt, focal, roll)
        bottom = _row_person_px(cam, height - 1) / height
        middle = _row_person_px(cam, cam.cy) / height
        if 0.08 <= bottom <= 0.42 and 0.025 <= middle <= 0.22:
            return cam
    assert cam is not None
    return cam  # practically unreachable; the last draw is still a valid camera
