"""Ground layouts: which surface lies where, in a frame aligned with the street.

A layout is a base material plus bands (roads, pavements, paths, lawns) along
or across the street axis, painted markings (lane lines, zebra crossings) and
sparse spots (stains, drains), all evaluated per ground point in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .styles import Style
from .textures import GroundMaterial, coverage, ground_spots, sample_ground_material, shade_ground


@dataclass(eq=False)
class Band:
    """A strip of one material across the layout frame: axis 'a' (along the street) or 'c' (across)."""

    axis: str
    lo: float
    hi: float
    material: GroundMaterial


@dataclass(eq=False)
class Marking:
    """Paint on the ground: a solid or dashed line, or zebra stripes, in the layout frame."""

    kind: str  # solid | dash | zebra
    axis: str  # the line runs along the other axis; lo/hi bound it on this axis
    lo: float
    hi: float
    color: np.ndarray
    period: float = 0.0  # dash / zebra period along the line
    extent: tuple[float, float] = (-1e9, 1e9)  # limits along the line


@dataclass(eq=False)
class GroundLayout:
    kind: str  # plaza | street | pedestrian | park | hall
    angle: float  # street axis, radians from world X
    base: GroundMaterial
    bands: list[Band] = field(default_factory=list)
    markings: list[Marking] = field(default_factory=list)
    spots: float = 0.0  # density of small stains, drains and litter (per 2.5 m cell)
    seed: int = 0

    def frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return x * c + y * s, -x * s + y * c

    def material_index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0 for the base material, k for bands[k-1] (later bands win)."""
        a, c = self.frame(x, y)
        idx = np.zeros(np.shape(x), np.int32)
        for k, b in enumerate(self.bands):
            q = a if b.axis == "a" else c
            idx[(q >= b.lo) & (q < b.hi)] = k + 1
        return idx

    def materials(self) -> list[GroundMaterial]:
        return [self.base] + [b.material for b in self.bands]

    def crowd_weight(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w = np.array([m.crowd_weight for m in self.materials()], np.float32)
        return w[self.material_index(x, y)]

    def albedo(self, x: np.ndarray, y: np.ndarray, fp: np.ndarray) -> np.ndarray:
        a, c = self.frame(x, y)
        idx = self.material_index(x, y)
        out = np.empty((len(x), 3), np.float32)
        for k, m in enumerate(self.materials()):
            sel = idx == k
            if sel.any():
                out[sel] = shade_ground(m, a[sel], c[sel], fp[sel])
        # soft seams between materials (kerbs, lawn edges)
        for b in self.bands:
            q = a if b.axis == "a" else c
            for edge in (b.lo, b.hi):
                kerb = coverage(0.09 - np.abs(q - edge), fp)
                if kerb.any():
                    out = out + (np.float32(0.62) - out) * kerb[:, None].astype(np.float32) * 0.8
        for m in self.markings:
            out = _paint(out, m, a, c, fp)
        if self.spots > 0:
            cov, tone = ground_spots(a, c, fp, self.seed, self.spots)
            out = out * (1.0 + (tone - 1.0) * cov)[:, None]
        return out


def _paint(out: np.ndarray, m: Marking, a: np.ndarray, c: np.ndarray, fp: np.ndarray) -> np.ndarray:
    across, along = (a, c) if m.axis == "a" else (c, a)
    mid, half = (m.lo + m.hi) / 2, (m.hi - m.lo) / 2
    cov = coverage(half - np.abs(across - mid), fp)
    cov = cov * coverage(np.minimum(along - m.extent[0], m.extent[1] - along), fp)
    if m.kind in ("dash", "zebra") and m.period > 0:
        ph = np.abs(np.mod(along, m.period) - m.period / 2) - m.period / 4
        dash = coverage(ph, fp)
        far = np.clip(fp / m.period * 2, 0, 1)
        cov = cov * (dash * (1 - far) + 0.5 * far)
    if not cov.any():
        return out
    wear = 0.85
    return out + (m.color.astype(np.float32) - out) * (cov * wear)[:, None].astype(np.float32)


def sample_layout(rng: np.random.Generator, style: Style, centre_c: float, angle: float) -> GroundLayout:
    lay = _sample_layout(rng, style, centre_c, angle)
    # head-sized dark blobs on the ground (gum, drains, stains) are the hard negatives real pavements are full of
    lay.spots = float(rng.uniform(0.02, 0.35)) if rng.random() < 0.8 else 0.0
    lay.seed = int(rng.integers(0, 1 << 30))
    return lay


def _sample_layout(rng: np.random.Generator, style: Style, centre_c: float, angle: float) -> GroundLayout:
    if not style.outdoor:
        base = sample_ground_material(rng, "tiles")
        lay = GroundLayout("hall", angle, base)
        if rng.random() < 0.5:
            w = rng.uniform(2.0, 6.0)
            lay.bands.append(Band("c", centre_c - w / 2, centre_c + w / 2, sample_ground_material(rng, "tiles")))
        return lay
    kind = str(rng.choice(["plaza", "street", "pedestrian", "park"], p=[0.32, 0.28, 0.26, 0.14]))
    white = np.array([0.88, 0.88, 0.85], np.float32)
    yellow = np.array([0.85, 0.7, 0.15], np.float32)
    if kind == "plaza":
        lay = GroundLayout(kind, angle, sample_ground_material(rng, str(rng.choice(["pavers", "pavers", "tiles"]))))
        if rng.random() < 0.35:
            side = rng.choice([-1, 1])
            lo = centre_c + side * rng.uniform(4, 15)
            lay.bands.append(Band("c", min(lo, lo + side * 30), max(lo, lo + side * 30),
                                  sample_ground_material(rng, str(rng.choice(["grass", "asphalt", "pavers"])))))
        return lay
    if kind == "pedestrian":
        w = rng.uniform(8.0, 25.0)
        off = centre_c + rng.normal(0, 3)
        lay = GroundLayout(kind, angle, sample_ground_material(rng, "pavers"))
        lay.bands.append(Band("c", off - w / 2, off + w / 2, sample_ground_material(rng, "pavers")))
        return lay
    if kind == "street":
        road = rng.uniform(6.0, 14.0)
        off = centre_c + rng.normal(0, road * 0.6)
        walk = rng.uniform(3.0, 8.0)
        lay = GroundLayout(kind, angle, sample_ground_material(rng, str(rng.choice(["pavers", "pavers", "grass"]))))
        side = sample_ground_material(rng, "pavers")
        lay.bands.append(Band("c", off - road / 2 - walk, off + road / 2 + walk, side))
        lay.bands.append(Band("c", off - road / 2, off + road / 2, sample_ground_material(rng, "asphalt")))
        col = yellow if rng.random() < 0.3 else white
        lay.markings.append(Marking("dash", "c", off - 0.06, off + 0.06, col, period=rng.uniform(6, 12)))
        if rng.random() < 0.5:
            a0 = rng.uniform(-10, 10)
            lay.markings.append(Marking("zebra", "a", a0, a0 + rng.uniform(3, 5), white, period=1.0,
                                        extent=(off - road / 2, off + road / 2)))
        return lay
    # park: lawn with a path or two
    lay = GroundLayout(kind, angle, sample_ground_material(rng, "grass"))
    w = rng.uniform(3.0, 10.0)
    off = centre_c + rng.normal(0, 3)
    lay.bands.append(Band("c", off - w / 2, off + w / 2, sample_ground_material(rng, str(rng.choice(["pavers", "gravel", "asphalt"])))))
    if rng.random() < 0.5:
        a0 = rng.uniform(-15, 15)
        w2 = rng.uniform(2.5, 6.0)
        lay.bands.append(Band("a", a0, a0 + w2, lay.bands[0].material))
    return lay
