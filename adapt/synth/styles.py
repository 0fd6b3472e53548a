"""Named rendering styles (day, dusk, night_ir, fog, indoor, overcast) and the
per-scene lighting they sample.

A :class:`Style` holds *ranges*; :func:`sample_look` draws one concrete
:class:`Look` per scene (sun direction, light colours, fog, colour grade), so
that a style is a distribution of appearances rather than one fixed look. All
colours are floats in [0, 1], RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Range = tuple[float, float]
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    name: str
    outdoor: bool = True
    thermal: bool = False  # people and warm objects glow, the rest is dark and grey
    grayscale: bool = False
    sun_elevation_deg: Range = (25.0, 70.0)
    sun_intensity: Range = (0.75, 1.0)
    sun_color: RGB = (1.0, 0.97, 0.9)
    ambient: Range = (0.35, 0.55)
    ambient_color: RGB = (0.9, 0.95, 1.03)
    sky_zenith: RGB = (0.35, 0.55, 0.85)
    sky_horizon: RGB = (0.75, 0.83, 0.92)
    cloudiness: Range = (0.0, 0.6)
    fog_distance_m: Range = (250.0, 1500.0)  # e-folding distance of the haze
    fog_color: RGB = (0.78, 0.83, 0.9)
    exposure: Range = (0.9, 1.12)
    contrast: Range = (0.9, 1.1)
    saturation: Range = (0.8, 1.15)
    white_balance_jitter: float = 0.05
    shadow_strength: Range = (0.35, 0.6)
    lamps_on: float = 0.0  # probability that street lamps / lit windows glow
    lamp_intensity: Range = (0.0, 0.0)
    # sensor / optics ranges, consumed by effects.sample_effects
    noise_sigma: Range = (1.0, 4.0)
    blur_sigma: Range = (0.3, 0.9)
    motion_blur_px: Range = (0.0, 2.0)
    jpeg_quality: Range = (55.0, 95.0)
    vignette: Range = (0.0, 0.3)


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("day"),
        Style(
            "overcast",
            sun_intensity=(0.05, 0.2),
            ambient=(0.75, 0.95),
            ambient_color=(0.95, 0.97, 1.02),
            sky_zenith=(0.62, 0.66, 0.72),
            sky_horizon=(0.8, 0.82, 0.85),
            cloudiness=(0.6, 1.0),
            fog_distance_m=(150.0, 600.0),
            fog_color=(0.78, 0.8, 0.83),
            saturation=(0.7, 1.0),
            shadow_strength=(0.0, 0.15),
        ),
        Style(
            "dusk",
            sun_elevation_deg=(2.0, 12.0),
            sun_intensity=(0.35, 0.65),
            sun_color=(1.0, 0.62, 0.35),
            ambient=(0.22, 0.38),
            ambient_color=(0.7, 0.75, 1.05),
            sky_zenith=(0.16, 0.2, 0.42),
            sky_horizon=(0.95, 0.6, 0.38),
            cloudiness=(0.0, 0.7),
            fog_distance_m=(200.0, 800.0),
            fog_color=(0.62, 0.52, 0.5),
            exposure=(1.1, 1.5),  # auto exposure lifts the dim light
            shadow_strength=(0.3, 0.55),
            lamps_on=0.8,
            lamp_intensity=(0.25, 0.6),
            noise_sigma=(2.5, 7.0),
            blur_sigma=(0.4, 1.1),
            jpeg_quality=(45.0, 90.0),
            vignette=(0.1, 0.4),
        ),
        Style(
            "night_ir",
            thermal=True,
            grayscale=True,
            sun_elevation_deg=(60.0, 90.0),
            sun_intensity=(0.0, 0.0),
            ambient=(0.9, 1.0),
            ambient_color=(1.0, 1.0, 1.0),
            sky_zenith=(0.03, 0.03, 0.03),
            sky_horizon=(0.09, 0.09, 0.09),
            cloudiness=(0.0, 0.3),
            fog_distance_m=(150.0, 500.0),
            fog_color=(0.1, 0.1, 0.1),
            exposure=(0.85, 1.15),
            contrast=(0.9, 1.25),
            saturation=(0.0, 0.0),
            white_balance_jitter=0.0,
            shadow_strength=(0.0, 0.0),
            noise_sigma=(4.0, 11.0),
            blur_sigma=(0.6, 1.4),
            motion_blur_px=(0.0, 1.5),
            jpeg_quality=(40.0, 85.0),
            vignette=(0.15, 0.5),
        ),
        Style(
            "fog",
            sun_intensity=(0.05, 0.25),
            ambient=(0.7, 0.9),
            ambient_color=(0.95, 0.97, 1.0),
            sky_zenith=(0.78, 0.8, 0.82),
            sky_horizon=(0.82, 0.83, 0.84),
            cloudiness=(0.8, 1.0),
            fog_distance_m=(14.0, 55.0),
            fog_color=(0.76, 0.78, 0.8),
            contrast=(0.8, 1.0),
            saturation=(0.5, 0.85),
            shadow_strength=(0.0, 0.1),
            noise_sigma=(1.5, 5.0),
            blur_sigma=(0.5, 1.2),
        ),
        Style(
            "indoor",
            outdoor=False,
            sun_elevation_deg=(88.0, 90.0),  # ceiling key light, straight down
            sun_intensity=(0.2, 0.4),
            sun_color=(1.0, 0.97, 0.9),
            ambient=(0.55, 0.8),
            ambient_color=(1.0, 0.98, 0.94),
            fog_distance_m=(300.0, 2000.0),
            fog_color=(0.8, 0.78, 0.74),
            white_balance_jitter=0.09,
            shadow_strength=(0.1, 0.3),
            lamps_on=1.0,
            lamp_intensity=(0.1, 0.3),
            noise_sigma=(1.5, 5.0),
        ),
    )
}


def get_style(style: str | Style) -> Style:
    if isinstance(style, Style):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLES)}") from None


@dataclass(frozen=True, eq=False)
class Look:
    """One scene's concrete lighting and colour grade."""

    style: Style
    sun_dir: np.ndarray  # unit vector from the ground towards the sun
    sun_rgb: np.ndarray
    ambient_rgb: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    cloudiness: float
    fog_distance_m: float
    fog_rgb: np.ndarray
    gain_rgb: np.ndarray  # exposure times white balance
    contrast: float
    saturation: float
    shadow_strength: float
    lamps_on: bool
    lamp_intensity: float

    # -- shading ------------------------------------------------------------------
    def light(self, normal: np.ndarray | None = None, lit: float = 1.0) -> np.ndarray:
        """Irradiance (RGB) for a surface normal; None means a rough cylinder (half-lit)."""
        if normal is None:
            cos = 0.55 * max(self.sun_dir[2], 0.0) + 0.35
        else:
            cos = max(float(np.dot(normal, self.sun_dir)), 0.0)
        return self.ambient_rgb + self.sun_rgb * (cos * lit)

    def fog_factor(self, dist_m: float | np.ndarray) -> float | np.ndarray:
        """Transmittance: 1 near the camera, 0 deep in the fog."""
        return np.exp(-np.asarray(dist_m) / self.fog_distance_m)

    def apply_fog(self, rgb: np.ndarray, dist_m: float | np.ndarray) -> np.ndarray:
        t = self.fog_factor(dist_m)
        if np.ndim(t):
            t = t[..., None]
        return rgb * t + self.fog_rgb * (1.0 - t)

    def grade(self, rgb: np.ndarray) -> np.ndarray:
        """Camera colour response: white balance + exposure, contrast, saturation. Float in, float out."""
        c = np.asarray(rgb, dtype=np.float32) * self.gain_rgb.astype(np.float32)
        c = (c - 0.5) * self.contrast + 0.5
        lum = c @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        c = lum[..., None] + (c - lum[..., None]) * self.saturation
        return np.clip(c, 0.0, 1.0)

    def to_uint8_color(self, rgb: np.ndarray, dist_m: float) -> tuple[float, float, float]:
        """A surface colour seen at distance dist_m, graded, as a cv2 colour tuple (0-255)."""
        c = self.grade(self.apply_fog(np.asarray(rgb, dtype=np.float64), dist_m)) * 255.0
        return (float(c[0]), float(c[1]), float(c[2]))


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def sample_look(rng: np.random.Generator, style: Style) -> Look:
    elev = math.radians(_u(rng, style.sun_elevation_deg))
    azim = rng.uniform(0.0, 2.0 * math.pi)
    sun_dir = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
    sun_rgb = np.array(style.sun_color) * _u(rng, style.sun_intensity)
    ambient_rgb = np.array(style.ambient_color) * _u(rng, style.ambient)
    wb = 1.0 + rng.normal(0.0, style.white_balance_jitter, 3) if style.white_balance_jitter > 0 else np.ones(3)
    wb = wb / wb.mean()
    return Look(
        style=style,
        sun_dir=sun_dir,
        sun_rgb=sun_rgb,
        ambient_rgb=ambient_rgb,
        sky_zenith=np.array(style.sky_zenith) * rng.uniform(0.9, 1.1),
        sky_horizon=np.array(style.sky_horizon) * rng.uniform(0.92, 1.08),
        cloudiness=_u(rng, style.cloudiness),
        fog_distance_m=_u(rng, style.fog_distance_m),
        fog_rgb=np.array(style.fog_color) * rng.uniform(0.93, 1.07),
        gain_rgb=wb * _u(rng, style.exposure),
        contrast=_u(rng, style.contrast),
        saturation=_u(rng, style.saturation),
        shadow_strength=_u(rng, style.shadow_strength),
        lamps_on=bool(rng.random() < style.lamps_on),
        lamp_intensity=_u(rng, style.lamp_intensity),
    )
