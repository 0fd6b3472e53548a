"""Frame rendering and head labels.

``render`` draws people and the scene's cached object sprites back to front
(painter's algorithm on camera depth) over the cached background, with the
people's sun and contact shadows, then applies the camera effects. While
drawing, a coarse id buffer records which person owns each pixel (head and
body separately, objects as 0); a head is labelled when its centre is inside
the frame and at least ``VISIBLE_FRACTION`` of the pixels it covered when drawn
still show it at the end, so heads hidden behind nearer people or objects are
not labelled while mostly visible ones are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .camera import Camera
from .crowd import LAYOUTS, sample_crowd
from .draw import SHIFT
from .effects import apply_effects
from .kinds import check_kind, sample_kind_scene, scene_size
from .people import FEET, HEAD, FigureBatch, Person
from .scene import Scene, apply_shadow_mask
from .styles import get_style
from .view import capacity

RENDERER_VERSION = "crowdwatch-synth-3"
VISIBLE_FRACTION = 0.5
_LAYOUT_WEIGHTS = {"mixed": 0.4, "uniform": 0.2, "clustered": 0.2, "flow": 0.15, "queue": 0.05}


@dataclass(eq=False)
class Render:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    points: np.ndarray  # (K, 2) float32 head centres (x, y) in pixels
    head_sizes: np.ndarray  # (K,) float32 projected head diameters in pixels
    person_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (K,) index into the people list
    style: str = ""
    camera: Camera | None = None

    @property
    def count(self) -> int:
        return int(len(self.points))


def _fx(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * (1 << SHIFT)).astype(np.int32)


def _people_shadows(scene: Scene, people: list[Person]) -> np.ndarray | None:
    """uint8 coverage of the people's sun shadows and contact shadows on the ground."""
    look, cam = scene.look, scene.camera
    people = [p for p in people if p.z == 0.0]  # people on stands shade the steps, not the ground: not modelled
    if look.style.thermal or not people:
        return None
    n = len(people)
    mask = np.zeros((cam.height, cam.width), np.uint8)
    feet = np.array([[p.x, p.y] for p in people])
    H = np.array([p.height_m for p in people])
    sun = look.sun_dir
    polys = []
    if look.shadow_strength > 0.02 and sun[2] > 0.05 and look.sun_rgb.max() > 0.05:
        az = -sun[:2] / (np.linalg.norm(sun[:2]) + 1e-9)
        perp = np.array([-az[1], az[0]])
        L = np.minimum(H * np.linalg.norm(sun[:2]) / sun[2], 3.5 * H)[:, None]
        w = 0.2 * H[:, None] / 1.7
        polys.append(np.stack([feet + perp * w, feet + az * L * 0.75 + perp * w * 1.1, feet + az * L + perp * w * 0.45,
                               feet + az * L - perp * w * 0.45, feet + az * L * 0.75 - perp * w * 1.1, feet - perp * w], 1))
    t = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = np.stack([np.cos(t), np.sin(t)], 1)
    contact = feet[:, None, :] + ring[None] * (0.3 * H[:, None, None] / 1.7)
    for level, arr in ((255, polys[0] if polys else None), (110, contact)):
        if arr is None:
            continue
        k = arr.shape[1]
        uv, dep = cam.project(np.concatenate([arr.reshape(-1, 2), np.zeros((n * k, 1))], 1))
        uv = _fx(uv).reshape(n, k, 2)
        ok = (dep.reshape(n, k) > 0.3).all(1)
        for i in np.nonzero(ok)[0]:
            cv2.fillConvexPoly(mask, cv2.convexHull(uv[i]), level, cv2.LINE_AA, SHIFT)
    return mask


def render(scene: Scene, people: list[Person], rng: np.random.Generator) -> Render:
    """Draw one frame of `people` in `scene` (the scene itself is never re-sampled)."""
    cam, look = scene.camera, scene.look
    img = scene.background.copy()
    figs = FigureBatch(cam, look, people)
    drawable = _drawable(figs, cam.width, cam.height)
    idx = np.nonzero(drawable)[0]
    mask = _people_shadows(scene, [people[i] for i in idx]) if len(idx) else None
    if mask is not None:
        # shadows fall on the ground under everyone; darker under a stronger sun
        strength = max(look.shadow_strength, 0.25)
        apply_shadow_mask(img, mask, scene.ground_mask, strength, blur=0.8)
    keep = _paint(scene, figs, idx, drawable, img)
    pts = figs.uv[keep, HEAD].astype(np.float32) if len(keep) else np.zeros((0, 2), np.float32)
    sizes = figs.head_diam_px[keep].astype(np.float32) if len(keep) else np.zeros(0, np.float32)
    out = apply_effects(img, scene.effects, rng)
    return Render(out, pts.reshape(-1, 2), sizes, keep.astype(np.int64), scene.style.name, cam)


def labelled_people(scene: Scene, people: list[Person]) -> np.ndarray:
    """Indices of the people whose heads `render` would label: the id buffer alone, no pixels drawn."""
    figs = FigureBatch(scene.camera, scene.look, people, ids_only=True)
    drawable = _drawable(figs, scene.width, scene.height)
    return _paint(scene, figs, np.nonzero(drawable)[0], drawable, None)


def _drawable(figs: FigureBatch, W: int, H: int) -> np.ndarray:
    """Who is drawable at all: in front of the camera and overlapping the frame."""
    n = figs.n
    if n > 32000:
        raise ValueError(f"too many people for one frame: {n}")
    if not n:
        return np.zeros(0, bool)
    lo = figs.uv.min(1) - figs.head_diam_px[:, None]
    hi = figs.uv.max(1) + figs.head_diam_px[:, None]
    return (figs.depth.min(1) > 0.3) & (hi[:, 0] >= 0) & (lo[:, 0] < W) & (hi[:, 1] >= 0) & (lo[:, 1] < H)


def _paint(scene: Scene, figs: FigureBatch, idx: np.ndarray, drawable: np.ndarray, img: np.ndarray | None) -> np.ndarray:
    """Draw people `idx` and the sprites back to front into img (if given) and the id buffer; returns the
    indices of the labelled people: head centre in the frame and mostly unoccluded."""
    W, H, n = scene.width, scene.height, figs.n
    order = [(float(figs.depth[i, FEET]), 0, int(i)) for i in idx] + [(s.depth, 1, j) for j, s in enumerate(scene.sprites)]
    order.sort(key=lambda t: -t[0])
    ids = np.zeros((H, W), np.uint16)
    head_area = np.zeros(n, np.int64)
    for _, kind, j in order:
        if kind == 1:
            s = scene.sprites[j]
            if img is not None:
                s.composite(img)
            h, w = s.solid.shape
            ids[s.y0:s.y0 + h, s.x0:s.x0 + w][s.solid] = 0
            continue
        if img is not None:
            figs.draw(img, j)
        head_area[j] = figs.draw_ids(ids, j)
    if not len(idx):
        return np.zeros(0, np.int64)
    counts = np.bincount(ids.ravel(), minlength=2 * n + 2)
    head_px = counts[1:2 * n + 1:2]
    hu = figs.uv[:, HEAD]
    inside = (hu[:, 0] >= 0) & (hu[:, 0] <= W - 1) & (hu[:, 1] >= 0) & (hu[:, 1] <= H - 1)
    vis = drawable & inside & (head_area > 0) & (head_px >= VISIBLE_FRACTION * np.maximum(head_area, 1))
    return np.nonzero(vis)[0]


def pick_layout(rng: np.random.Generator) -> str:
    names = list(_LAYOUT_WEIGHTS)
    w = np.array([_LAYOUT_WEIGHTS[k] for k in names])
    return names[int(np.searchsorted(np.cumsum(w) / w.sum(), rng.random(), side="right"))]


def render_sample(seed: int, width: int, height: int, style: str, count_range: tuple[int, int], kind: str = "street",
                  empty: bool = False) -> Render:
    """One labelled sample, fully determined by its arguments: new scene, crowd and effects.

    The crowd size is drawn from count_range and the scene of `kind` is chosen to hold it; an `empty`
    sample keeps that scene and leaves everybody out (a hard negative with zero labels)."""
    lo, hi = int(count_range[0]), int(count_range[1])
    if lo < 0 or hi < lo:
        raise ValueError(f"count range must satisfy 0 <= lo <= hi, found {count_range}")
    get_style(style)
    check_kind(kind)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(lo, hi + 1))
    scene = sample_kind_scene(rng, width, height, style, kind, scene_size(kind, n))
    if empty or n == 0:
        return render(scene, [], rng)
    if kind == "street":
        layout = pick_layout(rng)
        assert layout in LAYOUTS
        return render(scene, sample_crowd(rng, scene, n, layout), rng)
    return render(scene, dense_crowd(rng, scene, n, "packed" if kind == "packed" else "seated"), rng)


def dense_crowd(rng: np.random.Generator, scene: Scene, n: int, layout: str) -> list[Person]:
    """A packed or seated crowd with about n labelled heads: placed, placed again once with more people
    where occlusion hid more than that (as far as the view holds them), then visible people taken out at
    random until n are labelled (taking one out can uncover another, so the count may end a little above n)."""
    cap = capacity(scene)
    place = min(n, cap)
    people = sample_crowd(rng, scene, place, layout)
    seen = labelled_people(scene, people)
    if len(seen) < n and place < cap:
        place = min(cap, math.ceil(place * n / max(len(seen), 1) * 1.03))
        people = sample_crowd(rng, scene, place, layout)
        seen = labelled_people(scene, people)
    if len(seen) > n:
        drop = set(rng.choice(seen, len(seen) - n, replace=False).tolist())
        people = [p for i, p in enumerate(people) if i not in drop]
    return people
