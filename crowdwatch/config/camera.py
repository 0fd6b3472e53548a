"""[defaults] and [cameras.X]: source, frame size, zones, calibration, thresholds, adaptation, buffer.

``CameraSettings`` is every per-camera key but ``url``: what [defaults] may
hold. ``CameraConfig`` adds the source and the derived properties the stages
use (``source_kind``, ``input_size``, ``redacted_url()``, ``file_path``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import annotated_types
import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, ValidationInfo, WithJsonSchema, field_validator, model_validator

from crowdwatch import geometry

from .adaptation import AdaptConfig
from .base import Flag, Integer, Number, Section, Text, base_dir
from .buffer import BufferSettings
from .errors import ConfigWarning, Found, fail
from .names import ZoneName
from .synthetic import SyntheticOptionError, parse_synthetic
from .units import Duration

SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https", "file", "synthetic")
# Schemes that, written without "://", are a typo rather than a file or folder name.
_SCHEME_LIKE = (*SOURCE_SCHEMES, "rtmp", "rtmps", "srt", "udp", "tcp", "ftp", "sftp", "ipc")
URL_EXPECTED = "a source URL: rtsp://, rtsps://, http(s)://, file://, synthetic://?... or a file path"

Point = tuple[float, float]


def _points(minimum: int) -> Any:
    """A list of at least ``minimum`` [x, y] pairs of finite numbers, as a tuple of float pairs."""
    expected = f"a list of at least {minimum} [x, y] number pairs"

    def check(value: object) -> tuple[Point, ...]:
        if not isinstance(value, (list, tuple)) or len(value) < minimum:
            raise fail(expected, value)
        out = []
        for i, pt in enumerate(value):
            if (
                not isinstance(pt, (list, tuple))
                or len(pt) != 2
                or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in pt)
            ):
                raise fail("an [x, y] pair of finite numbers", pt, key=(i,))
            out.append((float(pt[0]), float(pt[1])))
        return tuple(out)

    return Annotated[tuple[Point, ...], BeforeValidator(check), annotated_types.MinLen(minimum)]


Polygon = Annotated[_points(3), AfterValidator(lambda pts: _simple_polygon(pts))]


def _simple_polygon(pts: tuple[Point, ...]) -> tuple[Point, ...]:
    crossing = geometry.self_crossing(pts)
    if crossing is not None:
        i, j = crossing
        n = len(pts)
        raise fail("a polygon whose edges do not cross (list the points in order around the zone)",
                   Found(f"edge {list(pts[i])}-{list(pts[(i + 1) % n])} meets edge {list(pts[j])}-{list(pts[(j + 1) % n])}"))  # fmt: skip
    if geometry.polygon_area(np.asarray(pts)) <= 0:
        raise fail("a polygon with a non-zero area", [list(p) for p in pts])
    return pts


def _read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


Zones = Annotated[
    Mapping[ZoneName, Polygon],
    AfterValidator(_read_only),
    WithJsonSchema({
        "type": "object",
        "propertyNames": {"pattern": "^[a-z0-9_-]{1,64}$"},
        "additionalProperties": {"type": "array", "minItems": 3, "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
    }),
]  # fmt: skip


class Thresholds(Section):
    """Exported as crowd_*_threshold gauges for the alert rules."""

    people: Number = Field(150.0, ge=0, description="crowd_people above this -> CrowdPeopleAboveThreshold")
    density_per_m2: Number = Field(4.0, gt=0, description="local density counted in crowd_area_over_density_ratio")
    close_pairs: Number = Field(20.0, ge=0, description="crowd_close_pairs above this -> CrowdDistancingRisk")
    area_over_density_ratio: Number = Field(0.1, ge=0, le=1, description="share of the area above density_per_m2 -> alert")
    uncertainty: Number = Field(10.0, ge=0, description="std of the count (people) -> CrowdModelUncertain")
    latency_p95_s: Duration = Field(2.0, gt=0, alias="latency_p95", description="p95 capture-to-metrics latency -> CrowdInferenceLagging")
    stall_s: Duration = Field(60.0, ge=1, alias="stall", description="no result for this long -> CrowdCameraStalled")


class Calibration(Section):
    """Four or more image points (source pixels) and where they lie on the ground (metres)."""

    image: _points(4) = Field(description="points in the camera's own frame, pixels")  # type: ignore[valid-type]
    ground: _points(4) = Field(description="the same points on the ground plane, metres")  # type: ignore[valid-type]
    max_cell_area_m2: Number = Field(
        geometry.DEFAULT_MAX_CELL_AREA_M2, gt=0, description="cells covering more ground than this are too far to count"
    )

    @model_validator(mode="after")
    def _homography(self) -> Calibration:
        if len(self.image) != len(self.ground):
            raise fail(f"as many points as calibration.image ({len(self.image)})", len(self.ground), key="ground")
        try:
            geometry.fit_homography(self.image, self.ground)
        except ValueError as exc:
            raise fail("image and ground points that define a ground-plane homography", Found(str(exc))) from None
        return self


def multiple_of_32(description: str, default: int) -> Any:
    return Field(default, ge=32, le=4096, multiple_of=32, description=description)


class CameraSettings(Section):
    """Every per-camera key but the source: what [defaults] holds."""

    fps: Number = Field(1.0, gt=0, le=60, description="inference frames per second")
    loop: Flag = Field(True, description="files: restart at the end")
    realtime: Flag = Field(True, description="files: pace at the file's own rate; live rtsp/http cameras are never paced")
    width: Integer = multiple_of_32("model input width; a multiple of 32, the aspect is kept (letterbox)", 640)
    height: Integer = multiple_of_32("model input height; a multiple of 32", 480)
    zones: Zones = Field(default_factory=lambda: MappingProxyType({}), description="named polygons, pixels of the camera's own frame")
    calibration: Calibration | None = Field(None, description="ground-plane calibration; without it distances are in model-input pixels")
    distance_m: Number = Field(1.5, gt=0, le=100, description="social-distancing distance, metres (calibrated cameras)")
    distance_px: Number = Field(
        geometry.DEFAULT_DISTANCE_PX, gt=0, le=4096, description="the same, in model-input pixels, for uncalibrated cameras"
    )
    thresholds: Thresholds = Field(default_factory=Thresholds, description="alert thresholds")
    adapt: AdaptConfig = Field(default_factory=AdaptConfig, description="adaptation schedule and gate")
    buffer: BufferSettings = Field(default_factory=BufferSettings, description="frames kept for adaptation")

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.width, self.height)


def check_url(text: str) -> str | None:
    """Why ``text`` is not a camera source, or None."""
    if not text:
        return URL_EXPECTED
    if "://" not in text:
        # A plain path, unless its first segment looks like a scheme that lost its "://".
        first = text.split("/", 1)[0]
        m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", first)
        if m or (first.lower() in _SCHEME_LIKE and "/" in text):
            return f"{URL_EXPECTED} (a URL needs '://'; start a file path with ./)"
        return None
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SOURCE_SCHEMES:
        return URL_EXPECTED
    if scheme in ("rtsp", "rtsps", "http", "https"):
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return f"{URL_EXPECTED} (bad port)"
        return None if parts.hostname else f"{URL_EXPECTED} (missing host)"
    if scheme == "file":
        return None if parts.path else f"{URL_EXPECTED} (missing path)"
    # synthetic://?people=60&style=day&ramp=0:200:600
    if parts.netloc or parts.path not in ("", "/"):
        return "synthetic://?key=value&... (options go in the query)"
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=False, strict_parsing=bool(parts.query))
    except ValueError:
        return "synthetic://?key=value&... with well-formed options"
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)) or not all(re.fullmatch(r"[a-z_]+", k) for k in keys):
        return "synthetic://?key=value&... with distinct lowercase option names"
    return None


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _file_path(url: str, anchor: Path) -> Path | None:
    if "://" in url and not url.lower().startswith("file://"):
        return None
    raw = urlsplit(url).path if url.lower().startswith("file://") else url
    p = Path(raw).expanduser()
    return p if p.is_absolute() else anchor / p


class CameraConfig(CameraSettings):
    """One camera: [defaults] deep-merged with its [cameras.<name>] table."""

    url: Text = Field(description='source: rtsp(s)://, http(s)://, file://, synthetic://?people=60&style=day, or a file path')
    shard: Integer | None = Field(
        None, ge=0, le=63, description="the inference worker (0 to [server] infer_workers - 1) that serves this camera; "
        "default: a stable hash of its name (docs/DEPLOY.md, Scale-out)",
    )  # fmt: skip
    _name: str = PrivateAttr("")
    _file_path: Path | None = PrivateAttr(None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        problem = check_url(url)
        if problem:
            raise fail(problem, url)  # the error shows the unexpanded text (loader)
        if urlsplit(url).scheme.lower() == "synthetic":
            try:
                parse_synthetic(urlsplit(url).query)
            except SyntheticOptionError as exc:
                raise fail(f"a synthetic:// URL with {exc.expected}", Found(exc.found)) from None
        return url

    @model_validator(mode="after")
    def _resolve_file(self, info: ValidationInfo) -> CameraConfig:
        self._file_path = _file_path(self.url, base_dir(info))
        return self

    @model_validator(mode="after")
    def _zones_in_frame(self) -> CameraConfig:
        # Zones are in the camera's own pixels. Only a synthetic camera's frame size is known
        # before its stream opens (infer checks the others on their first frame).
        size = self.frame_size
        inside = f"a point inside the camera's {size[0]}x{size[1]} frame (x in 0..{size[0]}, y in 0..{size[1]})" if size else \
            "a point inside the camera's frame (pixel coordinates are not negative)"
        for zone, pts in self.zones.items():
            i = geometry.point_outside(pts, size)
            if i is not None:
                raise fail(inside, list(pts[i]), key=("zones", zone, i))
        return self

    @property
    def name(self) -> str:
        return self._name

    @property
    def file_path(self) -> Path | None:
        """The resolved path for file:// URLs and plain paths."""
        return self._file_path

    @property
    def source_kind(self) -> str:
        """'rtsp', 'http', 'file' or 'synthetic'."""
        scheme = urlsplit(self.url).scheme.lower()
        if scheme in ("rtsp", "rtsps"):
            return "rtsp"
        if scheme in ("http", "https"):
            return "http"
        return "synthetic" if scheme == "synthetic" else "file"

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(w, h) of the camera's own frames when the config fixes it (synthetic cameras), else None."""
        if self.source_kind != "synthetic":
            return None
        return parse_synthetic(urlsplit(self.url).query, self.name).size or self.input_size

    def machine_problems(self, source: str = "") -> list[ConfigWarning]:
        """What this machine lacks for the camera: its video file. Not an error: ingest keeps a camera
        whose file is missing down and retries it (the file may be mounted or copied later)."""
        path = self.file_path
        if self.source_kind != "file" or path is None or path.is_file():
            return []
        return [ConfigWarning(f"cameras.{self.name}.url", "an existing video file (until there is one, the camera stays down "
                              "and its ingest retries)", Found(f"no file at {path}"), source)]

    @property
    def synthetic_options(self) -> dict[str, str]:
        """Query options of a synthetic:// URL, e.g. {'people': '60', 'style': 'day'}."""
        if self.source_kind != "synthetic":
            return {}
        return dict(parse_qsl(urlsplit(self.url).query))

    def redacted_url(self) -> str:
        """The URL without its password, for logs and pages."""
        return redact_url(self.url)
