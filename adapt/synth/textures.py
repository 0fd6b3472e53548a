"""Procedural surface materials evaluated in surface metres.

Every function takes surface coordinates (u, v) in metres and the pixel
footprint ``fp`` (metres covered by one pixel at that point) and returns an
albedo. Detail finer than the footprint is faded towards its mean, which is
analytic anti-aliasing: far pavement does not shimmer or moire, it greys out
like a real photo. Arrays are flat float32 (N,) / (N, 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import cv2
import numpy as np

_NOISE_SIZE = 256


@cache
def noise_texture(sigma_texels: float, seed: int) -> np.ndarray:
    """Tileable Gaussian-filtered noise, zero mean and unit std (fixed seed: deterministic everywhere)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((_NOISE_SIZE, _NOISE_SIZE))
    f = np.fft.fftfreq(_NOISE_SIZE)
    g = np.exp(-2.0 * (np.pi * sigma_texels) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    n = np.real(np.fft.ifft2(np.fft.fft2(white) * g))
    n = (n - n.mean()) / n.std()
    return n.astype(np.float32)


def noise(u: np.ndarray, v: np.ndarray, fp: np.ndarray, feature_m: float, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Band-limited noise with features of ``feature_m`` metres, faded where the pixel is coarser.

    A few fixed textures are shared; ``seed`` picks one and a random offset into it.
    """
    tex = noise_texture(sigma, seed % 3)
    scale = sigma / feature_m  # texels per metre
    ou = (seed * 0.6180339887) % 1.0 * _NOISE_SIZE
    ov = (seed * 0.7548776662) % 1.0 * _NOISE_SIZE
    n = len(u)
    cols = 1024
    pad = (-n) % cols
    mx = np.mod(np.asarray(u, np.float64) * scale + ou, _NOISE_SIZE).astype(np.float32)
    my = np.mod(np.asarray(v, np.float64) * scale + ov, _NOISE_SIZE).astype(np.float32)
    if pad:
        mx = np.concatenate([mx, np.zeros(pad, np.float32)])
        my = np.concatenate([my, np.zeros(pad, np.float32)])
    # cv2.remap wants 2-D maps with sides below 32767
    out = cv2.remap(tex, mx.reshape(-1, cols), my.reshape(-1, cols), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    out = out.reshape(-1)[:n]
    att = 1.0 / (1.0 + (np.asarray(fp, np.float32) / np.float32(feature_m)) ** 2)
    return out * att


def hash2(i: np.ndarray, j: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic integer hash of a lattice cell -> float in [0, 1)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return ((h & 0xFFFFFF).astype(np.float32)) / float(0x1000000)


def coverage(dist_inside: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a feature given the signed distance into it (metres)."""
    return np.clip(dist_inside / np.maximum(fp, 1e-6) + 0.5, 0.0, 1.0)


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[:, None]


# -- ground materials -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GroundMaterial:
    kind: str  # asphalt | pavers | tiles | grass | gravel
    colors: np.ndarray  # (k, 3) albedo palette (tiles pick one per tile)
    weights: np.ndarray  # (k,) palette probabilities
    tile: tuple[float, float] = (0.6, 0.6)  # metres along u, v
    bond: float = 0.0  # row offset as a fraction of the tile (0.5 = running bond)
    joint_m: float = 0.01
    joint_color: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.3, 0.3]))
    tile_jitter: float = 0.08
    grain: float = 0.05
    blotch: float = 0.05
    angle: float = 0.0  # rotation of the pattern in the surface, radians
    seed: int = 0
    accent: np.ndarray | None = None  # colour of periodic accent bands (pavers, tiles)
    accent_period: float = 0.0
    accent_width: float = 0.0
    crowd_weight: float = 1.0  # relative chance that people stand on this material
    checker: bool = False  # two-tone paving laid in a checker instead of scattered

    @property
    def mean_color(self) -> np.ndarray:
        return (self.colors * self.weights[:, None]).sum(0)


_PAVER_PALETTES = [
    [(0.62, 0.62, 0.6), (0.55, 0.55, 0.54), (0.68, 0.67, 0.64)],  # grey granite
    [(0.58, 0.36, 0.3), (0.52, 0.31, 0.27), (0.63, 0.42, 0.35)],  # red brick
    [(0.72, 0.66, 0.55), (0.66, 0.6, 0.5)],  # beige stone
    [(0.36, 0.36, 0.37), (0.44, 0.44, 0.45)],  # charcoal
    [(0.7, 0.7, 0.68), (0.45, 0.43, 0.42)],  # two-tone (laid as a checker)
    [(0.6, 0.52, 0.45), (0.5, 0.45, 0.42), (0.66, 0.6, 0.52)],  # warm mixed
]
_TILE_PALETTES = [
    [(0.85, 0.84, 0.8), (0.8, 0.79, 0.76)],  # cream marble
    [(0.72, 0.72, 0.74), (0.64, 0.64, 0.66)],  # grey
    [(0.88, 0.87, 0.85), (0.3, 0.3, 0.32)],  # black and white
    [(0.78, 0.7, 0.6), (0.7, 0.62, 0.52)],  # sand
]


def _palette(rng: np.random.Generator, options: list) -> tuple[np.ndarray, np.ndarray]:
    cols = np.array(options[rng.integers(len(options))], dtype=np.float32)
    cols = np.clip(cols * rng.uniform(0.9, 1.1) + rng.normal(0, 0.02, 3), 0.02, 0.98)
    # one dominant colour; the others are scattered tiles (random two-tone paving looks fake)
    w = np.full(len(cols), 1.0, np.float32)
    w[1:] = rng.uniform(0.0, 0.35, len(cols) - 1)
    w /= w.sum()
    return cols.astype(np.float32), w


def sample_ground_material(rng: np.random.Generator, kind: str) -> GroundMaterial:
    seed = int(rng.integers(0, 1 << 30))
    angle = float(rng.choice([0.0, 0.0, 0.0, np.pi / 4])) + float(rng.normal(0, 0.02))
    if kind == "asphalt":
        g = rng.uniform(0.22, 0.42)
        tint = np.array([1.0, 1.0, 1.0 + rng.uniform(-0.05, 0.08)])
        cols = np.array([g * tint], dtype=np.float32)
        return GroundMaterial(kind, cols, np.ones(1, np.float32), grain=0.06, blotch=0.06, seed=seed, crowd_weight=0.5)
    if kind == "grass":
        base = np.array([rng.uniform(0.2, 0.32), rng.uniform(0.36, 0.5), rng.uniform(0.1, 0.2)], dtype=np.float32)
        return GroundMaterial(kind, base[None], np.ones(1, np.float32), tile=(rng.uniform(1.0, 3.0), 1.0),
                              grain=0.16, blotch=0.16, seed=seed, angle=angle, crowd_weight=0.15)
    if kind == "gravel":
        base = np.array([0.58, 0.52, 0.42], dtype=np.float32) * rng.uniform(0.8, 1.15)
        return GroundMaterial(kind, base[None], np.ones(1, np.float32), grain=0.12, blotch=0.08, seed=seed, crowd_weight=0.8)
    if kind in ("pavers", "tiles"):
        if kind == "pavers":
            cols, w = _palette(rng, _PAVER_PALETTES)
            a = float(rng.choice([0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]))
            b = a * float(rng.choice([1.0, 1.0, 0.5, 2.0]))
            bond = float(rng.choice([0.0, 0.5, 0.0]))
            joint = rng.uniform(0.006, 0.02)
            jitter = rng.uniform(0.02, 0.08)
        else:
            cols, w = _palette(rng, _TILE_PALETTES)
            a = float(rng.choice([0.6, 0.8, 1.0, 1.2]))
            b = a
            bond = 0.0
            joint = rng.uniform(0.003, 0.008)
            jitter = rng.uniform(0.01, 0.05)
            angle = float(rng.choice([0.0, np.pi / 4]))
        # strongly contrasting palettes are laid in a checker, subtle ones scattered
        checker = bool(np.abs(cols - cols[0]).max() > 0.2) and len(cols) == 2
        if checker:
            w = np.full(2, 0.5, np.float32)
        jc = cols.mean(0) * rng.uniform(0.55, 0.85) if rng.random() < 0.8 else np.minimum(cols.mean(0) * 1.25, 0.95)
        accent = None
        period = width = 0.0
        if rng.random() < 0.35:
            # accent bands: the paving colour, darker or lighter and a little greyer
            m = cols.mean(0)
            accent = np.clip((0.6 * m + 0.4 * m.mean()) * rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.15, 1.35)]),
                             0.05, 0.95).astype(np.float32)
            period = float(rng.uniform(4.0, 12.0))
            width = float(rng.uniform(0.3, 1.2))
        return GroundMaterial(kind, cols, w, tile=(a, b), bond=bond, joint_m=joint, joint_color=jc.astype(np.float32),
                              tile_jitter=jitter, grain=0.04, blotch=0.04, angle=angle, seed=seed,
                              accent=accent, accent_period=period, accent_width=width, checker=checker)
    raise ValueError(f"unknown ground material {kind!r}")


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    if angle == 0.0:
        return u, v
    c, s = np.cos(angle), np.sin(angle)
    return c * u + s * v, -s * u + c * v


def shade_ground(mat: GroundMaterial, u: np.ndarray, v: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of ``mat`` at surface points (u, v) seen with footprint fp."""
    n = len(u)
    fp = fp.astype(np.float32)
    blotch = noise(u, v, fp, 3.0, mat.seed, 2.0) * mat.blotch + noise(u, v, fp, 0.7, mat.seed + 1, 2.0) * (mat.blotch * 0.5)
    grain = noise(u, v, fp, 0.05, mat.seed + 2, 1.0) * mat.grain
    if mat.kind in ("pavers", "tiles"):
        ru, rv = _rotate(u, v, mat.angle)
        a, b = mat.tile
        j = np.floor(rv / b)
        ru = ru + mat.bond * a * (j.astype(np.int64) & 1)
        i = np.floor(ru / a)
        fu = ru - i * a
        fv = rv - j * b
        h = hash2(i, j, mat.seed)
        cum = np.cumsum(mat.weights)
        idx = np.minimum(np.searchsorted(cum, h * cum[-1]), len(cum) - 1)
        if mat.checker:
            idx = ((i + j).astype(np.int64) & 1) * min(1, len(cum) - 1)
        col = mat.colors[idx] * (1.0 + mat.tile_jitter * (hash2(i, j, mat.seed + 7)[:, None] - 0.5) * 2.0)
        if mat.accent is not None:
            band = np.abs(np.mod(rv, mat.accent_period) - mat.accent_period / 2) - (mat.accent_period / 2 - mat.accent_width)
            col = mix(col, np.broadcast_to(mat.accent, col.shape), coverage(band, fp))
        # far away the individual tiles blur into their mean colour
        w_far = np.clip((fp / min(a, b) - 0.25) / 0.75, 0.0, 1.0)
        col = mix(col, np.broadcast_to(mat.mean_color, col.shape), w_far)
        edge = np.minimum(np.minimum(fu, a - fu), np.minimum(fv, b - fv))
        joint = coverage(mat.joint_m / 2 - edge, fp)
        joint = joint * (1 - w_far) + w_far * np.float32(mat.joint_m * (1 / a + 1 / b))
        col = mix(col, np.broadcast_to(mat.joint_color, col.shape), joint)
    elif mat.kind == "grass":
        base = np.broadcast_to(mat.colors[0], (n, 3))
        stripes = np.sin(np.pi * _rotate(u, v, mat.angle)[0] / mat.tile[0]) * 0.06 / (1 + fp * 2)
        yellow = np.array([0.42, 0.42, 0.18], np.float32)
        col = mix(base, np.broadcast_to(yellow, (n, 3)), np.clip(blotch * 1.5 + 0.2, 0, 1)) * (1 + stripes)[:, None]
        blotch = blotch * 0.3
    else:
        col = np.broadcast_to(mat.colors[0], (n, 3)).copy()
    shade = (1.0 + blotch + grain)[:, None]
    return np.clip(col * shade, 0.0, 1.0).astype(np.float32)


def ground_spots(u: np.ndarray, v: np.ndarray, fp: np.ndarray, seed: int, density: float,
                 cell: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Sparse round spots: (coverage (N,), brightness factor (N,)); at most one per cell, mostly dark."""
    i = np.floor(u / cell)
    j = np.floor(v / cell)
    has = hash2(i, j, seed) < density
    cu = (i + 0.15 + 0.7 * hash2(i, j, seed + 1)) * cell
    cv = (j + 0.15 + 0.7 * hash2(i, j, seed + 2)) * cell
    h3 = hash2(i, j, seed + 3)
    r = 0.05 + 0.3 * h3 * h3
    squash = 0.5 + hash2(i, j, seed + 4)  # some are elongated
    dist = np.sqrt((u - cu) ** 2 + ((v - cv) * squash) ** 2)
    cov = coverage(r - dist, fp) * has
    # far away a spot is a sub-pixel smudge: fade with footprint
    cov = cov / (1.0 + (fp / (2 * r)) ** 2)
    h5 = hash2(i, j, seed + 5)
    tone = np.where(h5 < 0.8, 0.35 + 0.4 * h5, 1.25 + 0.3 * h5)
    return cov.astype(np.float32), tone.astype(np.float32)


SIGN_COLORS = np.array(
    [(0.85, 0.15, 0.12), (0.95, 0.8, 0.2), (0.15, 0.35, 0.75), (0.95, 0.95, 0.95), (0.1, 0.55, 0.35),
     (0.9, 0.45, 0.1), (0.2, 0.2, 0.22)],
    dtype=np.float32,
)


def sign_ink(colour: np.ndarray) -> np.ndarray:
    """Lettering colour that reads on a sign: white on dark signs, near black on light ones."""
    light = (colour @ np.array([0.3, 0.59, 0.11], np.float32)) > 0.5
    return np.where(light[:, None], np.float32(0.08), np.float32(0.95)).astype(np.float32)


def lettering(s: np.ndarray, z: np.ndarray, z0, z1, fp: np.ndarray, seed: int, char_h: float | None = None) -> np.ndarray:
    """Ink coverage of block-glyph text between heights z0 and z1 (one line, or lines of ``char_h`` metres).

    Real shop signs and banners are dense high-contrast strokes at about the
    scale of a far head; a counting model must learn that they are not people.
    """
    z0 = np.broadcast_to(np.asarray(z0, np.float32), z.shape)
    z1 = np.broadcast_to(np.asarray(z1, np.float32), z.shape)
    h = np.maximum(z1 - z0, 1e-3) if char_h is None else np.full(z.shape, char_h, np.float32)
    cw = 0.65 * h
    ci = np.floor(s / cw)
    fx = s / cw - ci
    line = np.floor((z - z0) / h)
    fz = (z - z0) / h - line
    gx = np.floor(fx * 3).astype(np.int64)
    gz = np.floor(fz * 5).astype(np.int64)
    on = hash2(ci.astype(np.int64) * 4 + gx, gz + 8 * line.astype(np.int64), seed) < 0.45
    word = hash2(ci, line, seed + 1) >= 0.15
    inner = (fx > 0.12) & (fx < 0.88) & (fz > 0.12) & (fz < 0.88) & (z >= z0) & (z <= z1)
    ink = (on & word & inner).astype(np.float32)
    # strokes finer than a pixel grey out to their mean (the analytic anti-aliasing of this module)
    far = np.clip((fp / (cw / 4) - 0.5) / 0.5, 0, 1)
    return ink * (1 - far) + far * 0.3 * inner


def shade_ceiling(u: np.ndarray, v: np.ndarray, fp: np.ndarray, spacing: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indoor ceiling: pale panels with a grid of light fittings. Returns (albedo, emission)."""
    base = np.array([0.82, 0.82, 0.8], np.float32) * (1 + noise(u, v, fp, 0.4, seed, 2.0) * 0.03)[:, None]
    du = np.abs(np.mod(u, spacing) - spacing / 2)
    dv = np.abs(np.mod(v, spacing) - spacing / 2)
    light = coverage(np.minimum(0.6 - du, 0.3 - dv), fp)
    emis = light[:, None] * np.array([1.0, 1.0, 0.95], np.float32) * 1.2
    return base, emis.astype(np.float32)


def sky_color(d: np.ndarray, zenith: np.ndarray, horizon: np.ndarray, cloudiness: float, seed: int) -> np.ndarray:
    """Sky radiance for world ray directions d (N, 3)."""
    e = np.clip(d[:, 2], 0.0, 1.0).astype(np.float32)
    t = np.sqrt(e)[:, None]
    col = horizon.astype(np.float32) * (1 - t) + zenith.astype(np.float32) * t
    if cloudiness > 0:
        # clouds on a virtual plane 1 km up
        k = 1000.0 / np.maximum(d[:, 2], 0.03)
        cu = d[:, 0] * k
        cv = d[:, 1] * k
        fp = np.full(len(d), 1.0, np.float32)
        c = noise(cu, cv, fp, 400.0, seed, 4.0) + 0.5 * noise(cu, cv, fp, 120.0, seed + 1, 3.0)
        amount = np.clip((c - (1.2 - 1.6 * cloudiness)) * 0.8, 0, 1) * np.clip(e * 8, 0, 1)
        white = np.maximum(horizon.astype(np.float32), 0.6 * zenith.astype(np.float32) + 0.35)
        col = mix(col, np.broadcast_to(white, col.shape), amount.astype(np.float32))
    return col.astype(np.float32)
