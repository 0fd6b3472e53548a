"""crowdwatch configuration: one TOML file, global sections, per-camera overrides.

Layout (see the repo's config.toml for an annotated example)::

    [server]     metrics and web listeners (127.0.0.1 by default)      server.py
    [transport]  ZeroMQ endpoints, JPEG quality for tcp, hwm, CURVE    transport.py
    [model]      registry directory, backend, providers, batching     model.py
    synthetic:// camera options                                       synthetic.py
    [paths]      var (buffers), runtime and labels directories        paths.py
    [defaults]   any camera key but url; every camera starts from these
    [cameras.<name>]  per-camera overrides, deep-merged over [defaults]  camera.py,
                 adaptation.py ([cameras.X.adapt]), buffer.py ([cameras.X.buffer])

Every key is declared once, as a pydantic field with its default, bounds and
description (``crowdwatch config schema`` prints them as JSON Schema).
Durations take a number of seconds or "500ms", "90s", "5m", "24h", "7d"; sizes
take bytes or "512MiB", "2GB" (units.py). Loading (loader.py) deep-merges
[defaults], expands ``${VAR}`` and anchors relative paths to the file; every
error is a :class:`ConfigError` (errors.py). What the machine lacks (a camera's
file, the registry, a GPU) is a :class:`ConfigWarning` in ``Config.warnings``:
``config check`` prints them, ``run`` and ``infer`` refuse the serving ones.

This package imports nothing from ``streamer`` or ``adapt``: both import it.
"""

from __future__ import annotations

from .adaptation import AdaptConfig, GateSettings, UncertaintyTrigger
from .buffer import BufferSettings
from .camera import SOURCE_SCHEMES, Calibration, CameraConfig, CameraSettings, Thresholds, check_url, redact_url
from .errors import ConfigError, ConfigWarning
from .loader import (
    CONFIG_HELP,
    DEFAULT_CONFIG,
    command_config,
    deep_merge,
    expand_env,
    load_command_config,
    load_config,
    load_stage_config,
    merge_defaults,
    parse_config,
)
from .model import BACKENDS, ModelConfig
from .names import CAMERA_NAME_RE, ZONE_NAME_RE, InvalidCameraName, validate_camera_name
from .paths import PathsConfig
from .root import Config, json_schema
from .server import ServerConfig
from .transport import MAX_IPC_PATH_BYTES, CurveConfig, TransportConfig
from .units import parse_duration, parse_size

__all__ = [
    "BACKENDS",
    "CAMERA_NAME_RE",
    "CONFIG_HELP",
    "DEFAULT_CONFIG",
    "MAX_IPC_PATH_BYTES",
    "SOURCE_SCHEMES",
    "ZONE_NAME_RE",
    "AdaptConfig",
    "BufferSettings",
    "Calibration",
    "CameraConfig",
    "CameraSettings",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "CurveConfig",
    "GateSettings",
    "InvalidCameraName",
    "ModelConfig",
    "PathsConfig",
    "ServerConfig",
    "Thresholds",
    "TransportConfig",
    "UncertaintyTrigger",
    "check_url",
    "deep_merge",
    "expand_env",
    "json_schema",
    "command_config",
    "load_command_config",
    "load_config",
    "load_stage_config",
    "merge_defaults",
    "parse_config",
    "parse_duration",
    "parse_size",
    "redact_url",
    "validate_camera_name",
]
