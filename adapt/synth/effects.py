"""Camera and sensor effects applied to a finished frame: vignetting, optical
and slight motion blur, signal-dependent sensor noise and JPEG artefacts.

Lighting and colour shifts (white balance, exposure, contrast, saturation,
fog) are part of the scene's Look and are applied while colours are computed,
so this module only does what happens inside the camera. Parameters are drawn
once per scene (a camera keeps its optics and compression); the noise is drawn
fresh for every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from .styles import Style


@dataclass(frozen=True)
class EffectParams:
    width: int
    height: int
    blur_sigma: float
    motion_px: float
    motion_angle: float
    noise_sigma: float  # at mid grey, in 0-255 units
    chroma_noise: float  # fraction of the noise that differs per channel
    jpeg_quality: int
    vignette: float  # corner darkening, 0..1
    grayscale: bool

    @cached_property
    def vignette_gain(self) -> np.ndarray | None:
        """(H, W, 1) float32 multiplicative falloff (cos^4-like), or None when negligible."""
        if self.vignette < 0.02:
            return None
        y, x = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        r2 = ((x - self.width / 2) ** 2 + (y - self.height / 2) ** 2) / ((self.width / 2) ** 2 + (self.height / 2) ** 2)
        return (1.0 - self.vignette * r2 ** 1.5)[..., None].astype(np.float32)

    @cached_property
    def motion_kernel(self) -> np.ndarray | None:
        if self.motion_px < 0.75:
            return None
        n = int(math.ceil(self.motion_px)) * 2 + 1
        k = np.zeros((n, n), np.float32)
        c = n // 2
        dx, dy = math.cos(self.motion_angle), math.sin(self.motion_angle)
        for t in np.linspace(-self.motion_px / 2, self.motion_px / 2, 4 * n):
            k[int(round(c + t * dy)), int(round(c + t * dx))] += 1.0
        return k / k.sum()


def sample_effects(rng: np.random.Generator, style: Style, width: int, height: int) -> EffectParams:
    u = lambda r: float(rng.uniform(*r)) if r[1] > r[0] else float(r[0])  # noqa: E731
    motion = u(style.motion_blur_px) if rng.random() < 0.4 else 0.0
    return EffectParams(
        width=width,
        height=height,
        blur_sigma=u(style.blur_sigma),
        motion_px=motion,
        motion_angle=float(rng.uniform(0, math.pi)),
        noise_sigma=u(style.noise_sigma),
        chroma_noise=0.0 if style.grayscale else float(rng.uniform(0.1, 0.5)),
        jpeg_quality=int(round(u(style.jpeg_quality))),
        vignette=u(style.vignette),
        grayscale=style.grayscale,
    )


def apply_effects(img: np.ndarray, p: EffectParams, rng: np.random.Generator) -> np.ndarray:
    """Optics then sensor then compression, on an RGB uint8 frame; returns a new frame."""
    out = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if p.grayscale else img
    if p.blur_sigma >= 0.25:
        out = cv2.GaussianBlur(out, (0, 0), p.blur_sigma)
    if p.motion_kernel is not None:
        out = cv2.filter2D(out, -1, p.motion_kernel)
    lum = out if p.grayscale else cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    f = out.astype(np.float32)
    gain = p.vignette_gain
    if gain is not None:
        f *= gain[..., 0] if p.grayscale else gain
        lum = lum * gain[..., 0]
    if p.noise_sigma > 0:
        # shot noise grows with the signal, read noise is a floor; chroma noise is blotchy (demosaicing)
        sig = p.noise_sigma * np.sqrt(0.25 + lum.astype(np.float32) * np.float32(1 / 170.0))
        noise = rng.standard_normal((p.height, p.width), dtype=np.float32)
        if p.grayscale:
            f += noise * sig
        else:
            n = (noise * (1 - p.chroma_noise))[..., None]
            if p.chroma_noise > 0:
                ch = rng.standard_normal((p.height // 2 + 1, p.width // 2 + 1, 3), dtype=np.float32)
                ch = cv2.resize(ch, (p.width, p.height), interpolation=cv2.INTER_LINEAR)
                n = n + ch * np.float32(1.5 * p.chroma_noise)
            f += n * sig[..., None]
    np.clip(f, 0, 255, out=f)
    out = f.astype(np.uint8)
    if p.grayscale:
        out = cv2.merge([out, out, out])
    if p.jpeg_quality < 98:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
        if ok:
            out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out
