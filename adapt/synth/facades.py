"""Facade surfaces: walls, windows, shop fronts and their signs, evaluated in facade metres.

Facades are where the base model counts people who are not there (TUD-Stadtmitte:
shop displays and windows behind the street, three times the true count). A
window is a frame, sometimes a mullion and a transom, glass that mixes a dim
interior with a reflection of the sky and of the street opposite (blobs at
head scale), sometimes a curtain, and now and then a pot or plant on the sill;
some bays have an air conditioner under the window, some a banner or a
billboard instead. A shop front is a lit display (shelves of goods, a poster
with lettering, the street reflected in the lower glass) under a lettered
sign band. Detail finer than a pixel's footprint fades to its mean, as in
textures.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .textures import SIGN_COLORS, coverage, hash2, lettering, mix, noise, sign_ink

_WALL_COLORS = np.array(
    [(0.78, 0.76, 0.72), (0.7, 0.66, 0.6), (0.6, 0.42, 0.35), (0.85, 0.84, 0.8), (0.5, 0.52, 0.55),
     (0.72, 0.62, 0.48), (0.45, 0.45, 0.47), (0.88, 0.8, 0.68), (0.62, 0.66, 0.7)],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class FacadeBlocks:
    """A row of buildings along one vertical plane; per-block arrays indexed by block number."""

    edges: np.ndarray  # (B+1,) along-plane block boundaries in metres
    heights: np.ndarray  # (B,)
    wall: np.ndarray  # (B, 3)
    window_w: np.ndarray
    window_h: np.ndarray
    bay: np.ndarray  # horizontal window spacing
    floor_h: np.ndarray
    ground_h: np.ndarray  # shop-front storey height
    sign: np.ndarray  # (B, 3)
    lit: float  # fraction of windows lit (dusk, night)
    seed: int
    interior: bool = False


def sample_facade_blocks(rng: np.random.Generator, length: float, height_range: tuple[float, float],
                         block_range: tuple[float, float], lit: float, interior: bool = False) -> FacadeBlocks:
    widths = []
    total = 0.0
    while total < length:
        w = float(rng.uniform(*block_range))
        widths.append(w)
        total += w
    b = len(widths)
    edges = np.concatenate([[0.0], np.cumsum(widths)]) - (total - length) / 2
    floor_h = rng.uniform(2.9, 3.8, b)
    return FacadeBlocks(
        edges=edges,
        heights=rng.uniform(*height_range, b),
        wall=np.clip(_WALL_COLORS[rng.integers(len(_WALL_COLORS), size=b)] * rng.uniform(0.85, 1.1, (b, 1)), 0, 1),
        window_w=rng.uniform(0.8, 2.2, b),
        window_h=floor_h * rng.uniform(0.4, 0.7, b),
        bay=rng.uniform(2.0, 4.0, b),
        floor_h=floor_h,
        ground_h=rng.uniform(3.5, 5.0, b),
        sign=SIGN_COLORS[rng.integers(len(SIGN_COLORS), size=b)],
        lit=lit,
        seed=int(rng.integers(0, 1 << 30)),
        interior=interior,
    )


def shade_facade(fb: FacadeBlocks, blk: np.ndarray, s: np.ndarray, z: np.ndarray, fp: np.ndarray,
                 sky_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(albedo (N, 3), emission (N, 3)) of facade points; blk is each point's block index."""
    fp = fp.astype(np.float32)
    wall = fb.wall[blk] * (1.0 + noise(s, z, fp, 1.5, fb.seed, 2.0) * 0.04 + noise(s, z, fp, 0.08, fb.seed + 1, 1.0) * 0.05)[:, None]
    emis = np.zeros_like(wall)
    gh = fb.ground_h[blk]
    upper = z >= gh
    # upper storeys: a grid of windows
    fh = fb.floor_h[blk]
    zz = z - gh
    fz = np.mod(zz, fh)
    bay = fb.bay[blk]
    ww = fb.window_w[blk]
    wh = fb.window_h[blk]
    fs = np.mod(s - fb.edges[blk], bay)
    dx = ww / 2 - np.abs(fs - bay / 2)
    sill = (fh - wh) * 0.55
    dz = wh / 2 - np.abs(fz - (sill + wh / 2))
    win = coverage(np.minimum(dx, dz), fp) * upper
    w_far = np.clip((fp / np.minimum(bay, fh) - 0.3) / 0.7, 0, 1)
    win = win * (1 - w_far) + w_far * upper * (ww * wh / (bay * fh))
    cell_i = np.floor((s - fb.edges[blk]) / bay)
    cell_j = np.floor(zz / fh)
    cell = cell_i * 131 + cell_j
    u, v = fs - bay / 2, fz - (sill + wh / 2)
    glass = window_glass(u, v, ww, wh, cell, blk, s, z, fp, sky_rgb, fb.seed + 20)
    wall = mix(wall, glass, win.astype(np.float32))
    ac = air_conditioner(u, v, ww, wh, cell, blk, fp, fb.seed + 20) * upper
    wall = mix(wall, np.broadcast_to(np.float32(0.78), wall.shape), ac.astype(np.float32))
    if fb.lit > 0:
        lit = (hash2(cell_i, cell_j, fb.seed + 3) < fb.lit).astype(np.float32) * win
        emis = emis + lit[:, None] * np.array([1.0, 0.8, 0.45], np.float32) * 0.8
    # ground storey: shop fronts with a sign band
    ground = ~upper
    sign_band = coverage(np.minimum(z - (gh - 1.0), (gh - 0.25) - z), fp) * ground
    shop_glass = coverage(np.minimum(z - 0.15, (gh - 1.2) - z), fp) * ground
    piers = np.abs(np.mod(s - fb.edges[blk], 3.0 + bay) - 0.25)
    shop_glass = shop_glass * coverage(piers - 0.3, fp)
    display, glow = shop_display(s - fb.edges[blk], z, gh - 1.2, blk, fp, fb.seed + 4)
    wall = mix(wall, display, shop_glass.astype(np.float32))
    # shops are lit by day too: a display glows against the street
    emis = emis + (shop_glass * glow * (0.25 + fb.lit))[:, None] * np.array([1.0, 0.93, 0.8], np.float32)
    wall = mix(wall, fb.sign[blk], sign_band.astype(np.float32))
    wall = mix(wall, sign_ink(fb.sign[blk]), (sign_band * lettering(s, z, gh - 1.0, gh - 0.25, fp, fb.seed + 7)).astype(np.float32))
    # some window bays carry banners and billboards instead: saturated colour and lettering
    panel_p = 0.35 * hash2(blk, np.zeros_like(blk), fb.seed + 6) ** 2
    panel = win * (hash2(cell_i, cell_j, fb.seed + 5) < panel_p)
    if panel.any():
        colour = SIGN_COLORS[(hash2(cell_i, cell_j, fb.seed + 8) * len(SIGN_COLORS)).astype(np.int64)]
        z0 = gh + cell_j * fh + sill
        text = lettering(s, z, z0 + 0.1 * wh, z0 + 0.9 * wh, fp, fb.seed + 9, char_h=0.3)
        wall = mix(wall, mix(colour, sign_ink(colour), text.astype(np.float32)), panel.astype(np.float32))
    if fb.interior:
        emis = emis + (shop_glass * 0.5)[:, None] * np.array([1.0, 0.9, 0.7], np.float32) * 0.6
    # dark band under the roof line
    top = fb.heights[blk]
    parapet = coverage(z - (top - 0.4), fp)
    wall = wall * (1 - 0.3 * parapet)[:, None]
    return np.clip(wall, 0, 1).astype(np.float32), emis.astype(np.float32)



# -- glass ----------------------------------------------------------------------------

_POTS = np.array([(0.2, 0.38, 0.15), (0.55, 0.3, 0.18), (0.12, 0.12, 0.12), (0.75, 0.2, 0.3)], np.float32)
_GOODS = np.array([(0.85, 0.82, 0.75), (0.7, 0.15, 0.15), (0.15, 0.3, 0.6), (0.9, 0.75, 0.2), (0.15, 0.15, 0.16),
                   (0.95, 0.95, 0.95), (0.4, 0.6, 0.3), (0.8, 0.5, 0.55)], np.float32)


def _fade(fp: np.ndarray, feature_m: float) -> np.ndarray:
    """How much of a feature of this size survives a pixel footprint fp (1 near, 0 far)."""
    return 1.0 / (1.0 + (fp / feature_m) ** 2)


def window_glass(u: np.ndarray, v: np.ndarray, ww: np.ndarray, wh: np.ndarray, cell: np.ndarray, salt: np.ndarray,
                 s: np.ndarray, z: np.ndarray, fp: np.ndarray, sky: np.ndarray, seed: int) -> np.ndarray:
    """Albedo (N, 3) of points (u, v) metres from the centre of their window (ww x wh).

    `cell` identifies the window (hash input), `salt` its building (styles of frames, reflections)."""
    n = len(u)
    h = hash2(cell, salt, seed)
    h2 = hash2(cell, salt, seed + 1)
    b = hash2(salt, np.zeros_like(salt), seed + 2)  # per building
    interior = np.array([0.1, 0.11, 0.13], np.float32) * (0.6 + 1.2 * h[:, None])
    # reflection: the sky high in the pane, the street opposite low, trees and facades in blobs
    refl = 0.15 + 0.6 * b
    grad = np.clip(0.5 + v / np.maximum(wh, 1e-3), 0, 1)[:, None]
    blobs = noise(s, z, fp, 0.5, seed + 3, 2.0) + 0.5 * noise(s, z, fp, 1.6, seed + 4, 2.0)
    street = np.float32(0.25) + 0.12 * blobs[:, None]
    mirror = sky.astype(np.float32) * grad * 0.9 + street * (1 - grad)
    col = interior + (mirror - interior) * (refl * (0.7 + 0.3 * h2))[:, None]
    # a curtain drawn across part of some panes: pale fabric with folds
    drawn = (h2 < 0.3) & (u < -ww / 2 + ww * (0.3 + 1.4 * h2))
    folds = 0.85 + 0.15 * np.sin(u * 40.0) * _fade(fp, 0.08)
    fabric = np.array([0.82, 0.8, 0.74], np.float32) * (0.7 + 0.3 * b[:, None]) * folds[:, None]
    col = np.where(drawn[:, None], fabric, col)
    # frame, and in some buildings a mullion and a transom
    frame_w = 0.05 + 0.05 * b
    edge = np.minimum(ww / 2 - np.abs(u), wh / 2 - np.abs(v))
    bars = frame_w - edge
    split = b > 0.35
    bars = np.maximum(bars, np.where(split, frame_w * 0.6 - np.abs(u), -1.0))
    bars = np.maximum(bars, np.where(split, frame_w * 0.6 - np.abs(v - 0.2 * wh), -1.0))
    frame = np.where((b > 0.6)[:, None], np.float32(0.9), np.float32(0.22)) * np.ones((n, 3), np.float32)
    col = col + (frame - col) * coverage(bars, fp)[:, None]
    # a pot or plant on the sill: a head-sized blob where no head can be
    pot = h < 0.25
    r = 0.12 + 0.1 * h2
    cx = (h2 - 0.5) * 0.6 * ww
    cy = -wh / 2 + frame_w + r * 0.9
    blob = coverage(r - np.hypot(u - cx, (v - cy) * 1.1), fp) * pot
    tone = _POTS[(hash2(cell, salt, seed + 5) * len(_POTS)).astype(np.int64)]
    return col + (tone - col) * blob[:, None]


def air_conditioner(u: np.ndarray, v: np.ndarray, ww: np.ndarray, wh: np.ndarray, cell: np.ndarray, salt: np.ndarray,
                    fp: np.ndarray, seed: int) -> np.ndarray:
    """Coverage of an outdoor air-conditioning unit under some windows (0.8 x 0.55 m, below the sill)."""
    has = hash2(cell, salt, seed + 6) < 0.12
    top = -wh / 2 - 0.15
    return coverage(np.minimum(0.4 - np.abs(u - 0.2 * ww), 0.275 - np.abs(v - (top - 0.275))), fp) * has


def shop_display(s: np.ndarray, z: np.ndarray, top: np.ndarray, block: np.ndarray, fp: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(albedo (N, 3), lit (N,)) of a shop window from the pavement up to `top`: shelves of goods, now and then
    a poster, the street reflected low in the glass; lit is 1 where the display glows."""
    n = len(s)
    bright = hash2(block, np.zeros_like(block), seed) < 0.6
    back = np.where(bright[:, None], np.float32(0.62), np.float32(0.16)) * np.array([1.0, 0.95, 0.85], np.float32)
    col = back * (1 + noise(s, z, fp, 0.6, seed + 1, 2.0) * 0.2)[:, None]
    # shelves every ~0.45 m with goods on them: small saturated boxes and bottles
    pitch = 0.4 + 0.15 * hash2(block, np.ones_like(block), seed + 2)
    row = np.floor(z / pitch)
    fz = z - row * pitch
    shelf = coverage(0.03 - np.abs(fz - 0.03), fp)
    cw = 0.16
    ci = np.floor(s / cw)
    good = (hash2(ci, row, seed + 3) < 0.65) & (z > 0.4)
    gh = pitch * (0.35 + 0.5 * hash2(ci, row, seed + 4))
    item = coverage(np.minimum(cw * 0.42 - np.abs(s - (ci + 0.5) * cw), np.minimum(fz - 0.06, gh - fz)), fp) * good
    gcol = _GOODS[(hash2(ci, row, seed + 5) * len(_GOODS)).astype(np.int64)]
    col = col + (gcol - col) * (item * _fade(fp, 0.08))[:, None]
    col = col * (1 - 0.5 * shelf)[:, None]
    # a poster in some windows: saturated, lettered
    poster_at = (hash2(block, np.full_like(block, 2), seed + 6) - 0.5) * 2.0
    pz0 = 0.6
    poster = (hash2(block, np.full_like(block, 3), seed + 7) < 0.45) & (z >= pz0)
    pcov = coverage(np.minimum(0.55 - np.abs(np.mod(s, 6.0) - 3.0 - poster_at), np.minimum(z - pz0, top - 0.1 - z)), fp) * poster
    pc = SIGN_COLORS[(hash2(block, np.full_like(block, 4), seed + 8) * len(SIGN_COLORS)).astype(np.int64)]
    text = lettering(s, z, pz0 + 0.1, top - 0.2, fp, seed + 9, char_h=0.18)
    pcol = pc + (sign_ink(pc) - pc) * text[:, None]
    col = col + (pcol - col) * pcov[:, None]
    # the street reflected in the lower glass
    low = np.clip(1.0 - z / np.maximum(top, 1e-3), 0, 1) * 0.45
    col = col * (1 - low)[:, None] + np.float32(0.3) * low[:, None]
    lit = (bright & (n > 0)).astype(np.float32) * (1 - low)
    return col.astype(np.float32), lit
