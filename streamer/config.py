"""crowdwatch configuration: one TOML file, global defaults, per-camera overrides.

Layout (see the repo's config.toml for an annotated example)::

    [server]     metrics and web listeners (127.0.0.1 by default)
    [transport]  ZeroMQ endpoints, JPEG quality for tcp, high-water mark, CURVE
    [model]      registry directory, backend, providers, batching
    [paths]      var directory (buffers) and runtime directory (ipc sockets)
    [defaults]   any camera key; every camera starts from these
    [cameras.<name>]  per-camera overrides, deep-merged over [defaults]

Rules: unknown keys are errors; ``${VAR}`` in any string is expanded from the
environment (a missing variable is an error; ``$$`` is a literal ``$``);
durations are strings like "500ms", "90s", "5m", "24h", "7d"; sizes are bytes or
strings like "512MiB". Relative paths are relative to the config file. Every
error is a :class:`ConfigError` naming the key path, what was expected and what
was found.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np

from adapt.store.buffer import BufferConfig  # the buffer's settings, parsed here per camera
from adapt.store.names import InvalidCameraName, validate_camera_name

from . import crowd_metrics

ZONE_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_IPC_PATH_BYTES = 107
SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https", "file", "synthetic")
BACKENDS = ("onnxruntime", "torch")


class ConfigError(ValueError):
    """A bad config: ``path`` is the dotted key, e.g. ``cameras.lobby.fps``."""

    def __init__(self, path: str, expected: str, found: object, source: str = "") -> None:
        self.path, self.expected, self.found, self.source = path, expected, found, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path or '<top level>'}: expected {expected}, found {_show(found)}")


def _show(value: object) -> str:
    if isinstance(value, _Found):
        return value.text
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Found:
    """A pre-formatted 'found' text (e.g. the unexpanded string, to keep secrets out of errors)."""

    def __init__(self, text: str) -> None:
        self.text = text


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ServerConfig:
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    # /healthz turns 503 when the inference loop has not finished a cycle for this long
    liveness_timeout_s: float = 120.0


@dataclass(frozen=True)
class CurveConfig:
    """CURVE for tcp:// endpoints. The binding side (infer) is the CURVE server.

    Keys are Z85 strings in the named environment variables, or zmq.auth
    certificate files (``*_cert``, which win when set). ``authorized_clients``
    is a directory of client public certificates; empty means any client that
    knows the server's public key may connect (encryption without allow-list).
    """

    enabled: bool = False
    server_public_env: str = "CROWDWATCH_CURVE_SERVER_PUBLIC"
    server_secret_env: str = "CROWDWATCH_CURVE_SERVER_SECRET"
    client_public_env: str = "CROWDWATCH_CURVE_CLIENT_PUBLIC"
    client_secret_env: str = "CROWDWATCH_CURVE_CLIENT_SECRET"
    server_cert: Path | None = None
    client_cert: Path | None = None
    authorized_clients: Path | None = None


@dataclass(frozen=True)
class TransportConfig:
    frames: str  # endpoint ingest connects to (PUSH) and infer binds (PULL)
    results: str  # endpoint infer binds (PUB) and web connects to (SUB)
    frames_bind: str  # what the binding side binds; defaults to `frames`
    results_bind: str
    jpeg_quality: int = 85  # frames over tcp:// travel as JPEG; 0 keeps raw rgb24
    hwm: int = 4  # ZeroMQ high-water mark, messages per peer
    max_frame_age_s: float = 5.0  # older frames are dropped as `stale`
    curve: CurveConfig = CurveConfig()

    @property
    def frame_encoding(self) -> str:
        """'jpeg' across hosts (tcp, quality > 0), raw 'rgb24' within a host."""
        return "jpeg" if self.frames.startswith("tcp://") and self.jpeg_quality > 0 else "rgb24"


@dataclass(frozen=True)
class ModelConfig:
    registry: Path
    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    torch_device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 20.0


@dataclass(frozen=True)
class PathsConfig:
    var: Path  # adapter buffers: <var>/buffer/<camera>
    run: Path  # runtime files, ipc sockets

    def buffer_dir(self, camera: str) -> Path:
        return self.var / "buffer" / validate_camera_name(camera)


@dataclass(frozen=True)
class Thresholds:
    people: float = 150.0
    density_per_m2: float = 4.0
    close_pairs: float = 20.0
    area_over_density_ratio: float = 0.1
    uncertainty: float = 10.0  # std of the count, people
    latency_p95_s: float = 2.0  # p95 capture-to-metrics latency
    stall_s: float = 60.0  # no result for this long = camera stalled


@dataclass(frozen=True)
class UncertaintyTrigger:
    enabled: bool = False
    threshold: float = 10.0  # people (std of the count)
    for_s: float = 3600.0


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptation schedule: exactly one of ``interval_s`` or ``daily`` (local time)."""

    enabled: bool = True
    interval_s: float | None = 86400.0
    daily: tuple[int, int] | None = None  # (hour, minute)
    uncertainty_trigger: UncertaintyTrigger = UncertaintyTrigger()
    max_age_s: float = 3 * 86400.0  # last success older than this -> alert
    max_failures_per_day: int = 0  # more failed runs than this in a day -> alert
    labels: Path | None = None  # a few JSON-points frames of this camera: MAE on them decides the gate
    keep_count: bool = True  # hold the parent's mean count (adapt.adapt.AdaptConfig.keep_count)
    # label-free gate (adapt.validation.GateConfig holds the same defaults; a test keeps them equal)
    min_count_ratio: float = 0.67
    max_count_ratio: float = 1.5
    per_person_uncertainty: bool = False

    def command_args(self) -> list[str]:
        """The ``crowdwatch adapt`` options this camera's settings add."""
        d = AdaptConfig()
        args = ["--labels", str(self.labels)] if self.labels is not None else []
        if self.keep_count != d.keep_count:
            args.append("--keep-count" if self.keep_count else "--no-keep-count")
        if self.min_count_ratio != d.min_count_ratio:
            args += ["--min-count-ratio", repr(self.min_count_ratio)]
        if self.max_count_ratio != d.max_count_ratio:
            args += ["--max-count-ratio", repr(self.max_count_ratio)]
        if self.per_person_uncertainty != d.per_person_uncertainty:
            args.append("--per-person-uncertainty" if self.per_person_uncertainty else "--no-per-person-uncertainty")
        return args


@dataclass(frozen=True)
class Calibration:
    image: tuple[tuple[float, float], ...]  # source pixels
    ground: tuple[tuple[float, float], ...]  # metres
    max_cell_area_m2: float = crowd_metrics.DEFAULT_MAX_CELL_AREA_M2


@dataclass(frozen=True)
class CameraConfig:
    name: str
    url: str
    fps: float
    loop: bool
    realtime: bool
    width: int
    height: int
    zones: Mapping[str, tuple[tuple[float, float], ...]]
    calibration: Calibration | None
    distance_m: float
    distance_px: float
    thresholds: Thresholds
    adapt: AdaptConfig
    buffer: BufferConfig
    file_path: Path | None = None  # resolved path for file:// and plain paths

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
    def synthetic_options(self) -> dict[str, str]:
        """Query options of a synthetic:// URL, e.g. {'people': '60', 'style': 'day'}."""
        if self.source_kind != "synthetic":
            return {}
        return dict(parse_qsl(urlsplit(self.url).query))

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def redacted_url(self) -> str:
        """The URL without its password, for logs and pages."""
        return redact_url(self.url)


@dataclass(frozen=True)
class Config:
    source: str
    base_dir: Path
    server: ServerConfig
    transport: TransportConfig
    model: ModelConfig
    paths: PathsConfig
    cameras: Mapping[str, CameraConfig]


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# --------------------------------------------------------------------------- scalar parsers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """'500ms', '90s', '5m', '24h', '7d' -> seconds. Raises ValueError otherwise."""
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(text: str | int) -> int:
    """Bytes from an int or '512MiB', '2GB' ... Raises ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, environ: Mapping[str, str], path: str, source: str = "") -> str:
    """Expand ``${VAR}``; ``$$`` is a literal ``$``. A missing variable names the key."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "$"
        if name not in environ:
            raise ConfigError(path, f"environment variable {name} to be set", _Found(f"{text!r} with {name} unset"), source)
        return environ[name]

    return _ENV_RE.sub(sub, text)


# --------------------------------------------------------------------------- table reader


class _Table:
    """Typed access to one TOML table; remembers its key path, rejects unknown keys."""

    def __init__(self, data: object, path: str, ctx: _Ctx) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "a table", data, ctx.source)
        self.data, self.path, self.ctx = data, path, ctx
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, expected: str, found: object) -> ConfigError:
        return ConfigError(self.key(name), expected, found, self.ctx.source)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: object = ...) -> object:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise self.error(name, "this key to be set", _Found("nothing"))
            return default
        return self.data[name]

    def table(self, name: str) -> _Table:
        return _Table(self.raw(name, {}), self.key(name), self.ctx)

    def string(self, name: str, default: object = ..., *, check: Callable[[str], str | None] | None = None) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise self.error(name, "a string", value)
        expanded = expand_env(value, self.ctx.environ, self.key(name), self.ctx.source)
        if check is not None:
            problem = check(expanded)
            if problem:
                # Show the unexpanded text: an expanded value may hold a secret.
                raise self.error(name, problem, value)
        return expanded

    def boolean(self, name: str, default: object = ...) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "true or false", value)
        return value

    def number(self, name: str, default: object = ..., *, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False, integer: bool = False) -> Any:  # fmt: skip
        value = self.raw(name, default)
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise self.error(name, kind, value)
        below = value <= lo if lo_open else value < lo
        if below or value > hi:
            left = "(" if lo_open else "["
            raise self.error(name, f"{kind} in {left}{_fmt(lo)}, {_fmt(hi)}]", value)
        return int(value) if integer else float(value)

    def duration(self, name: str, default: object = ..., *, minimum: float = 0.0) -> float:
        if name not in self.data and default is not ...:
            self.seen.add(name)
            return float(default)  # type: ignore[arg-type]
        value = self.raw(name)
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except ValueError:
            raise self.error(name, 'a duration string such as "500ms", "90s", "5m", "24h" or "7d"', value) from None
        if seconds <= 0 or seconds < minimum:
            limit = f"at least {_fmt(minimum)}s" if minimum > 0 else "above 0"
            raise self.error(name, f"a duration {limit}", value)
        return seconds

    def size(self, name: str, default: object = ..., *, minimum: int = 1) -> int:
        value = self.raw(name, default)
        try:
            if isinstance(value, bool):
                raise ValueError
            n = parse_size(value)  # type: ignore[arg-type]
        except ValueError:
            raise self.error(name, 'a size in bytes or a string such as "512MiB" or "2GB"', value) from None
        if n < minimum:
            raise self.error(name, f"a size of at least {minimum} bytes", value)
        return n

    def filepath(self, name: str, default: object = ...) -> Path:
        text = self.string(name, default, check=lambda s: None if s else "a non-empty path")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.ctx.base_dir / p)

    def optional_path(self, name: str) -> Path | None:
        if not self.has(name) or self.data[name] == "":
            self.seen.add(name)
            return None
        return self.filepath(name)

    def points(self, name: str, minimum: int) -> tuple[tuple[float, float], ...]:
        return _points(self.raw(name), self.key(name), minimum, self.ctx.source)

    def done(self) -> None:
        """Unknown keys are errors: a typo must not silently fall back to a default."""
        for name in self.data:
            if name not in self.seen:
                close = difflib.get_close_matches(name, sorted(self.seen), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                allowed = ", ".join(sorted(self.seen)) or "no keys"
                raise ConfigError(self.key(name), f"one of: {allowed}{hint}", _Found(f"unknown key {name!r}"), self.ctx.source)


@dataclass(frozen=True)
class _Ctx:
    source: str
    base_dir: Path
    environ: Mapping[str, str]


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


def _points(value: object, path: str, minimum: int, source: str) -> tuple[tuple[float, float], ...]:
    expected = f"a list of at least {minimum} [x, y] number pairs"
    if not isinstance(value, list) or len(value) < minimum:
        raise ConfigError(path, expected, value, source)
    out = []
    for i, pt in enumerate(value):
        if (
            not isinstance(pt, list)
            or len(pt) != 2
            or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in pt)
        ):
            raise ConfigError(f"{path}[{i}]", "an [x, y] pair of finite numbers", pt, source)
        out.append((float(pt[0]), float(pt[1])))
    return tuple(out)


# --------------------------------------------------------------------------- sections


def _check_host(text: str) -> str | None:
    return None if text and not any(c.isspace() for c in text) else "a host name or address"


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    cfg = ServerConfig(
        metrics_host=t.string("metrics_host", d.metrics_host, check=_check_host),
        metrics_port=t.number("metrics_port", d.metrics_port, lo=0, hi=65535, integer=True),
        web_host=t.string("web_host", d.web_host, check=_check_host),
        web_port=t.number("web_port", d.web_port, lo=0, hi=65535, integer=True),
        liveness_timeout_s=t.duration("liveness_timeout", d.liveness_timeout_s, minimum=1.0),
    )
    t.done()
    return cfg


def _endpoint_checker(base_dir: Path) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        expected = "an endpoint 'ipc://PATH' or 'tcp://HOST:PORT'"
        if text.startswith("ipc://"):
            path = text[len("ipc://"):]
            if not path:
                return expected
            full = path if os.path.isabs(path) else str(base_dir / path)
            if len(full.encode()) > MAX_IPC_PATH_BYTES:
                return f"an ipc path of at most {MAX_IPC_PATH_BYTES} bytes (a unix socket limit); use a shorter [paths] run"
            return None
        if text.startswith("tcp://"):
            host, sep, port = text[len("tcp://"):].rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                return expected
            return None
        return expected

    return check


def _absolute_endpoint(text: str, base_dir: Path) -> str:
    # ZeroMQ resolves relative ipc paths against the process cwd; pin them to the config.
    if text.startswith("ipc://") and not os.path.isabs(text[6:]):
        return "ipc://" + str(base_dir / text[6:])
    return text


def _curve(t: _Table) -> CurveConfig:
    d = CurveConfig()
    env_name = lambda s: None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s) else "an environment variable name"  # noqa: E731
    cfg = CurveConfig(
        enabled=t.boolean("enabled", d.enabled),
        server_public_env=t.string("server_public_env", d.server_public_env, check=env_name),
        server_secret_env=t.string("server_secret_env", d.server_secret_env, check=env_name),
        client_public_env=t.string("client_public_env", d.client_public_env, check=env_name),
        client_secret_env=t.string("client_secret_env", d.client_secret_env, check=env_name),
        server_cert=t.optional_path("server_cert"),
        client_cert=t.optional_path("client_cert"),
        authorized_clients=t.optional_path("authorized_clients"),
    )
    t.done()
    return cfg


def _transport(t: _Table, paths: PathsConfig) -> TransportConfig:
    ctx = t.ctx
    check = _endpoint_checker(ctx.base_dir)
    frames = _absolute_endpoint(t.string("frames", f"ipc://{paths.run / 'frames.ipc'}", check=check), ctx.base_dir)
    results = _absolute_endpoint(t.string("results", f"ipc://{paths.run / 'results.ipc'}", check=check), ctx.base_dir)
    frames_bind = _absolute_endpoint(t.string("frames_bind", frames, check=check), ctx.base_dir)
    results_bind = _absolute_endpoint(t.string("results_bind", results, check=check), ctx.base_dir)
    if frames == results:
        raise t.error("results", "a different endpoint from frames", results)
    if frames_bind == results_bind:
        raise t.error("results_bind", "a different endpoint from frames_bind", results_bind)
    if frames.split("://")[0] != frames_bind.split("://")[0]:
        raise t.error("frames_bind", f"the same transport as frames ({frames.split('://')[0]}://)", frames_bind)
    if results.split("://")[0] != results_bind.split("://")[0]:
        raise t.error("results_bind", f"the same transport as results ({results.split('://')[0]}://)", results_bind)
    d = TransportConfig(frames, results, frames_bind, results_bind)
    cfg = TransportConfig(
        frames=frames,
        results=results,
        frames_bind=frames_bind,
        results_bind=results_bind,
        jpeg_quality=t.number("jpeg_quality", d.jpeg_quality, lo=0, hi=100, integer=True),
        hwm=t.number("hwm", d.hwm, lo=1, hi=10000, integer=True),
        max_frame_age_s=t.duration("max_frame_age", d.max_frame_age_s),
        curve=_curve(t.table("curve")),
    )
    if cfg.curve.enabled and not any(e.startswith("tcp://") for e in (frames, results)):
        raise t.error("curve.enabled", "CURVE only with tcp:// endpoints (ipc is protected by file permissions)", True)
    t.done()
    return cfg


def _model(t: _Table) -> ModelConfig:
    d = ModelConfig(registry=Path("models"))
    providers = t.raw("providers", list(d.providers))
    if not isinstance(providers, list) or not providers or not all(
        isinstance(p, str) and re.fullmatch(r"[A-Za-z]+ExecutionProvider", p) for p in providers
    ):
        raise t.error("providers", 'a non-empty list of ONNX Runtime providers, e.g. ["CPUExecutionProvider"]', providers)
    cfg = ModelConfig(
        registry=t.filepath("registry", "models"),
        backend=t.string("backend", d.backend, check=lambda s: None if s in BACKENDS else f"one of {', '.join(BACKENDS)}"),
        providers=tuple(providers),
        torch_device=t.string(
            "torch_device", d.torch_device,
            check=lambda s: None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", s) else '"auto", "cpu", "cuda" or "cuda:N"',
        ),  # fmt: skip
        max_batch=t.number("max_batch", d.max_batch, lo=1, hi=256, integer=True),
        max_wait_ms=t.number("max_wait_ms", d.max_wait_ms, lo=0, hi=10000),
    )
    t.done()
    return cfg


def _paths(t: _Table) -> PathsConfig:
    var = t.filepath("var", "var")
    run = t.filepath("run", str(var / "run"))
    t.done()
    return PathsConfig(var=var, run=run)


# --------------------------------------------------------------------------- cameras


def _check_url(text: str) -> str | None:
    expected = "a source URL: rtsp://, rtsps://, http(s)://, file://, synthetic://?... or a file path"
    if not text:
        return expected
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if "://" not in text:
        return None  # a plain path
    if scheme not in SOURCE_SCHEMES:
        return expected
    if scheme in ("rtsp", "rtsps", "http", "https"):
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return f"{expected} (bad port)"
        return None if parts.hostname else f"{expected} (missing host)"
    if scheme == "file":
        return None if parts.path else f"{expected} (missing path)"
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


def _file_path(url: str, base_dir: Path) -> Path | None:
    if "://" in url and not url.lower().startswith("file://"):
        return None
    raw = urlsplit(url).path if url.lower().startswith("file://") else url
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base_dir / p


def _multiple_of_32(t: _Table, name: str, default: int) -> int:
    v = t.number(name, default, lo=32, hi=4096, integer=True)
    if v % 32:
        raise t.error(name, "a multiple of 32 (the model's input granularity)", v)
    return v


def _thresholds(t: _Table) -> Thresholds:
    d = Thresholds()
    cfg = Thresholds(
        people=t.number("people", d.people, lo=0),
        density_per_m2=t.number("density_per_m2", d.density_per_m2, lo=0, lo_open=True),
        close_pairs=t.number("close_pairs", d.close_pairs, lo=0),
        area_over_density_ratio=t.number("area_over_density_ratio", d.area_over_density_ratio, lo=0, hi=1),
        uncertainty=t.number("uncertainty", d.uncertainty, lo=0),
        latency_p95_s=t.duration("latency_p95", d.latency_p95_s),
        stall_s=t.duration("stall", d.stall_s, minimum=1.0),
    )
    t.done()
    return cfg


def _daily(t: _Table) -> tuple[int, int]:
    text = t.string("daily")
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text)
    if not m:
        raise t.error("daily", 'a local time "HH:MM" (00:00 to 23:59)', text)
    return int(m.group(1)), int(m.group(2))


def _adapt(t: _Table) -> AdaptConfig:
    d = AdaptConfig()
    interval = t.duration("interval", minimum=60.0) if t.has("interval") else None
    daily = _daily(t) if t.has("daily") else None
    if interval is not None and daily is not None:
        raise t.error("daily", "either adapt.interval or adapt.daily, not both", t.data["daily"])
    if interval is None and daily is None:
        interval = d.interval_s
    ut = t.table("uncertainty_trigger")
    dt = UncertaintyTrigger()
    trigger = UncertaintyTrigger(
        enabled=ut.boolean("enabled", dt.enabled),
        threshold=ut.number("threshold", dt.threshold, lo=0),
        for_s=ut.duration("for", dt.for_s, minimum=1.0),
    )
    ut.done()
    gt = t.table("gate")
    per_person = gt.boolean("per_person_uncertainty", d.per_person_uncertainty)
    min_ratio = gt.number("min_count_ratio", d.min_count_ratio, lo=0, hi=1)
    max_ratio = gt.number("max_count_ratio", d.max_count_ratio, lo=1)
    gt.done()
    cfg = AdaptConfig(
        enabled=t.boolean("enabled", d.enabled),
        interval_s=interval,
        daily=daily,
        uncertainty_trigger=trigger,
        max_age_s=t.duration("max_age", d.max_age_s, minimum=60.0),
        max_failures_per_day=t.number("max_failures_per_day", d.max_failures_per_day, lo=0, hi=1000, integer=True),
        labels=t.optional_path("labels"),
        keep_count=t.boolean("keep_count", d.keep_count),
        min_count_ratio=min_ratio,
        max_count_ratio=max_ratio,
        per_person_uncertainty=per_person,
    )
    t.done()
    return cfg


def _buffer(t: _Table) -> BufferConfig:
    d = BufferConfig()
    cfg = BufferConfig(
        max_frames=t.number("max_frames", d.max_frames, lo=1, hi=10_000_000, integer=True),
        max_bytes=t.size("max_bytes", d.max_bytes, minimum=1024**2),
        min_interval_s=t.number("min_interval_s", d.min_interval_s, lo=0),
        retention_days=t.number("retention_days", d.retention_days, lo=0, lo_open=True),
        dedup_threshold=t.number("dedup_threshold", d.dedup_threshold, lo=0, hi=255),
        jpeg_quality=t.number("jpeg_quality", d.jpeg_quality, lo=1, hi=100, integer=True),
        min_free_bytes=t.size("min_free_bytes", d.min_free_bytes, minimum=0),
    )
    t.done()
    return cfg


def _zones(t: _Table) -> Mapping[str, tuple[tuple[float, float], ...]]:
    zones = {}
    for name in list(t.data):
        if not isinstance(name, str) or not ZONE_NAME_RE.fullmatch(name):
            raise ConfigError(t.key(name), "a zone name of 1 to 64 characters from [a-z0-9_-]", name, t.ctx.source)
        pts = t.points(name, 3)
        if crowd_metrics.polygon_area(np.asarray(pts)) <= 0:
            raise t.error(name, "a polygon with a non-zero area", [list(p) for p in pts])
        zones[name] = pts
    t.done()
    return MappingProxyType(zones)


def _calibration(t: _Table) -> Calibration:
    image = t.points("image", 4)
    ground = t.points("ground", 4)
    if len(image) != len(ground):
        raise t.error("ground", f"as many points as calibration.image ({len(image)})", len(ground))
    max_area = t.number("max_cell_area_m2", crowd_metrics.DEFAULT_MAX_CELL_AREA_M2, lo=0, lo_open=True)
    try:
        crowd_metrics.fit_homography(image, ground)
    except ValueError as exc:
        raise ConfigError(t.path, "image and ground points that define a ground-plane homography", _Found(str(exc)), t.ctx.source) from None
    t.done()
    return Calibration(image=image, ground=ground, max_cell_area_m2=max_area)


# Keys that replace each other when a camera sets one of them.
_EXCLUSIVE = ({"interval", "daily"},)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: tables merge recursively, other values replace.

    Setting one key of an exclusive group (adapt ``interval``/``daily``) drops
    the others inherited from ``base``.
    """
    out = copy.deepcopy(dict(base))
    for group in _EXCLUSIVE:
        if group & override.keys():
            for key in group - override.keys():
                out.pop(key, None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _camera(name: str, t: _Table) -> CameraConfig:
    url = t.string("url", check=_check_url)
    cal = _calibration(t.table("calibration")) if t.has("calibration") else None
    t.seen.add("calibration")
    cfg = CameraConfig(
        name=name,
        url=url,
        fps=t.number("fps", 1.0, lo=0, lo_open=True, hi=60),
        loop=t.boolean("loop", True),
        realtime=t.boolean("realtime", True),
        width=_multiple_of_32(t, "width", 640),
        height=_multiple_of_32(t, "height", 480),
        zones=_zones(t.table("zones")),
        calibration=cal,
        distance_m=t.number("distance_m", 1.5, lo=0, lo_open=True, hi=100),
        distance_px=t.number("distance_px", crowd_metrics.DEFAULT_DISTANCE_PX, lo=0, lo_open=True, hi=4096),
        thresholds=_thresholds(t.table("thresholds")),
        adapt=_adapt(t.table("adapt")),
        buffer=_buffer(t.table("buffer")),
        file_path=_file_path(url, t.ctx.base_dir),
    )
    t.done()
    return cfg


# --------------------------------------------------------------------------- entry points


def parse_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document. ``base_dir`` anchors relative paths (default: cwd)."""
    base = (base_dir or Path.cwd()).resolve()
    ctx = _Ctx(source=source, base_dir=base, environ=os.environ if environ is None else environ)
    top = _Table(dict(data), "", ctx)
    server = _server(top.table("server"))
    paths = _paths(top.table("paths"))
    transport = _transport(top.table("transport"), paths)
    model = _model(top.table("model"))
    defaults = top.raw("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("defaults", "a table", defaults, source)
    if "url" in defaults:
        raise ConfigError("defaults.url", "no url in [defaults] (each camera has its own source)", defaults["url"], source)
    # Check [defaults] on its own first, so a bad default is reported as defaults.KEY
    # rather than once per camera.
    _camera("defaults", _Table({**defaults, "url": "synthetic://"}, "defaults", ctx))
    cams = top.raw("cameras", ...)
    if not isinstance(cams, dict) or not cams:
        raise ConfigError("cameras", "at least one [cameras.<name>] table", cams, source)
    cameras: dict[str, CameraConfig] = {}
    for name, table in cams.items():
        try:
            validate_camera_name(name)
        except InvalidCameraName:
            raise ConfigError(f"cameras.{name}", "a camera name of 1 to 64 characters from [a-z0-9_-]", _Found(f"name {name!r}"), source) from None
        if not isinstance(table, dict):
            raise ConfigError(f"cameras.{name}", "a table", table, source)
        # Errors point at the camera's key even when the bad value came from [defaults].
        merged = deep_merge(defaults, table)
        cameras[name] = _camera(name, _Table(merged, f"cameras.{name}", ctx))
    top.done()
    return Config(
        source=source,
        base_dir=base,
        server=server,
        transport=transport,
        model=model,
        paths=paths,
        cameras=MappingProxyType(cameras),
    )


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; raises ConfigError on any problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("", "a readable config file", _Found(f"no file at {p}"), str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", "valid TOML", _Found(str(exc)), str(p)) from None
    return parse_config(data, str(p), base_dir=p.resolve().parent, environ=environ)


def load_stage_config(prog: str, path: Path, log_level: str = "INFO") -> Config | None:
    """What every long-running stage does first: set up logging, load the config.

    Returns None after printing the reason, so ``main`` can exit with status 2.
    """
    import logging
    import sys

    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return load_config(path)
    except (ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
