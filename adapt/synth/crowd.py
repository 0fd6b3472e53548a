"""Where people stand and how they move: crowd layouts and the walking update.

Layouts (all in ground metres, so density follows perspective like a real
crowd): ``uniform`` (spread over the walkable ground, weighted by surface:
more on paving than on grass), ``clustered`` (walking groups and standing
knots), ``queue`` (people in lines), ``flow`` (two opposing streams along the
street) and ``mixed`` (a random mixture). People keep a minimum spacing and
stay clear of objects and walls.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .dense import packed_crowd, seated_crowd
from .people import Person, make_person, sample_heights
from .scene import Scene, sample_ground_by_pixel, sample_ground_in_view
from .view import MIN_SPACING_M, check_room, view_flags

# street layouts; "packed" fills the view edge to edge, "seated" fills the seats of a tribune (dense.py)
LAYOUTS = ("uniform", "clustered", "queue", "flow", "mixed", "packed", "seated")
_CELL = 0.5
__all__ = ["LAYOUTS", "MIN_SPACING_M", "sample_crowd", "view_flags", "walk"]


class _Occupancy:
    """Spatial hash of accepted ground positions for the minimum-spacing test."""

    def __init__(self, spacing: float):
        self.spacing = spacing
        self.cells: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def free(self, x: float, y: float) -> bool:
        i, j = int(math.floor(x / _CELL)), int(math.floor(y / _CELL))
        s2 = self.spacing * self.spacing
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for px, py in self.cells.get((i + di, j + dj), ()):
                    if (px - x) ** 2 + (py - y) ** 2 < s2:
                        return False
        return True

    def add(self, x: float, y: float) -> None:
        self.cells.setdefault((int(math.floor(x / _CELL)), int(math.floor(y / _CELL))), []).append((x, y))


class _Builder:
    """Accepts candidate people one by one against spacing, walkability and visibility."""

    def __init__(self, rng: np.random.Generator, scene: Scene, target: int):
        self.rng = rng
        self.scene = scene
        self.target = target
        self.occ = _Occupancy(MIN_SPACING_M)
        self.people: list[Person] = []
        self.heads = 0
        self.groups = 0

    @property
    def done(self) -> bool:
        return self.heads >= self.target

    def offer(self, xs: np.ndarray, ys: np.ndarray, headings: np.ndarray | None = None,
              speeds: np.ndarray | None = None, group: int | np.ndarray = -1, weighted: bool = True,
              limit: int | None = None) -> int:
        """Try candidates in order; returns how many heads in view were accepted."""
        n = len(xs)
        if n == 0:
            return 0
        rng = self.rng
        hts, kids = sample_heights(rng, n)
        w = self.scene.crowd_weight(xs, ys) if weighted else self.scene.walkable(xs, ys).astype(np.float32)
        keep = rng.random(n) < w
        head_in, body_in = view_flags(self.scene, xs, ys, hts)
        groups = np.broadcast_to(np.asarray(group), (n,))
        got = 0
        for k in range(n):
            if self.done or (limit is not None and got >= limit):
                break
            if not (keep[k] and body_in[k]) or not self.occ.free(xs[k], ys[k]):
                continue
            p = make_person(rng, xs[k], ys[k], height_m=hts[k], child=bool(kids[k]),
                            heading=None if headings is None else float(headings[k]),
                            speed=None if speeds is None else float(speeds[k]), group=int(groups[k]))
            self.occ.add(xs[k], ys[k])
            self.people.append(p)
            if head_in[k]:
                self.heads += 1
                got += 1
        return got


def _street_headings(rng: np.random.Generator, scene: Scene, n: int) -> np.ndarray:
    a = scene.layout.angle
    base = np.where(rng.random(n) < 0.5, a, a + math.pi)
    return base + rng.normal(0, 0.25, n)


def _uniform(b: _Builder, n: int, flow: float) -> None:
    rng, scene = b.rng, b.scene
    r = scene.region
    start = b.heads
    for _ in range(60):
        need = n - (b.heads - start)
        if b.done or need <= 0:
            return
        m = max(32, 3 * need)
        xs = rng.uniform(r.x0, r.x1, m)
        ys = rng.uniform(r.y0, r.y1, m)
        hd = np.where(rng.random(m) < flow, _street_headings(rng, scene, m), rng.uniform(-math.pi, math.pi, m))
        spd = np.where(rng.random(m) < 0.2, 0.0, np.clip(rng.normal(1.25, 0.25, m), 0.5, 2.0))
        # some walk in pairs or threes: companions side by side, same heading and pace
        extra = np.where(rng.random(m) < 0.22, rng.integers(1, 3, m), 0)
        cx, cy, ch, cs, cg = [xs], [ys], [hd], [spd], [np.full(m, -1)]
        for k in np.nonzero(extra)[0]:
            b.groups += 1
            cg[0][k] = b.groups
            side = np.array([-math.sin(hd[k]), math.cos(hd[k])])
            for j in range(1, extra[k] + 1):
                off = side * (0.6 * ((j + 1) // 2) * (1 if j % 2 else -1)) + rng.normal(0, 0.08, 2)
                cx.append(np.array([xs[k] + off[0]]))
                cy.append(np.array([ys[k] + off[1]]))
                ch.append(hd[k:k + 1] + rng.normal(0, 0.1, 1))
                cs.append(spd[k:k + 1])
                cg.append(np.array([b.groups]))
        # companions directly follow their leader in the candidate order
        order = np.argsort(np.concatenate([np.arange(m, dtype=float)] +
                                          [np.array([float(k) + 0.5]) for k in np.nonzero(extra)[0] for _ in range(extra[k])]),
                           kind="stable")
        cat = lambda parts, order=order: np.concatenate(parts)[order]  # noqa: E731
        b.offer(cat(cx), cat(cy), cat(ch), cat(cs), cat(cg), limit=need)


def _group_anchors(rng: np.random.Generator, scene: Scene, k: int) -> np.ndarray:
    """Where groups and queues form: half spread evenly over the image, half evenly over the ground."""
    a = sample_ground_by_pixel(rng, scene, k)
    g = sample_ground_in_view(rng, scene, k, 0.0, 1.6)
    pick = rng.random(k) < 0.5
    pts = []
    for j in range(k):
        first, second = (a, g) if pick[j] else (g, a)
        if j < len(first):
            pts.append(first[j])
        elif j < len(second):
            pts.append(second[j])
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _clusters(b: _Builder, n: int) -> None:
    rng, scene = b.rng, b.scene
    k = int(np.clip(rng.poisson(max(1.0, n / 25)), 1, 12))
    centres = _group_anchors(rng, scene, k)
    if not len(centres):
        return
    sizes = rng.multinomial(n, rng.dirichlet(np.full(len(centres), 1.5)))
    for (cx, cy), size in zip(centres, sizes):
        if b.done:
            return
        # a knot of people: anisotropic spread; either walking together or standing facing in
        sig = rng.uniform(0.5, 1.0) * math.sqrt(max(size, 1)) * 0.55 + 0.3
        ang = rng.uniform(0, math.pi)
        stretch = rng.uniform(1.0, 2.5)
        walking = rng.random() < 0.55
        b.groups += 1
        gid = b.groups
        hd0 = float(rng.uniform(-math.pi, math.pi))
        spd = float(np.clip(rng.normal(1.15, 0.2), 0.5, 1.8)) if walking else 0.0
        accepted = 0
        for _ in range(8):
            if accepted >= size or b.done:
                break
            m = 3 * (size - accepted) + 8
            u = rng.normal(0, sig * stretch, m)
            v = rng.normal(0, sig, m)
            xs = cx + u * math.cos(ang) - v * math.sin(ang)
            ys = cy + u * math.sin(ang) + v * math.cos(ang)
            if walking:
                hd = hd0 + rng.normal(0, 0.2, m)
                sp = np.full(m, spd) * rng.uniform(0.9, 1.1, m)
            else:
                hd = np.arctan2(cy - ys, cx - xs) + rng.normal(0, 0.6, m)
                sp = np.zeros(m)
            accepted += b.offer(xs, ys, hd, sp, gid, weighted=False, limit=size - accepted)


def _queues(b: _Builder, n: int) -> None:
    rng, scene = b.rng, b.scene
    lines = int(rng.integers(1, 4))
    starts = _group_anchors(rng, scene, lines)
    per = max(1, n // max(len(starts), 1))
    for sx, sy in starts:
        if b.done:
            return
        ang = float(rng.uniform(-math.pi, math.pi))
        gap = rng.uniform(0.55, 0.95)
        bend = rng.normal(0, 0.03)
        b.groups += 1
        x, y = sx, sy
        xs, ys, hs = [], [], []
        for _ in range(per * 2):
            xs.append(x + rng.normal(0, 0.06))
            ys.append(y + rng.normal(0, 0.06))
            hs.append(ang + math.pi + rng.normal(0, 0.25))  # facing the head of the queue
            ang += bend
            x += gap * math.cos(ang)
            y += gap * math.sin(ang)
        b.offer(np.array(xs), np.array(ys), np.array(hs), np.zeros(len(xs)), b.groups, weighted=False, limit=per)


def sample_crowd(rng: np.random.Generator, scene: Scene, n: int, layout: str = "mixed") -> list[Person]:
    """People on the scene's ground: n whose heads are in the frame (fewer if random placement fills the
    ground first), plus any sampled person whose body but not head reaches into the frame (cut off at the
    edges). A scene with stands seats its crowd whatever the layout.

    Raises ValueError when the view cannot hold n people (view.check_room)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if n < 0:
        raise ValueError(f"crowd size must be >= 0, found {n}")
    if n == 0:
        return []
    check_room(scene, n)
    if scene.stands or layout == "seated":
        return seated_crowd(rng, scene, n)
    if layout == "packed":
        return packed_crowd(rng, scene, n)
    b = _Builder(rng, scene, n)
    if layout == "uniform":
        _uniform(b, n, flow=0.0)
    elif layout == "flow":
        _uniform(b, n, flow=0.85)
    elif layout == "clustered":
        _clusters(b, n)
    elif layout == "queue":
        _queues(b, n)
    else:
        f_uni = rng.uniform(0.2, 0.7)
        if rng.random() < 0.3:
            _queues(b, int(rng.integers(4, 20)))
        _clusters(b, int(round((n - b.heads) * (1 - f_uni))))
        _uniform(b, n - b.heads, flow=float(rng.uniform(0, 1)))
    if not b.done:
        _uniform(b, n - b.heads, flow=0.3)  # top up what clusters could not place
    return b.people


# -- motion ---------------------------------------------------------------------------


def walk(scene: Scene, people: list[Person], dt_s: float, rng: np.random.Generator) -> list[Person]:
    """Advance everyone by dt_s seconds along their heading, with gait phase and a little wander.

    Someone who would leave the frame or walk into a wall or object either turns
    around or leaves and is replaced by a newcomer entering at the frame edge, so
    the crowd size stays steady over a long synthetic stream.
    """
    if not people or dt_s <= 0:
        return list(people)
    n = len(people)
    x = np.array([p.x for p in people])
    y = np.array([p.y for p in people])
    h = np.array([p.height_m for p in people])
    hd = np.array([p.heading for p in people])
    spd = np.array([p.speed for p in people])
    groups = np.array([p.group for p in people])
    # wander: shared by a group so companions stay together
    wander = rng.normal(0, 0.12 * math.sqrt(dt_s), n)
    for g in np.unique(groups[groups >= 0]):
        wander[groups == g] = wander[np.argmax(groups == g)]
    hd = hd + np.where(spd > 0, wander, 0.0)
    nx = x + spd * dt_s * np.cos(hd)
    ny = y + spd * dt_s * np.sin(hd)
    head_in, body_in = view_flags(scene, nx, ny, h)
    was_head_in, _ = view_flags(scene, x, y, h)
    ok = scene.walkable(nx, ny) & (head_in | ~was_head_in) & body_in
    out: list[Person] = []
    for k, p in enumerate(people):
        stride = 0.82 * p.height_m  # metres per gait cycle
        phase = (p.phase + 2 * math.pi * p.speed * dt_s / stride) % (2 * math.pi)
        if p.speed <= 0 or ok[k]:
            out.append(dataclasses.replace(p, x=float(nx[k]) if p.speed > 0 else p.x,
                                           y=float(ny[k]) if p.speed > 0 else p.y,
                                           heading=float(hd[k]) if p.speed > 0 else p.heading, phase=phase))
        elif rng.random() < 0.5:
            out.append(dataclasses.replace(p, heading=float(hd[k] + math.pi + rng.normal(0, 0.4)), phase=phase))
        else:
            out.append(_newcomer(rng, scene, p))
    return out


def _newcomer(rng: np.random.Generator, scene: Scene, old: Person) -> Person:
    """Someone new who has just entered the frame, walking inwards (or `old` if no place is found)."""
    p = make_person(rng, 0.0, 0.0, speed=max(old.speed, 0.8))
    hts = np.full(16, p.height_m)
    for _ in range(10):
        pts = sample_ground_in_view(rng, scene, 16, 0.0, p.height_m * 0.94)
        if not len(pts):
            break
        hd = rng.uniform(-math.pi, math.pi, len(pts))
        head_now, _ = view_flags(scene, pts[:, 0], pts[:, 1], hts[:len(pts)])
        head_back, _ = view_flags(scene, pts[:, 0] - 2.0 * np.cos(hd), pts[:, 1] - 2.0 * np.sin(hd), hts[:len(pts)])
        ok = head_now & ~head_back & scene.walkable(pts[:, 0], pts[:, 1])
        if ok.any():
            k = int(np.argmax(ok))
            return dataclasses.replace(p, x=float(pts[k, 0]), y=float(pts[k, 1]), heading=float(hd[k]))
    return old
