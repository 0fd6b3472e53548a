"""Stadium stands: tiered rows of seats on a raked stand across the pitch.

A stand rises away from the camera in steps: a vertical front wall with
advertising boards, then ``rows`` treads of ``row_depth`` metres, each one
riser higher, and a back wall at the top. For ray casting the steps are the
inclined plane through their front edges, and the treads, risers, seats,
aisles and lettered seat patterns are texture on that plane, evaluated in
stand metres with the pixel footprint like every other surface. Seat
positions lie on the same plane, so the people sit on what is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .textures import SIGN_COLORS, coverage, hash2, lettering, noise, sign_ink

# moulded plastic seats: club colours, greys and the odd white
_SEAT_COLORS = np.array([
    (0.12, 0.25, 0.6), (0.7, 0.1, 0.1), (0.85, 0.7, 0.1), (0.12, 0.45, 0.22), (0.45, 0.46, 0.48),
    (0.9, 0.4, 0.08), (0.85, 0.85, 0.85), (0.2, 0.2, 0.22), (0.35, 0.15, 0.45), (0.3, 0.6, 0.85),
], dtype=np.float32)
RAKE, FRONT, BACK = range(3)  # the surfaces of a stand
_MEAN_TONE = (0.04, 0.2, 0.5)  # share of pattern-coloured seats per pattern
SEATED_HEAD_M = 1.15  # head centre above the tread of a seated adult (1.7 m tall)


@dataclass(eq=False)
class Stand:
    """One raked stand; (u, w) are metres along its rows and back from its front edge."""

    origin: np.ndarray  # (2,) ground point of the front edge at u = 0
    yaw: float  # direction of the rows, radians from world X
    u0: float  # lateral extent of the seating
    u1: float
    front_z: float  # height of the first tread above the pitch (the front wall's top)
    rake_deg: float
    row_depth: float
    rows: int
    seat_w: float
    aisle_every: int  # seats between two aisles
    aisle_w: float
    back_h: float  # back wall above the last row
    seat_rgb: np.ndarray  # (2, 3) main colour and pattern colour
    concrete: np.ndarray  # (3,)
    pattern: int  # 0 plain, 1 lettering spelt in the seats, 2 blocks of alternating colour
    seed: int

    @property
    def along(self) -> np.ndarray:
        return np.array([math.cos(self.yaw), math.sin(self.yaw)])

    @property
    def back(self) -> np.ndarray:
        """Unit ground vector from the front edge up the stand (away from the camera at the origin)."""
        n = np.array([-math.sin(self.yaw), math.cos(self.yaw)])
        return n if np.dot(n, self.origin) > 0 else -n

    @property
    def rise(self) -> float:
        return self.row_depth * math.tan(math.radians(self.rake_deg))

    @property
    def depth(self) -> float:
        return self.rows * self.row_depth

    @property
    def top_z(self) -> float:
        return self.front_z + self.rows * self.rise

    def floor_z(self, w: np.ndarray) -> np.ndarray:
        return self.front_z + np.asarray(w) * (self.rise / self.row_depth)

    def to_world(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.along, self.back
        return self.origin[0] + u * a[0] + w * b[0], self.origin[1] + u * a[1] + w * b[1]

    def seat_index(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seat number within its block, in an aisle) for lateral positions u."""
        period = self.aisle_every * self.seat_w + self.aisle_w
        q = np.mod(u - self.u0, period)
        return np.floor(q / self.seat_w), q >= self.aisle_every * self.seat_w

    def seats(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (x, y, floor z) of every seat (every stride-th along a row): centred on its place, a little
        behind the tread's middle."""
        period = self.aisle_every * self.seat_w + self.aisle_w
        blocks = np.arange(int(math.ceil((self.u1 - self.u0) / period)))
        k = np.arange(self.aisle_every)
        u = (self.u0 + blocks[:, None] * period + (k[None, :] + 0.5) * self.seat_w).ravel()
        u = u[u < self.u1][::stride]
        w = (np.arange(self.rows) + 0.55) * self.row_depth
        uu, ww = np.meshgrid(u, w)
        x, y = self.to_world(uu.ravel(), ww.ravel())
        return x, y, self.floor_z(ww.ravel())


def sample_stand(rng: np.random.Generator, distance_m: float, yaw: float, lateral_m: float) -> Stand:
    """A stand whose front edge is `distance_m` ahead of the camera, its rows turned by `yaw`."""
    back = np.array([-math.sin(yaw), math.cos(yaw)])
    if back[1] < 0:
        back = -back
    origin = back * distance_m + np.array([math.cos(yaw), math.sin(yaw)]) * lateral_m
    main = int(rng.integers(len(_SEAT_COLORS)))
    other = (main + int(rng.integers(1, len(_SEAT_COLORS)))) % len(_SEAT_COLORS)
    jit = rng.uniform(0.85, 1.1)
    return Stand(
        origin=origin, yaw=yaw, u0=-400.0, u1=400.0,
        front_z=float(rng.uniform(1.0, 3.5)),
        rake_deg=float(rng.uniform(24.0, 36.0)),
        row_depth=float(rng.uniform(0.76, 0.9)),
        rows=int(rng.integers(14, 81)),  # one tier, or two or three seen as one rake
        seat_w=float(rng.uniform(0.46, 0.54)),
        aisle_every=int(rng.integers(14, 32)),
        aisle_w=float(rng.uniform(0.9, 1.4)),
        back_h=float(rng.uniform(1.5, 6.0)),
        seat_rgb=np.clip(_SEAT_COLORS[[main, other]] * jit, 0, 1),
        concrete=np.full(3, rng.uniform(0.5, 0.72), np.float32) * np.array([1.0, 0.99, 0.96], np.float32),
        pattern=int(rng.choice([0, 0, 0, 1, 2])),
        seed=int(rng.integers(0, 1 << 30)),
    )


# -- ray casting ----------------------------------------------------------------------


def stand_hits(st: Stand, C: np.ndarray, d: np.ndarray, t_best: np.ndarray):
    """Nearest ray hits on the stand: (t, (u, w or z, surface), mask of hits nearer than t_best)."""
    a, b = st.along, st.back
    slope = st.rise / st.row_depth
    # position relative to the front edge, in (u, w, z)
    cu = (C[0] - st.origin[0]) * a[0] + (C[1] - st.origin[1]) * a[1]
    cw = (C[0] - st.origin[0]) * b[0] + (C[1] - st.origin[1]) * b[1]
    du = d[:, 0] * a[0] + d[:, 1] * a[1]
    dw = d[:, 0] * b[0] + d[:, 1] * b[1]
    t_out = np.full(len(d), np.inf)
    coord = np.zeros(len(d))
    wpos = np.zeros(len(d))
    surf = np.full(len(d), -1, np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        # rake: z - front_z - slope * w = 0
        den = d[:, 2] - slope * dw
        t = (st.front_z + slope * cw - C[2]) / den
        w = cw + t * dw
        ok = (t > 0) & (w >= 0) & (w <= st.depth)
        _take(t_out, coord, wpos, surf, ok, t, w, w, RAKE)
        # front wall (w = 0, 0 <= z <= front_z) and back wall (w = depth, top_z <= z <= top_z + back_h)
        for w_plane, z0, z1, kind in ((0.0, 0.0, st.front_z, FRONT), (st.depth, st.top_z, st.top_z + st.back_h, BACK)):
            t = (w_plane - cw) / dw
            z = C[2] + t * d[:, 2]
            ok = (t > 0) & (z >= z0) & (z <= z1)
            _take(t_out, coord, wpos, surf, ok, t, z, np.full(len(d), w_plane), kind)
    u = cu + np.where(np.isfinite(t_out), t_out, 0.0) * du
    inside = np.isfinite(t_out) & (u >= st.u0) & (u <= st.u1) & (t_out < t_best)
    return t_out, (u, coord, surf), inside


def _take(t_out, coord, wpos, surf, ok, t, c, w, kind) -> None:
    near = ok & (t < t_out)
    t_out[near] = t[near]
    coord[near] = c[near]
    wpos[near] = w[near]
    surf[near] = kind


def stand_normal(st: Stand, surf: int) -> np.ndarray:
    b = st.back
    if surf == RAKE:
        r = math.radians(st.rake_deg)
        return np.array([-b[0] * math.sin(r), -b[1] * math.sin(r), math.cos(r)])
    return np.array([-b[0], -b[1], 0.0])


# -- shading --------------------------------------------------------------------------


def shade_stand(st: Stand, u: np.ndarray, c: np.ndarray, surf: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of stand points; c is w on the rake and the height z on the walls."""
    fp = fp.astype(np.float32)
    out = np.broadcast_to(st.concrete, (len(u), 3)).astype(np.float32)
    out = out * (1.0 + noise(u, c, fp, 2.0, st.seed, 2.0) * 0.06)[:, None]
    rake = surf == RAKE
    if rake.any():
        out[rake] = _rake(st, u[rake], c[rake], fp[rake], out[rake])
    front = surf == FRONT
    if front.any():
        out[front] = _boards(st, u[front], c[front], fp[front], out[front])
    back = surf == BACK
    out[back] *= 0.6
    return np.clip(out, 0, 1).astype(np.float32)


def _rake(st: Stand, u: np.ndarray, w: np.ndarray, fp: np.ndarray, base: np.ndarray) -> np.ndarray:
    f = np.mod(w, st.row_depth) / st.row_depth
    row = np.floor(w / st.row_depth)
    # the riser at the front of each tread is in its own shade
    riser = coverage((0.2 - f) * st.row_depth, fp)
    col = base * (1.0 - 0.4 * riser)[:, None]
    k, aisle = st.seat_index(u)
    g = np.mod(np.mod(u - st.u0, st.aisle_every * st.seat_w + st.aisle_w), st.seat_w) / st.seat_w
    across = coverage((0.42 - np.abs(g - 0.5)) * st.seat_w, fp) * ~aisle
    back = coverage((0.12 - np.abs(f - 0.82)) * st.row_depth, fp)
    pan = coverage((0.1 - np.abs(f - 0.6)) * st.row_depth, fp)
    seat = np.clip(back + 0.8 * pan, 0, 1) * across
    tone = _seat_tone(st, u, row, k)
    seat_col = st.seat_rgb[0][None, :] * (1 - tone[:, None]) + st.seat_rgb[1][None, :] * tone[:, None]
    seat_col = seat_col * (1.0 - 0.25 * pan / np.maximum(seat, 1e-3))[:, None].clip(0.7, 1.0)
    col = col + (seat_col - col) * seat[:, None]
    # far away the rows blur into their mean colour (coverage alone would alias)
    t = _MEAN_TONE[st.pattern]
    share = 0.4 * 0.84 * st.aisle_every * st.seat_w / (st.aisle_every * st.seat_w + st.aisle_w)
    mean = base * 0.92 * (1 - share) + (st.seat_rgb[0] * (1 - t) + st.seat_rgb[1] * t) * share
    far = np.clip((fp / st.row_depth - 0.25) / 0.5, 0, 1)[:, None]
    return col * (1 - far) + mean * far


def _seat_tone(st: Stand, u: np.ndarray, row: np.ndarray, k: np.ndarray) -> np.ndarray:
    """0 for the main seat colour, 1 for the pattern colour, per seat."""
    period = st.aisle_every * st.seat_w + st.aisle_w
    block = np.floor((u - st.u0) / period)
    if st.pattern == 1:
        # a word spelt in seats across the stand, a few rows per glyph cell
        glyph_h = st.row_depth * 10
        w = (row + 0.5) * st.row_depth
        fp0 = np.zeros(len(u), np.float32)
        return lettering(u, w, glyph_h * 0.5, glyph_h * 1.5, fp0, st.seed + 3, char_h=glyph_h).astype(np.float32)
    if st.pattern == 2:
        return (np.mod(block, 2) == 1).astype(np.float32)
    # a few seats of another colour (replacements)
    return (hash2(k + 1000 * block, row, st.seed) < 0.04).astype(np.float32)


def _boards(st: Stand, u: np.ndarray, z: np.ndarray, fp: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Advertising boards along the front wall: saturated panels with lettering."""
    length = 5.0 + 5.0 * hash2(np.zeros(1), np.zeros(1), st.seed + 5)[0]
    panel = np.floor(u / length)
    colour = SIGN_COLORS[(hash2(panel, np.zeros_like(panel), st.seed + 6) * len(SIGN_COLORS)).astype(np.int64)]
    z0, z1 = 0.15 * st.front_z, 0.9 * st.front_z
    board = coverage(np.minimum(z - z0, z1 - z), fp)
    ink = sign_ink(colour)
    text = lettering(u, z, z0 + 0.1 * (z1 - z0), z1 - 0.1 * (z1 - z0), fp, st.seed + 7)
    col = colour + (ink - colour) * text[:, None]
    return base + (col - base) * board[:, None]
