"""Static objects standing on the ground: cars, vans, lamp posts, sign poles,
bollards, trees, planters, benches, bins, pillars and kiosks.

Each object is a few 3D boxes, poles and spheres. Because the camera of a
scene never moves, an object is drawn once into an RGBA *sprite* (cached in
the Scene) and composited at render time in depth order with the people, so
it occludes people behind it and is occluded by people in front. Objects also
cast sun shadows, which are static and baked into the background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .camera import Camera
from .draw import BOX_FACES, Prim, box_corners, box_face_normals, draw_prim, prims_bbox
from .styles import Look
from .textures import hash2


@dataclass(eq=False)
class Part:
    """One 3D piece of an object: a box, a vertical/oblique pole (capsule) or a sphere."""

    kind: str  # box | pole | sphere | ring
    albedo: tuple[float, float, float]
    heat: float = 0.25  # thermal brightness
    corners: np.ndarray | None = None  # box: (8, 3)
    a: np.ndarray | None = None  # pole ends / sphere or ring centre
    b: np.ndarray | None = None  # ring: unit axis
    radius: float = 0.0
    emissive: float = 0.0  # glows (lamps at dusk): added light, not shaded
    tube: float = 0.0  # ring: thickness of the tyre (metres)
    text_seed: int = -1  # box: lettering on its side faces when >= 0 (signs, boards)


@dataclass(eq=False)
class Distractor:
    kind: str
    x: float
    y: float
    yaw: float
    footprint: tuple[float, float]  # half length, half width of the keep-out rectangle (metres)
    parts: list[Part] = field(default_factory=list)
    lamp: bool = False  # casts a pool of light when lamps are on

    def blocks(self, px: np.ndarray, py: np.ndarray, margin: float = 0.25) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dy = px - self.x, py - self.y
        a = c * dx + s * dy
        b = -s * dx + c * dy
        return (np.abs(a) <= self.footprint[0] + margin) & (np.abs(b) <= self.footprint[1] + margin)


# -- object models --------------------------------------------------------------------

_CAR_COLORS = [(0.9, 0.9, 0.9), (0.7, 0.71, 0.73), (0.08, 0.08, 0.09), (0.35, 0.36, 0.38), (0.6, 0.08, 0.08),
               (0.12, 0.2, 0.45), (0.15, 0.28, 0.2), (0.85, 0.75, 0.3)]
_GLASS = (0.1, 0.12, 0.15)


def pole_part(a, b, r, albedo, heat=0.2, emissive=0.0) -> Part:
    return Part("pole", albedo, heat, a=np.asarray(a, float), b=np.asarray(b, float), radius=r, emissive=emissive)


def box_part(cx, cy, z0, z1, yaw, l, w, albedo, heat=0.25, top=1.0, top_w=None, text_seed=-1) -> Part:
    return Part("box", albedo, heat, corners=box_corners(cx, cy, z0, z1, yaw, l, w, top, top_w), text_seed=text_seed)


def ring_part(centre, axis, r, tube, albedo, heat=0.3) -> Part:
    return Part("ring", albedo, heat, a=np.asarray(centre, float), b=np.asarray(axis, float), radius=r, tube=tube)


def make_car(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    van = rng.random() < 0.2
    L = rng.uniform(4.6, 5.4) if van else rng.uniform(3.9, 4.8)
    W = rng.uniform(1.7, 1.95)
    col = tuple(np.clip(np.array(_CAR_COLORS[rng.integers(len(_CAR_COLORS))]) * rng.uniform(0.9, 1.1), 0, 1))
    c, s = math.cos(yaw), math.sin(yaw)
    parts = []
    for sa in (-1, 1):
        for sb in (-1, 1):
            wx = x + c * sa * L * 0.33 - s * sb * W * 0.45
            wy = y + s * sa * L * 0.33 + c * sb * W * 0.45
            parts.append(Part("sphere", (0.05, 0.05, 0.05), 0.55, a=np.array([wx, wy, 0.32]), radius=0.32))
    if van:
        parts.append(box_part(x, y, 0.3, 1.95, yaw, L, W, col, 0.35, 0.96))
        parts.append(box_part(x + c * L * 0.38, y + s * L * 0.38, 1.0, 1.75, yaw, L * 0.2, W * 0.98, _GLASS, 0.3))
    else:
        parts.append(box_part(x, y, 0.28, 0.95, yaw, L, W, col, 0.4, 0.98))
        off = -0.06 * L
        parts.append(box_part(x + c * off, y + s * off, 0.95, rng.uniform(1.38, 1.5), yaw, L * 0.5, W * 0.92, _GLASS, 0.3, 0.82))
        parts.append(box_part(x + c * off, y + s * off, 1.36, 1.42, yaw, L * 0.36, W * 0.78, col, 0.3))
    return Distractor("car", x, y, yaw, (L / 2, W / 2), parts)


def make_lamp(rng: np.random.Generator, x: float, y: float, yaw: float, look: Look) -> Distractor:
    h = rng.uniform(4.0, 8.0)
    col = tuple(np.array([0.25, 0.26, 0.27]) * rng.uniform(0.6, 1.6))
    glow = 1.2 if look.lamps_on else 0.0
    arm = rng.uniform(0.3, 1.2)
    c, s = math.cos(yaw), math.sin(yaw)
    end = np.array([x + c * arm, y + s * arm, h])
    parts = [
        pole_part([x, y, 0], [x, y, h], rng.uniform(0.06, 0.1), col),
        pole_part([x, y, h], end, 0.04, col),
        pole_part(end, end - [0, 0, 0.25], 0.12, (0.85, 0.85, 0.8), 0.9 if look.lamps_on else 0.3, glow),
    ]
    return Distractor("lamp", x, y, yaw, (0.25, 0.25), parts, lamp=True)


def make_sign(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    h = rng.uniform(2.3, 3.4)
    col = [(0.1, 0.3, 0.7), (0.1, 0.45, 0.25), (0.8, 0.15, 0.1), (0.9, 0.9, 0.9)][rng.integers(4)]
    w = rng.uniform(0.4, 0.9)
    parts = [
        pole_part([x, y, 0], [x, y, h], 0.04, (0.5, 0.5, 0.52)),
        box_part(x, y, h - rng.uniform(0.4, 0.8), h, yaw, 0.05, w, col, 0.2, text_seed=int(rng.integers(1 << 20))),
    ]
    return Distractor("sign", x, y, yaw, (0.2, 0.2), parts)


def make_bollard(rng: np.random.Generator, x: float, y: float) -> Distractor:
    h = rng.uniform(0.6, 1.0)
    col = [(0.15, 0.15, 0.16), (0.55, 0.55, 0.56), (0.85, 0.7, 0.15)][rng.integers(3)]
    return Distractor("bollard", x, y, 0.0, (0.15, 0.15), [pole_part([x, y, 0], [x, y, h], rng.uniform(0.07, 0.13), col)])


def _canopy(rng: np.random.Generator, cx: float, cy: float, cz: float, R: float, n: int, green: np.ndarray) -> list[Part]:
    parts = []
    for _ in range(n):
        u = rng.normal(0, 1, 3)
        u /= np.linalg.norm(u) + 1e-9
        r = R * rng.uniform(0.3, 0.75)
        p = np.array([cx, cy, cz]) + u * (R - r) * np.array([1.0, 1.0, 0.8]) * rng.uniform(0.5, 1.0)
        col = tuple(np.clip(green * rng.uniform(0.75, 1.2), 0, 1))
        parts.append(Part("sphere", col, 0.18, a=p, radius=r))
    return parts


def make_tree(rng: np.random.Generator, x: float, y: float) -> Distractor:
    trunk_h = rng.uniform(1.8, 3.5)
    R = rng.uniform(1.2, 3.2)
    green = np.array([rng.uniform(0.12, 0.25), rng.uniform(0.28, 0.42), rng.uniform(0.08, 0.16)])
    parts = [pole_part([x, y, 0], [x, y, trunk_h + R * 0.5], rng.uniform(0.1, 0.2), (0.3, 0.24, 0.18), 0.2)]
    parts += _canopy(rng, x, y, trunk_h + R, R, int(rng.integers(7, 15)), green)
    return Distractor("tree", x, y, 0.0, (0.35, 0.35), parts)


def make_planter(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    L, W, h = rng.uniform(1.0, 3.5), rng.uniform(0.7, 1.4), rng.uniform(0.4, 0.9)
    col = [(0.6, 0.6, 0.58), (0.45, 0.32, 0.22), (0.3, 0.3, 0.32)][rng.integers(3)]
    green = np.array([rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.45), rng.uniform(0.08, 0.18)])
    parts = [box_part(x, y, 0.0, h, yaw, L, W, col, 0.22)]
    c, s = math.cos(yaw), math.sin(yaw)
    for _ in range(int(rng.integers(2, 6))):
        t = rng.uniform(-0.4, 0.4) * L
        r = rng.uniform(0.35, 0.6) * W
        parts.append(Part("sphere", tuple(np.clip(green * rng.uniform(0.8, 1.2), 0, 1)), 0.18,
                          a=np.array([x + c * t, y + s * t, h + r * 0.6]), radius=r))
    return Distractor("planter", x, y, yaw, (L / 2, W / 2), parts)


def make_bench(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    L = rng.uniform(1.4, 2.2)
    col = [(0.45, 0.3, 0.18), (0.2, 0.32, 0.22), (0.5, 0.5, 0.52)][rng.integers(3)]
    c, s = math.cos(yaw), math.sin(yaw)
    bx, by = x + s * 0.22, y - c * 0.22  # backrest behind the seat
    parts = [
        box_part(x, y, 0.42, 0.48, yaw, L, 0.45, col, 0.2),
        box_part(bx, by, 0.5, 0.85, yaw, L, 0.05, col, 0.2),
    ]
    for t in (-0.42, 0.42):
        lx, ly = x + c * t * L, y + s * t * L
        parts.append(pole_part([lx, ly, 0], [lx, ly, 0.42], 0.04, (0.15, 0.15, 0.15)))
    return Distractor("bench", x, y, yaw, (L / 2, 0.3), parts)


def make_bin(rng: np.random.Generator, x: float, y: float) -> Distractor:
    col = [(0.15, 0.3, 0.2), (0.3, 0.3, 0.32), (0.55, 0.45, 0.3), (0.1, 0.2, 0.45)][rng.integers(4)]
    return Distractor("bin", x, y, 0.0, (0.3, 0.3), [pole_part([x, y, 0], [x, y, 0.9], 0.25, col, 0.25)])


def make_pillar(rng: np.random.Generator, x: float, y: float, top: float) -> Distractor:
    w = rng.uniform(0.5, 1.1)
    col = tuple(np.array([0.82, 0.8, 0.76]) * rng.uniform(0.8, 1.05))
    return Distractor("pillar", x, y, 0.0, (w / 2, w / 2), [box_part(x, y, 0.0, top, 0.0, w, w, col, 0.3)])


def make_kiosk(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    L, W = rng.uniform(1.5, 3.0), rng.uniform(1.2, 2.0)
    col = tuple(np.clip(rng.uniform(0.2, 0.9, 3), 0, 1))
    parts = [box_part(x, y, 0.0, 1.1, yaw, L, W, (0.75, 0.74, 0.7), 0.3),
             box_part(x, y, 1.1, 2.3, yaw, L * 0.9, W * 0.9, (0.2, 0.2, 0.22), 0.3),
             box_part(x, y, 2.3, 2.6, yaw, L * 1.05, W * 1.05, col, 0.3)]
    return Distractor("kiosk", x, y, yaw, (L / 2, W / 2), parts)


# -- drawing --------------------------------------------------------------------------


def _shade(look: Look, part: Part, normal: np.ndarray | None, face_gain: float = 1.0) -> np.ndarray:
    """Linear radiance of a part (graded and fogged later, per sprite, in one batch)."""
    if look.style.thermal:
        v = part.heat * face_gain + part.emissive * 0.3
        return np.array([v, v, v])
    return np.asarray(part.albedo) * look.light(normal) * face_gain + part.emissive * np.array([1.0, 0.92, 0.7])


def part_prims(part: Part, cam: Camera, look: Look) -> list[Prim]:
    """Image-space primitives of one part (faces culled and shaded, spheres with a lit cap)."""
    out: list[Prim] = []
    if part.kind == "box":
        uv, d = cam.project(part.corners)
        if (d <= 0.2).any():
            return out
        normals = box_face_normals(part.corners)
        for k, face in enumerate(BOX_FACES):
            fc = part.corners[face].mean(0)
            if np.dot(normals[k], cam.center - fc) <= 0:
                continue
            out.append(Prim("poly", uv[face], 0.0, _shade(look, part, normals[k], 0.9 + 0.1 * k / 5),
                            float(d[face].mean())))
            if part.text_seed >= 0 and k < 4:
                ink = Part("box", (0.05, 0.05, 0.05) if np.mean(part.albedo) > 0.5 else (0.92, 0.92, 0.9), part.heat * 1.3)
                out += _glyphs(part.corners[face], uv[face], float(d[face].mean()), cam.focal_px,
                               _shade(look, ink, normals[k]), part.text_seed + k)
    elif part.kind == "ring":
        axis = part.b / np.linalg.norm(part.b)
        e1 = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        uv, d = cam.project(part.a + part.radius * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2))
        if (d <= 0.2).any():
            return out
        dm = float(d.mean())
        out.append(Prim("ring", uv, part.tube * cam.focal_px / dm, _shade(look, part, None), dm))
    elif part.kind == "pole":
        uv, d = cam.project(np.stack([part.a, part.b]))
        if (d <= 0.2).any():
            return out
        dm = float(d.mean())
        w = 2 * part.radius * cam.focal_px / dm
        out.append(Prim("line", uv, w, _shade(look, part, None), dm))
        if w >= 4 and not look.style.thermal and look.sun_rgb.max() > 0.08:
            p2, _ = cam.project(np.stack([part.a, part.b]) + look.sun_dir * part.radius * 0.5)
            hi = _shade(look, part, look.sun_dir) * 0.85 + out[-1].color * 0.15
            out.append(Prim("line", p2, w * 0.4, hi, dm - 1e-3))
    else:  # sphere
        uv, d = cam.project(part.a[None])
        if d[0] <= 0.2:
            return out
        r = part.radius * cam.focal_px / d[0]
        base = _shade(look, part, None, 0.9)
        out.append(Prim("disc", uv, r, base, float(d[0])))
        if r >= 2:
            p2, _ = cam.project((part.a + look.sun_dir * part.radius * 0.35)[None])
            lit = _shade(look, part, look.sun_dir * 0.8 + np.array([0, 0, 0.2]))
            out.append(Prim("disc", p2, r * 0.6, lit, float(d[0]) - 1e-3))
    return out


def _glyphs(corners: np.ndarray, uv: np.ndarray, depth: float, focal: float, ink: np.ndarray, seed: int) -> list[Prim]:
    """Block lettering on a box face (corners in BOX_FACES order: bottom edge, then top edge back): one to
    three lines of 3 x 5 glyph cells, as small polygons; none where a glyph would be under 3 px tall."""
    wid = float(np.linalg.norm(corners[1] - corners[0]))
    hgt = float(np.linalg.norm(corners[3] - corners[0]))
    if wid < 0.3 or hgt < 0.15:
        return []
    lines = 1 + seed % 3
    ch = min(hgt / (lines + 0.6), 0.6 * wid)
    if ch * focal / depth < 3.0:
        return []
    cw = 0.65 * ch
    n = int(wid * 0.9 / cw)
    ci, line, gx, gz = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(lines), np.arange(3), np.arange(5), indexing="ij"))
    on = (hash2(ci * 4 + gx, gz + 8 * line, seed) < 0.45) & (hash2(ci, line, seed + 1) >= 0.15)
    ci, line, gx, gz = ci[on], line[on], gx[on], gz[on]
    a0 = ((wid - n * cw) / 2 + ci * cw + (0.12 + gx * 0.25) * cw) / wid
    a1 = a0 + 0.25 * cw / wid
    top = (hgt - (lines - 1) * ch * 1.15 - ch) / 2 + (lines - 1 - line) * ch * 1.15
    b0 = (top + (0.12 + (4 - gz) * 0.15) * ch) / hgt
    b1 = b0 + 0.15 * ch / hgt
    P0, P1, P2, P3 = uv

    def at(a, b):
        return ((1 - b)[:, None] * ((1 - a)[:, None] * P0 + a[:, None] * P1)
                + b[:, None] * ((1 - a)[:, None] * P3 + a[:, None] * P2))

    quads = np.stack([at(a0, b0), at(a1, b0), at(a1, b1), at(a0, b1)], 1)
    return [Prim("poly", q, 0.0, ink, depth - 1e-3) for q in quads]


@dataclass(eq=False)
class Sprite:
    """A distractor pre-drawn over its clipped image box: premultiplied colour and coverage."""

    depth: float
    x0: int
    y0: int
    premul: np.ndarray  # (h, w, 3) float32, colour * alpha
    inv_alpha: np.ndarray  # (h, w, 1) float32, 1 - alpha
    solid: np.ndarray  # (h, w) bool, alpha > 0.5 (occludes heads)

    def composite(self, img: np.ndarray) -> None:
        h, w = self.solid.shape
        reg = img[self.y0:self.y0 + h, self.x0:self.x0 + w]
        reg[...] = (reg.astype(np.float32) * self.inv_alpha + self.premul + 0.5).astype(np.uint8)


def make_sprite(obj: Distractor, cam: Camera, look: Look, max_area: float = 0.25) -> Sprite | None:
    """The object's sprite, or None when it is out of view or would fill too much of the frame."""
    prims = [p for part in obj.parts for p in part_prims(part, cam, look)]
    if not prims:
        return None
    lin = np.stack([np.asarray(p.color, np.float64) for p in prims])
    dist = np.array([p.depth for p in prims])
    cols = (look.grade(look.apply_fog(lin, dist)) * 255.0).tolist()
    for p, c in zip(prims, cols):
        p.color = tuple(c)
    prims.sort(key=lambda q: -q.depth)
    x0, y0, x1, y1 = prims_bbox(prims)
    X0, Y0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    X1, Y1 = min(int(math.ceil(x1)), cam.width), min(int(math.ceil(y1)), cam.height)
    if X1 - X0 < 1 or Y1 - Y0 < 1 or (X1 - X0) * (Y1 - Y0) > max_area * cam.width * cam.height:
        return None
    rgb = np.zeros((Y1 - Y0, X1 - X0, 3), np.uint8)
    alpha = np.zeros((Y1 - Y0, X1 - X0), np.uint8)
    for p in prims:
        draw_prim(rgb, p, (X0, Y0))
        mp = Prim(p.kind, p.pts, p.size, (255,), p.depth)
        draw_prim(alpha, mp, (X0, Y0))
    prem = rgb.astype(np.float32)
    if obj.kind in FOLIAGE:
        leaves = [p for p in prims if p.kind == "disc"]
        canopy = np.zeros_like(alpha)
        for p in leaves:
            draw_prim(canopy, Prim("disc", p.pts, p.size, (255,), p.depth), (X0, Y0), aa=False)
        leaf_px = LEAF_M * cam.focal_px / float(np.median([p.depth for p in leaves]))
        factor, holes = leaf_texture(canopy.shape, leaf_px, _object_seed(obj), look.style.thermal)
        inside = canopy > 0
        prem[inside] *= factor[inside][:, None]
        gaps = inside & holes
        prem[gaps] = 0.0
        alpha[gaps] = 0
    a = alpha.astype(np.float32)[..., None] / 255.0
    # the rgb canvas is black-backed, so its AA edges are already colour * coverage
    ground = cam.project(np.array([[obj.x, obj.y, 0.0]]))[1][0]
    return Sprite(float(ground), X0, Y0, prem.astype(np.float32), (1.0 - a).astype(np.float32), alpha > 127)


# -- foliage --------------------------------------------------------------------------

# Real tree crowns are clumps of lit and shaded leaves with gaps: blob texture at
# about head scale. Smooth discs taught the base model that any such texture is a
# crowd (ShanghaiTech B: most of its overcount sat on trees and signs).
FOLIAGE = ("tree", "planter", "hedge", "topiary")
LEAF_M = 0.22  # size of a leaf clump in metres


def _object_seed(obj: Distractor) -> int:
    # the sprite is drawn once per scene; its texture must not depend on draw order
    return int(abs(obj.x * 7919.0 + obj.y * 104729.0 + obj.yaw * 1301.0)) % (1 << 31)


def leaf_texture(shape: tuple[int, int], leaf_px: float, seed: int, thermal: bool) -> tuple[np.ndarray, np.ndarray]:
    """(brightness factor, see-through gaps) over a sprite box for leaf clumps of ``leaf_px`` pixels."""
    rng = np.random.default_rng(seed)

    def blob_noise(sigma: float) -> np.ndarray:
        n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma, 0.5))
        return n / (n.std() + 1e-6)

    leaf_px = float(np.clip(leaf_px, 0.7, 14.0))
    fine, coarse = blob_noise(0.5 * leaf_px), blob_noise(2.0 * leaf_px)
    t = 0.8 * fine + 0.45 * coarse
    amp = 0.25 if thermal else 0.5
    factor = np.exp(amp * np.tanh(1.5 * t))
    factor[fine > 1.6] *= 1.0 if thermal else 1.35  # sunlit clusters
    return factor.astype(np.float32), t < -1.9


# -- shadows --------------------------------------------------------------------------


def shadow_polygons(obj: Distractor, sun_dir: np.ndarray) -> list[np.ndarray]:
    """Ground polygons (k, 2) of the object's sun shadow (empty when the sun is low or off)."""
    if sun_dir[2] < 0.05:
        return []
    sh = -sun_dir[:2] / sun_dir[2]  # ground offset per metre of height
    sh *= min(1.0, 3.5 / (np.linalg.norm(sh) + 1e-9))  # very long dusk shadows fade out; keep them bounded

    def drop(p: np.ndarray) -> np.ndarray:
        return p[..., :2] + p[..., 2:3] * sh

    polys = []
    for part in obj.parts:
        if part.kind == "box":
            polys.append(np.concatenate([part.corners[:4, :2], drop(part.corners[4:])]))
        elif part.kind == "pole":
            a, b = drop(part.a), drop(part.b)
            n = np.array([-(b - a)[1], (b - a)[0]])
            n = n / (np.linalg.norm(n) + 1e-9) * part.radius
            polys.append(np.stack([a + n, b + n, b - n, a - n]))
        elif part.kind == "sphere":
            c = drop(part.a)
            az = sh / (np.linalg.norm(sh) + 1e-9)
            perp = np.array([-az[1], az[0]])
            stretch = 1.0 / max(sun_dir[2], 0.2)
            t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
            polys.append(c + part.radius * (np.cos(t)[:, None] * perp + stretch * np.sin(t)[:, None] * az))
    return polys
