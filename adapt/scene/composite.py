"""Synthetic people on the camera's own empty scene: an exactly labelled source in its domain.

The renderer's people are drawn onto the empty-scene image with the sizes the
camera's fitted ground plane gives each row, standing where people were seen to
walk, with their sun and contact shadows, and the renderer's visibility rule
for labels. A render with nobody in it is the empty scene itself: a
zero-density sample that teaches the network this camera's windows, signs and
facades are not people.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from adapt.synth.camera import Camera
from adapt.synth.effects import EffectParams
from adapt.synth.people import make_person
from adapt.synth.render import Render, render
from adapt.synth.scene import Region, Scene
from adapt.synth.styles import get_style, sample_look
from adapt.synth.writers import write_shanghaitech_mat

MIN_SPACING_M = 0.5
COMPOSITE_VERSION = "crowdwatch-composite-1"


@dataclass(frozen=True, eq=False)
class WalkMap:
    """Where feet were seen: (h, w) cell weights at ``stride``, summing to 1."""

    weights: np.ndarray
    stride: int

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """k feet pixels (x, y), each uniform within a cell drawn by weight."""
        h, w = self.weights.shape
        idx = rng.choice(h * w, size=k, p=self.weights.ravel())
        cy, cx = np.divmod(idx, w)
        return np.column_stack([(cx + rng.random(k)) * self.stride, (cy + rng.random(k)) * self.stride])


def walk_map(feet: np.ndarray, shape: tuple[int, int], stride: int, horizon: float) -> WalkMap:
    """Feet pixels (N, 2) -> a smoothed cell map; the ground below the horizon when no one was seen."""
    H, W = shape
    h, w = H // stride, W // stride
    grid = np.zeros((h, w), np.float64)
    if len(feet):
        cx = np.clip((feet[:, 0] // stride).astype(int), 0, w - 1)
        cy = np.clip((feet[:, 1] // stride).astype(int), 0, h - 1)
        np.add.at(grid, (cy, cx), 1.0)
        # square root: a spot where someone lingered must not take every composite's people
        grid = cv2.GaussianBlur(np.sqrt(grid), (0, 0), 1.5)
    rows = (np.arange(h) + 0.5) * stride
    below = rows > horizon + 2 * stride
    if grid.sum() <= 0:
        grid[below] = 1.0
    grid[~below] = 0.0
    if grid.sum() <= 0:
        grid[h // 2:] = 1.0
    return WalkMap((grid / grid.sum()).astype(np.float64), stride)


def _mild_effects(rng: np.random.Generator, width: int, height: int, grayscale: bool) -> EffectParams:
    """Effects for a real background: it is already blurred, noisy and compressed once."""
    return EffectParams(width, height, blur_sigma=float(rng.uniform(0.3, 0.9)), motion_px=0.0, motion_angle=0.0,
                        noise_sigma=float(rng.uniform(0.0, 3.0)), chroma_noise=0.0 if grayscale else 0.2,
                        jpeg_quality=int(rng.integers(75, 96)), vignette=0.0, grayscale=grayscale)


def is_grayscale(image: np.ndarray) -> bool:
    """A night-IR or monochrome camera: its channels (almost) agree."""
    f = image.astype(np.int16)
    return float(np.abs(f[..., 0] - f[..., 1]).mean() + np.abs(f[..., 1] - f[..., 2]).mean()) < 4.0


def place_people(rng: np.random.Generator, cam: Camera, walk: WalkMap, n: int) -> list:
    """Up to n people with feet on the walk map, at least MIN_SPACING_M apart on the ground."""
    people, taken = [], []
    for _ in range(4):
        if len(people) >= n:
            break
        feet = walk.sample(rng, 2 * (n - len(people)) + 4)
        ground = cam.pixel_to_ground(feet)
        for gx, gy in ground:
            if len(people) >= n:
                break
            if not (math.isfinite(gx) and math.isfinite(gy)) or gy <= 0.3:
                continue
            if any((gx - x) ** 2 + (gy - y) ** 2 < MIN_SPACING_M ** 2 for x, y in taken):
                continue
            taken.append((gx, gy))
            people.append(make_person(rng, gx, gy))
    return people


def composite(rng: np.random.Generator, empty: np.ndarray, cam: Camera, walk: WalkMap, n: int, style: str = "overcast") -> Render:
    """One frame of n synthetic people on the empty scene (exact head labels)."""
    H, W = empty.shape[:2]
    gray = is_grayscale(empty)
    style_obj = get_style("night_ir" if gray else style)
    look = sample_look(rng, style_obj)
    scene = Scene(cam, style_obj, look, None, [], [], empty, np.ones((H, W), np.float32), [],
                  _mild_effects(rng, W, H, gray), Region(-50.0, 50.0, 0.3, 200.0))
    return render(scene, place_people(rng, cam, walk, n), rng)


def write_composites(out: Path, empties: list[np.ndarray], cam: Camera, walk: WalkMap, n: int, max_people: int,
                     seed: int, empty_share: float = 0.1) -> dict:
    """n composites in the ShanghaiTech layout (images/, ground-truth/) plus meta.json; a share of them empty."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "ground-truth").mkdir(exist_ok=True)
    counts = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        empty = empties[i % len(empties)]
        k = 0 if rng.random() < empty_share else int(rng.integers(1, max_people + 1))
        r = composite(rng, empty, cam, walk, k)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(r.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for composite {i}")
        (out / "images" / f"IMG_{i}.jpg").write_bytes(buf.tobytes())
        write_shanghaitech_mat(out / "ground-truth" / f"GT_IMG_{i}.mat", r.points, r.head_sizes)
        counts.append(r.count)
    meta = {"generator": COMPOSITE_VERSION, "n": n, "seed": seed, "max_people": max_people, "camera": cam.to_dict(),
            "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
