"""Drawing the live overlay: density heatmap, zones and a status header on a frame.

Pure functions of numpy arrays (BGR, as OpenCV draws and encodes), so the web
server can render one image per result and share its JPEG across viewers.

Coordinates (all in :func:`view_geometry`, nowhere else):

* zones in the config are pixels of the camera's *source* frame;
* the result's image is the *model input*: the source made so by the result's
  ``fit`` (``crowdwatch.fit.Fit``: one uniform scale, content at the top-left,
  zero padding right and bottom), possibly sent at a reduced size;
* the overlay crops the padding and scales the content to a display width, so
  text sizes do not depend on the camera's resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from crowdwatch.fit import Fit
from crowdwatch.result import Result

LIVE, STALE, NO_DATA = "live", "stale", "no data"
STATES = (LIVE, STALE, NO_DATA)

# Display width range: small frames are enlarged so the header stays readable,
# big ones shrunk so an MJPEG stream stays cheap.
MIN_DISPLAY_W, MAX_DISPLAY_W = 640, 960
HEADER_H = 52
JPEG_QUALITY = 80

# Heatmap: colour scale tops out at the frame's peak, but never below this many
# people per 8x8 cell, so a near-empty scene does not glow red.
FULL_SCALE_FLOOR = 0.05
# Cells below max(EPS_ABS, EPS_REL * full scale) stay uncoloured: the model's
# near-zero background would otherwise tint the whole frame.
EPS_ABS, EPS_REL = 1e-3, 0.04
ALPHA_MIN, ALPHA_MAX = 0.30, 0.70
COLORMAP = cv2.COLORMAP_TURBO

FONT = cv2.FONT_HERSHEY_DUPLEX
# BGR colours (dark control-room palette).
BG = (30, 26, 24)
PANEL = (44, 38, 35)
TEXT = (235, 235, 235)
MUTED = (165, 160, 155)
ALERT = (70, 70, 235)
BADGE = {LIVE: (72, 160, 56), STALE: (0, 140, 235), NO_DATA: (110, 105, 100)}
ZONE_LINE = (255, 255, 255)
ZONE_SHADOW = (0, 0, 0)


@dataclass(frozen=True)
class CameraView:
    """The per-camera constants the overlay needs (from config.CameraConfig)."""

    name: str
    input_size: tuple[int, int]  # configured model box (w, h), for the placeholder's shape
    zones: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    people_threshold: float | None = None


@dataclass(frozen=True)
class Status:
    """What the header says about the camera besides its figures."""

    state: str  # LIVE, STALE or NO_DATA
    age_s: float | None = None  # seconds since the last result arrived


@dataclass(frozen=True)
class Geometry:
    """How the received image and the config's zones land on the overlay."""

    crop: tuple[int, int]  # (w, h) of the scene at the top-left of the received image
    out_size: tuple[int, int]  # (w, h) of the overlay's picture area
    zone_scale: float  # overlay pixels per source (config) pixel


# --------------------------------------------------------------------------- geometry


def display_size(w: int, h: int) -> tuple[int, int]:
    """(w, h) scaled, aspect kept, to a width within [MIN_DISPLAY_W, MAX_DISPLAY_W]."""
    dw = min(MAX_DISPLAY_W, max(MIN_DISPLAY_W, w))
    return dw, max(1, round(h * dw / w))


def view_geometry(image_size: tuple[int, int], fit: Fit) -> Geometry:
    """The one place that maps config (source) pixels onto the drawn picture.

    ``image_size`` is the received image (w, h); ``fit`` made the model input
    from the camera frame.
    """
    # The image may travel smaller than the model input (a preview): same framing.
    k = image_size[0] / fit.out_w
    crop_w = min(image_size[0], max(1, round(fit.content_w * k)))
    crop_h = min(image_size[1], max(1, round(fit.content_h * k)))
    out = display_size(crop_w, crop_h)
    return Geometry(crop=(crop_w, crop_h), out_size=out, zone_scale=fit.scale * k * out[0] / crop_w)


def zone_points(points: Sequence[tuple[float, float]], geo: Geometry) -> np.ndarray:
    """Zone polygon in overlay picture pixels, int32 for cv2.polylines."""
    return np.round(np.asarray(points, dtype=np.float64) * geo.zone_scale).astype(np.int32)


# --------------------------------------------------------------------------- heatmap


def blend_heatmap(bgr: np.ndarray, density: np.ndarray) -> np.ndarray:
    """``bgr`` with the density map colour-blended where there are people.

    ``density`` is people per cell at any resolution covering the same area as
    ``bgr``; it is upsampled bilinearly to the image.
    """
    h, w = bgr.shape[:2]
    d = cv2.resize(np.asarray(density, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    np.maximum(d, 0.0, out=d)
    full = max(float(density.max(initial=0.0)), FULL_SCALE_FLOOR)
    norm = np.clip(d / full, 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), COLORMAP)
    alpha = np.where(d > max(EPS_ABS, EPS_REL * full), ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * norm, 0.0)
    alpha = alpha.astype(np.float32)[..., None]
    out = bgr.astype(np.float32) * (1.0 - alpha) + heat.astype(np.float32) * alpha
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- text


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    (w, h), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return w, h


def _fit(text: str, max_w: int, scale: float, thickness: int) -> str:
    """``text`` shortened with '..' until it fits ``max_w`` pixels (long names, versions)."""
    if max_w <= 0:
        return ""
    if _text_size(text, scale, thickness)[0] <= max_w:
        return text
    while text and _text_size(text + "..", scale, thickness)[0] > max_w:
        text = text[:-1]
    return text + ".." if text else ""


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int],
         thickness: int = 1, shadow: bool = False) -> int:  # fmt: skip
    """Draw text with its baseline at ``org``; returns the x just after it."""
    if shadow:
        cv2.putText(img, text, (org[0] + 1, org[1] + 1), FONT, scale, ZONE_SHADOW, thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, color, thickness, cv2.LINE_AA)
    return org[0] + _text_size(text, scale, thickness)[0]


def _plus_minus(img: np.ndarray, x: int, baseline: int, size: int, color: tuple[int, int, int]) -> int:
    # Hershey fonts are ASCII only: draw the "±" glyph from lines.
    cx, cy, r = x + size // 2 + 3, baseline - size // 2 - 3, size // 2
    cv2.line(img, (cx - r, cy), (cx + r, cy), color, 2, cv2.LINE_AA)
    cv2.line(img, (cx, cy - r), (cx, cy + r), color, 2, cv2.LINE_AA)
    cv2.line(img, (cx - r, baseline), (cx + r, baseline), color, 2, cv2.LINE_AA)
    return x + size + 8


def format_count(value: float) -> str:
    """Whole people from 10 up; one decimal below, where the fraction still says something."""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def format_age(age_s: float) -> str:
    if age_s < 120:
        return f"{age_s:.0f} s"
    if age_s < 7200:
        return f"{age_s / 60:.0f} min"
    return f"{age_s / 3600:.0f} h"


# --------------------------------------------------------------------------- header


def _badge(img: np.ndarray, status: Status, right: int) -> int:
    """State badge right-aligned at ``right``; returns its left edge."""
    label = status.state.upper()
    if status.state == STALE and status.age_s is not None:
        label = f"STALE {format_age(status.age_s)}"
    tw, th = _text_size(label, 0.55, 1)
    x0, y0 = right - tw - 20, (HEADER_H - th) // 2 - 6
    cv2.rectangle(img, (x0, y0), (right, y0 + th + 12), BADGE[status.state], -1, cv2.LINE_AA)
    _put(img, label, (x0 + 10, y0 + th + 6), 0.55, (255, 255, 255))
    return x0


def draw_header(
    width: int,
    camera: str,
    status: Status,
    *,
    count: float | None = None,
    uncertainty: float | None = None,
    model_version: str | None = None,
    alert: bool = False,
) -> np.ndarray:
    """The status bar above the picture: camera, count ± std, model version, state."""
    bar = np.full((HEADER_H, width, 3), PANEL, np.uint8)
    cv2.line(bar, (0, HEADER_H - 1), (width, HEADER_H - 1), BADGE[status.state], 2)
    base = HEADER_H // 2 + 9
    badge_x = _badge(bar, status, width - 12)
    x = _put(bar, _fit(camera, width // 3, 0.7, 1), (14, base), 0.7, TEXT) + 22
    if count is not None:
        color = ALERT if alert else TEXT
        if status.state != LIVE:
            color = MUTED
        x = _put(bar, format_count(count), (x, base + 2), 1.05, color, 2) + 6
        if uncertainty is not None:
            x = _plus_minus(bar, x, base + 2, 14, color)
            x = _put(bar, format_count(uncertainty), (x, base + 2), 0.8, color, 1)
        x = _put(bar, "people", (x + 8, base + 2), 0.5, MUTED) + 16
    if model_version:
        text = _fit(f"model {model_version}", badge_x - x - 12, 0.45, 1)
        if text:
            tw, _ = _text_size(text, 0.45, 1)
            _put(bar, text, (badge_x - tw - 12, base), 0.45, MUTED)
    return bar


# --------------------------------------------------------------------------- frames


def _draw_zones(img: np.ndarray, zones: Mapping[str, Sequence[tuple[float, float]]],
                counts: Mapping[str, float], geo: Geometry) -> None:  # fmt: skip
    for points in zones.values():
        poly = zone_points(points, geo)
        cv2.polylines(img, [poly], True, ZONE_SHADOW, 4, cv2.LINE_AA)
        cv2.polylines(img, [poly], True, ZONE_LINE, 2, cv2.LINE_AA)
    # Labels after all outlines, so no outline crosses a label.
    h, w = img.shape[:2]
    for name, points in zones.items():
        poly = zone_points(points, geo)
        value = counts.get(name)
        label = f"{name}  {format_count(value) if value is not None else 'n/a'}"
        tw, th = _text_size(label, 0.55, 1)
        # Above the polygon's top edge, kept inside the picture.
        top = poly[np.argmin(poly[:, 1])]
        x = int(np.clip(poly[:, 0].mean() - tw / 2, 4, max(4, w - tw - 12)))
        y = int(np.clip(top[1] - 8, th + 10, h - 6))
        cv2.rectangle(img, (x - 6, y - th - 7), (x + tw + 6, y + 6), BG, -1)
        cv2.rectangle(img, (x - 6, y - th - 7), (x + tw + 6, y + 6), ZONE_LINE, 1)
        _put(img, label, (x, y), 0.55, TEXT)


def _grey_out(img: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor((grey * 0.45).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _centre_banner(img: np.ndarray, lines: Sequence[str], color: tuple[int, int, int], y_frac: float = 0.5) -> None:
    """A boxed message centred horizontally, its centre at ``y_frac`` of the height."""
    h, w = img.shape[:2]
    sizes = [_text_size(t, 0.8 if i == 0 else 0.55, 2 if i == 0 else 1) for i, t in enumerate(lines)]
    box_w = max(s[0] for s in sizes) + 48
    box_h = sum(s[1] for s in sizes) + 18 * len(lines) + 22
    x0, y0 = (w - box_w) // 2, max(0, int(h * y_frac - box_h / 2))
    cv2.rectangle(img, (x0, y0), (x0 + box_w, y0 + box_h), BG, -1)
    cv2.rectangle(img, (x0, y0), (x0 + box_w, y0 + box_h), color, 2)
    y = y0 + 16
    for i, (text, (tw, th)) in enumerate(zip(lines, sizes)):
        y += th + 14
        _put(img, text, ((w - tw) // 2, y), 0.8 if i == 0 else 0.55, color if i == 0 else TEXT, 2 if i == 0 else 1)


def render_result(view: CameraView, status: Status, result: Result) -> np.ndarray:
    """Header + (frame or dark canvas) with heatmap and zones; BGR uint8.

    The result's image is the RGB model input as received (None: the heatmap
    is drawn on a dark canvas of the input's size, so the density still shows).
    """
    fit, image, m = result.fit, result.image, result.figures
    if image is None:
        bgr = np.full((fit.out_h, fit.out_w, 3), BG, np.uint8)
    else:
        bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    geo = view_geometry((bgr.shape[1], bgr.shape[0]), fit)
    # Scale first, then blend and crop: the per-pixel work is at display size, however big the frame.
    s = geo.out_size[0] / geo.crop[0]
    scaled = (max(1, round(bgr.shape[1] * s)), max(1, round(bgr.shape[0] * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    pic = blend_heatmap(cv2.resize(bgr, scaled, interpolation=interp), np.asarray(result.density))[: geo.out_size[1], : geo.out_size[0]]
    if (pic.shape[1], pic.shape[0]) != geo.out_size:  # a pixel lost to rounding
        pic = cv2.resize(pic, geo.out_size, interpolation=cv2.INTER_LINEAR)
    if status.state != LIVE:
        pic = _grey_out(pic)
    _draw_zones(pic, view.zones, m.zones, geo)
    if status.state == STALE:
        since = f"last result {format_age(status.age_s)} ago" if status.age_s is not None else "no recent result"
        # High in the picture: zone labels tend to sit lower, on the ground.
        _centre_banner(pic, ["STALE", since], BADGE[STALE], y_frac=0.3)
    if image is None:
        _put(pic, "no video in results", (12, pic.shape[0] - 14), 0.5, MUTED)
    alert = view.people_threshold is not None and m.count > view.people_threshold
    header = draw_header(
        pic.shape[1], view.name, status, count=m.count, uncertainty=m.uncertainty, model_version=result.model_version, alert=alert
    )
    return np.vstack([header, pic])


def render_placeholder(view: CameraView, status: Status = Status(NO_DATA)) -> np.ndarray:
    """'waiting for <camera>' on a dark canvas shaped like the camera's model box."""
    w, h = display_size(*view.input_size)
    pic = np.full((h, w, 3), BG, np.uint8)
    # A faint grid, so the tile reads as an empty video area rather than a broken image.
    for x in range(0, w, 40):
        cv2.line(pic, (x, 0), (x, h), PANEL, 1)
    for y in range(0, h, 40):
        cv2.line(pic, (0, y), (w, y), PANEL, 1)
    _centre_banner(pic, [f"waiting for {view.name}", "no result received yet"], MUTED)
    return np.vstack([draw_header(w, view.name, status), pic])


def encode_jpeg(bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()

