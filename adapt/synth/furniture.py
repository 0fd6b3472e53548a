"""Street furniture that looks like people from afar: bicycles, A-frame boards, café parasols with
tables and chairs, hedges, topiary and traffic cones.

Each is built from the distractor parts (boxes, poles, spheres, rings) and becomes a sprite like any
other object. They stand where people stand and are about as tall: wheels, chair backs, shrubs, cones
and lettered boards are the blobs at head scale that a counting model must learn to leave out.
"""

from __future__ import annotations

import math

import numpy as np

from .distractors import Distractor, Part, box_part, pole_part, ring_part

_FRAME_COLORS = [(0.08, 0.08, 0.09), (0.75, 0.1, 0.1), (0.1, 0.25, 0.6), (0.85, 0.85, 0.85), (0.2, 0.45, 0.25),
                 (0.5, 0.5, 0.52), (0.9, 0.7, 0.1)]
_CANVAS = [(0.92, 0.92, 0.9), (0.75, 0.12, 0.12), (0.12, 0.3, 0.55), (0.2, 0.45, 0.25), (0.9, 0.75, 0.3), (0.3, 0.3, 0.32)]
_BOARD = [(0.12, 0.12, 0.13), (0.92, 0.92, 0.9), (0.75, 0.12, 0.12), (0.15, 0.35, 0.7)]


def _pick(rng: np.random.Generator, table: list) -> tuple[float, float, float]:
    return tuple(np.clip(np.array(table[rng.integers(len(table))]) * rng.uniform(0.85, 1.1), 0, 1))


def _leafy(rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(0.1, 0.22), rng.uniform(0.25, 0.4), rng.uniform(0.07, 0.14)])


def make_bicycle(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    """A parked bicycle: two spoked wheels (rings), a diamond frame, saddle and handlebar."""
    c, s = math.cos(yaw), math.sin(yaw)
    fwd, side = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    base = np.array([x, y, 0.0])
    r = rng.uniform(0.3, 0.36)
    col = _pick(rng, _FRAME_COLORS)
    rear, front = base - fwd * 0.52 + [0, 0, r], base + fwd * 0.52 + [0, 0, r]
    crank = base + [0, 0, 0.3]
    seat, head = base - fwd * 0.2 + [0, 0, 0.85], base + fwd * 0.42 + [0, 0, 0.9]
    tyre = (0.06, 0.06, 0.06)
    parts = [ring_part(rear, side, r, 0.045, tyre, 0.3), ring_part(front, side, r, 0.045, tyre, 0.3)]
    for a, b in ((rear, crank), (rear, seat), (crank, seat), (crank, head), (seat, head), (head, front)):
        parts.append(pole_part(a, b, 0.018, col, 0.25))
    parts.append(pole_part(head + side * 0.28 + [0, 0, 0.1], head - side * 0.28 + [0, 0, 0.1], 0.015, (0.1, 0.1, 0.1)))
    parts.append(box_part(*(seat[:2] - fwd[:2] * 0.02), seat[2], seat[2] + 0.06, yaw, 0.26, 0.12, (0.08, 0.08, 0.08)))
    return Distractor("bicycle", x, y, yaw, (0.9, 0.3), parts)


def make_bike_rack(rng: np.random.Generator, x: float, y: float, yaw: float, k: int) -> Distractor:
    """k bicycles parked side by side along `yaw`, ~0.7 m apart: one object, so the row stays together."""
    c, s = math.cos(yaw), math.sin(yaw)
    gap = rng.uniform(0.6, 0.8)
    parts = []
    for j in range(k):
        t = (j - (k - 1) / 2) * gap
        bike = make_bicycle(rng, x + c * t, y + s * t, yaw + math.pi / 2 + rng.normal(0, 0.08) + math.pi * (rng.random() < 0.3))
        parts += bike.parts
    return Distractor("bicycle", x, y, yaw, (k * gap / 2 + 0.2, 0.9), parts)


def make_aframe(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    """A sandwich board on the pavement, lettered on both faces."""
    col = _pick(rng, _BOARD)
    h = rng.uniform(0.8, 1.1)
    part = box_part(x, y, 0.0, h, yaw, rng.uniform(0.45, 0.6), rng.uniform(0.5, 0.7), col, 0.25, top=0.12, top_w=1.0,
                    text_seed=int(rng.integers(1 << 20)))
    return Distractor("aframe", x, y, yaw, (0.3, 0.35), [part])


def make_parasol(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    """A café table under a square parasol, with two to four chairs around it."""
    c, s = math.cos(yaw), math.sin(yaw)
    canvas = _pick(rng, _CANVAS)
    span = rng.uniform(2.0, 3.0)
    top = rng.uniform(2.2, 2.6)
    metal = (0.55, 0.55, 0.57)
    parts = [
        pole_part([x, y, 0.0], [x, y, top + 0.15], 0.03, metal),
        box_part(x, y, top - 0.35, top, yaw, span, span, canvas, 0.2, top=0.08),
        box_part(x, y, 0.7, 0.75, yaw, 0.7, 0.7, _pick(rng, [(0.9, 0.9, 0.88), (0.35, 0.25, 0.18), (0.2, 0.2, 0.2)])),
    ]
    chair = _pick(rng, [(0.2, 0.2, 0.2), (0.8, 0.8, 0.8), (0.45, 0.3, 0.2), (0.55, 0.15, 0.12)])
    for k in range(int(rng.integers(2, 5))):
        a = yaw + k * math.pi / 2 + rng.normal(0, 0.15)
        cx, cy = x + 0.75 * math.cos(a), y + 0.75 * math.sin(a)
        parts.append(box_part(cx, cy, 0.42, 0.46, a, 0.42, 0.42, chair))
        bx, by = cx + 0.2 * math.cos(a), cy + 0.2 * math.sin(a)
        parts.append(box_part(bx, by, 0.46, 0.88, a, 0.04, 0.42, chair))
        for sx in (-1, 1):
            lx, ly = cx - s * sx * 0.18, cy + c * sx * 0.18
            parts.append(pole_part([lx, ly, 0.0], [lx, ly, 0.42], 0.015, chair))
    return Distractor("parasol", x, y, yaw, (1.2, 1.2), parts)


def make_hedge(rng: np.random.Generator, x: float, y: float, yaw: float) -> Distractor:
    """A clipped hedge: a row of overlapping leafy spheres, 0.8-1.6 m tall, 2-10 m long."""
    length = rng.uniform(2.0, 10.0)
    r = rng.uniform(0.4, 0.7)
    green = _leafy(rng)
    c, s = math.cos(yaw), math.sin(yaw)
    parts = []
    for t in np.arange(-length / 2, length / 2 + 1e-6, r * 0.8):
        for z in (r * 0.9, r * 1.6) if rng.random() < 0.5 else (r * 0.9,):
            j = rng.normal(0, 0.05, 2)
            parts.append(Part("sphere", tuple(np.clip(green * rng.uniform(0.85, 1.15), 0, 1)), 0.18,
                              a=np.array([x + c * t + j[0], y + s * t + j[1], z]), radius=r))
    return Distractor("hedge", x, y, yaw, (length / 2 + r, r), parts)


def make_topiary(rng: np.random.Generator, x: float, y: float) -> Distractor:
    """A clipped cone or ball of shrub in a square pot (shop entrances, plazas)."""
    pot_h = rng.uniform(0.4, 0.8)
    w = rng.uniform(0.5, 0.8)
    parts = [box_part(x, y, 0.0, pot_h, 0.0, w, w, _pick(rng, [(0.55, 0.55, 0.55), (0.3, 0.3, 0.32), (0.5, 0.35, 0.25)]))]
    green = _leafy(rng)
    cone = rng.random() < 0.6
    height = rng.uniform(0.8, 2.2) if cone else w
    steps = 5 if cone else 1
    for k in range(steps):
        f = k / steps
        r = (0.45 * w * (1 - f) + 0.08) if cone else 0.55 * w
        parts.append(Part("sphere", tuple(np.clip(green * rng.uniform(0.85, 1.15), 0, 1)), 0.18,
                          a=np.array([x, y, pot_h + r + f * height * 0.8]), radius=r))
    return Distractor("topiary", x, y, 0.0, (w / 2, w / 2), parts)


def make_cone(rng: np.random.Generator, x: float, y: float) -> Distractor:
    """An orange traffic cone with a white band."""
    h = rng.uniform(0.5, 0.75)
    orange = (0.95, 0.35, 0.05)
    parts = [box_part(x, y, 0.0, 0.04, 0.0, 0.36, 0.36, (0.1, 0.1, 0.1)),
             box_part(x, y, 0.04, h, 0.0, 0.28, 0.28, orange, 0.2, top=0.15),
             box_part(x, y, 0.5 * h, 0.65 * h, 0.0, 0.17, 0.17, (0.92, 0.92, 0.9), 0.2, top=0.8)]
    return Distractor("cone", x, y, 0.0, (0.2, 0.2), parts)
