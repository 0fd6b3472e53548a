"""Crowds of hundreds to thousands: a packed crowd filling the view, and spectators in the seats of a stand.

``packed_crowd`` fills the countable ground edge to edge: a jittered hexagonal
lattice, thinned by a smooth density field (denser knots, thinner lanes, now
and then a crowd edge), and cleaned so nobody stands closer than the minimum
spacing. A rally faces one way and stands still, some with their arms up; a
concourse walks in two streams. ``seated_crowd`` fills the seats of a stand,
in blocks of fuller and emptier seats, most seated, some standing or
cheering. Both are vectorised: placing 4,000 people costs about as much as
their appearance draws.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from .people import POSE_CHEER, POSE_PHONE, POSE_SEATED, POSE_WALK, Person, make_people, sample_heights
from .scene import Scene
from .textures import noise
from .view import HEX_DENSITY, MIN_SPACING_M, countable_area, view_flags


def _field(x: np.ndarray, y: np.ndarray, seed: int, feature_m: float) -> np.ndarray:
    """Smooth noise in ground metres, about unit std (knots and gaps of a crowd)."""
    fp = np.zeros(len(x), np.float32)
    return noise(x, y, fp, feature_m, seed, 2.0) + 0.5 * noise(x, y, fp, feature_m / 3, seed + 1, 2.0)


def _spread(x: np.ndarray, y: np.ndarray, rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Push apart anyone closer than the minimum spacing (the lattice jitter does that), a few rounds;
    whoever is still too close then leaves."""
    p = np.column_stack([x, y])
    for _ in range(rounds):
        pairs = cKDTree(p).query_pairs(MIN_SPACING_M, output_type="ndarray")
        if not len(pairs):
            return p[:, 0], p[:, 1]
        d = p[pairs[:, 1]] - p[pairs[:, 0]]
        dist = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
        push = d / dist[:, None] * ((MIN_SPACING_M - dist) / 2 + 0.01)[:, None]
        np.add.at(p, pairs[:, 0], -push)
        np.add.at(p, pairs[:, 1], push)
    ok = np.ones(len(p), bool)
    ok[cKDTree(p).query_pairs(MIN_SPACING_M, output_type="ndarray")[:, 1]] = False
    return p[ok, 0], p[ok, 1]


def _pick(rng: np.random.Generator, weight: np.ndarray, head_in: np.ndarray, body_in: np.ndarray, n: int) -> np.ndarray:
    """Indices of the places taken: a weighted random order (Efraimidis-Spirakis keys), cut after the n-th
    head in view; places whose body but not head is in view are taken on the same terms (cut-off people)."""
    keys = np.log(rng.random(len(weight)) + 1e-12) / np.maximum(weight, 1e-6)
    order = np.argsort(-keys, kind="stable")
    order = order[body_in[order]]
    heads = np.cumsum(head_in[order])
    cut = int(np.searchsorted(heads, n)) + 1 if n > 0 else 0
    return order[:cut]


def packed_crowd(rng: np.random.Generator, scene: Scene, n: int) -> list[Person]:
    """n people whose heads are in view, packed over the countable ground (fewer only near capacity)."""
    area = max(countable_area(scene), 1.0)
    # places on a jittered lattice 1.7x denser than the mean crowd (at most ~4.1 / m^2 after the spacing
    # clean-up), then n of them taken, more where the density field is high
    peak = min(1.7 * n / area, HEX_DENSITY / 1.12)
    s = math.sqrt(2.0 / (math.sqrt(3.0) * peak))
    r = scene.region
    ang = rng.uniform(0, math.pi)
    c, sn = math.cos(ang), math.sin(ang)
    half = 0.5 * math.hypot(r.x1 - r.x0, r.y1 - r.y0) + s
    cols = np.arange(-half, half, s)
    rows = np.arange(-half, half, s * math.sqrt(3.0) / 2)
    gu, gv = np.meshgrid(cols, rows)
    gu = (gu + 0.5 * s * (np.arange(len(rows))[:, None] % 2)).ravel()
    gv = gv.ravel()
    mx, my = (r.x0 + r.x1) / 2, (r.y0 + r.y1) / 2
    x = mx + c * gu - sn * gv + rng.normal(0, 0.15 * s, len(gu))
    y = my + sn * gu + c * gv + rng.normal(0, 0.15 * s, len(gu))
    inside = (x >= r.x0) & (x <= r.x1) & (y >= r.y0) & (y <= r.y1)
    x, y = _spread(x[inside], y[inside])
    ok = scene.walkable(x, y)
    x, y = x[ok], y[ok]
    # knots and thinner lanes; sometimes the crowd ends along a line (a cordon, the edge of a square)
    weight = np.exp(rng.uniform(0.5, 1.5) * _field(x, y, int(rng.integers(0, 1 << 30)), rng.uniform(4.0, 12.0)))
    # the far end of a gathering thins out instead of stopping on a line
    weight *= np.clip((r.y1 - y) / (0.15 * (r.y1 - r.y0)), 0.05, 1.0)
    if rng.random() < 0.25:
        e = rng.uniform(-math.pi, math.pi)
        off = (x - mx) * math.cos(e) + (y - my) * math.sin(e)
        weight = np.where(off > np.quantile(off, rng.uniform(0.6, 0.9)), weight * 0.01, weight)
    h, kids = sample_heights(rng, len(x), 0.03)
    head_in, body_in = view_flags(scene, x, y, h)
    take = _pick(rng, weight, head_in, body_in, n)
    return _packed_people(rng, scene, x[take], y[take], h[take], kids[take])


def _packed_people(rng: np.random.Generator, scene: Scene, x: np.ndarray, y: np.ndarray, h: np.ndarray,
                   kids: np.ndarray) -> list[Person]:
    """A rally (facing one way, still, some cheering) or, indoors and now and then outdoors, a walking concourse."""
    k = len(x)
    walking = (not scene.style.outdoor) or rng.random() < 0.25
    if walking:
        a = scene.layout.angle
        hd = np.where(rng.random(k) < 0.5, a, a + math.pi) + rng.normal(0, 0.35, k)
        speed = np.where(rng.random(k) < 0.15, 0.0, np.clip(rng.normal(1.0, 0.2, k), 0.4, 1.6))
        pose = np.where(rng.random(k) < 0.05, POSE_PHONE, POSE_WALK)
    else:
        hd = rng.uniform(-math.pi, math.pi) + rng.normal(0, 0.45, k)
        speed = np.zeros(k)
        cheer = rng.uniform(0.0, 0.3)
        u = rng.random(k)
        pose = np.where(u < cheer, POSE_CHEER, np.where(u < cheer + 0.05, POSE_PHONE, POSE_WALK))
    return make_people(rng, x, y, h, kids, hd, speed, pose)


def seated_crowd(rng: np.random.Generator, scene: Scene, n: int) -> list[Person]:
    """n spectators whose heads are in view, in the seats of the scene's stands."""
    parts = [st.seats() + (st,) for st in scene.stands]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    z = np.concatenate([p[2] for p in parts])
    face = np.concatenate([np.full(len(p[0]), math.atan2(-p[3].back[1], -p[3].back[0])) for p in parts])
    m = len(x)
    h, kids = sample_heights(rng, m, 0.05)
    standing = rng.random(m) < rng.uniform(0.0, 0.3)
    head_in, body_in = view_flags(scene, x, y, h, z, ~standing)
    # fuller and emptier blocks of seats; a few empty seats even in a full stand
    seed = int(rng.integers(0, 1 << 30))
    weight = np.exp(rng.uniform(0.3, 1.5) * _field(x, y, seed, rng.uniform(5.0, 20.0)))
    take = _pick(rng, weight, head_in, body_in, n)
    k = len(take)
    pose = np.where(standing[take], np.where(rng.random(k) < rng.uniform(0.0, 0.5), POSE_CHEER, POSE_WALK), POSE_SEATED)
    return make_people(rng, x[take], y[take], h[take], kids[take], face[take] + rng.normal(0, 0.2, k), np.zeros(k), pose, z[take])
