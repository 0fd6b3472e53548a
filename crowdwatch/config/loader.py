"""TOML -> Config: [defaults] deep-merged into each camera, ${VAR} expanded, paths anchored.

Rules: unknown keys are errors; ``${VAR}`` in any string is expanded from the
environment (a missing variable is an error; ``$$`` is a literal ``$``);
relative paths are relative to the config file. Every error is a
:class:`ConfigError` naming the key path, what was expected and what was found,
and never shows an expanded value (it may hold a secret).
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import ConfigError, Found, from_validation_error, join_path
from .root import Config

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Keys that replace each other when a camera sets one of them.
_EXCLUSIVE = ({"interval", "daily"},)


def expand_env(text: str, environ: Mapping[str, str], path: str, source: str = "") -> str:
    """Expand ``${VAR}``; ``$$`` is a literal ``$``. A missing variable names the key."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "$"
        if name not in environ:
            raise ConfigError(path, f"environment variable {name} to be set", Found(f"{text!r} with {name} unset"), source)
        return environ[name]

    return _ENV_RE.sub(sub, text)


def _expand_all(value: Any, loc: tuple[str | int, ...], environ: Mapping[str, str], source: str, originals: dict[str, str]) -> Any:
    if isinstance(value, str):
        expanded = expand_env(value, environ, join_path(loc), source)
        if expanded != value:
            originals[join_path(loc)] = value
        return expanded
    if isinstance(value, dict):
        return {k: _expand_all(v, (*loc, k), environ, source, originals) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_all(v, (*loc, i), environ, source, originals) for i, v in enumerate(value)]
    return value


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


def merge_defaults(data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """The document with [defaults] deep-merged into every [cameras.<name>] table."""
    doc = dict(data)
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        return doc  # reported by validation as "defaults: expected a table"
    if "url" in defaults:
        raise ConfigError("defaults.url", "no url in [defaults] (each camera has its own source)", defaults["url"], source)
    cams = doc.get("cameras")
    if isinstance(cams, dict):
        # Errors point at the camera's key even when the bad value came from [defaults].
        doc["cameras"] = {name: deep_merge(defaults, table) if isinstance(table, dict) else table for name, table in cams.items()}
    return doc


def parse_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document. ``base_dir`` anchors relative paths (default: cwd)."""
    base = (base_dir or Path.cwd()).resolve()
    environ = os.environ if environ is None else environ
    originals: dict[str, str] = {}
    doc = merge_defaults(data, source)
    doc = _expand_all(doc, (), environ, source, originals)
    try:
        return Config.model_validate(doc, context={"base_dir": base, "source": source, "environ": environ})
    except ValidationError as exc:
        raise from_validation_error(exc, Config, source, originals=originals) from None


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None, stage: str | None = None
) -> Config:
    """Read and validate a TOML config file; raises ConfigError on any problem, and the first ConfigWarning
    that stops ``stage`` (``supervisor`` for crowdwatch run, ``infer``, ``ingest``, ``web``: no registry, no model,
    no GPU for the providers, no CURVE keys for its side)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("", "a readable config file", Found(f"no file at {p}"), str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", "valid TOML", Found(str(exc)), str(p)) from None
    config = parse_config(data, str(p), base_dir=p.resolve().parent, environ=environ)
    blocking = [w for w in config.warnings if stage in w.stops]
    if blocking:
        raise blocking[0]
    return config


DEFAULT_CONFIG = Path("config.toml")
CONFIG_HELP = "configuration file (default: config.toml; built-in defaults when there is none)"


def load_command_config(path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None) -> Config | None:
    """What ``--config`` of a one-shot command names: ``path`` (which must exist), else ``config.toml``
    in the current folder when there is one, else None: the command runs on built-in defaults."""
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            return None
        path = DEFAULT_CONFIG
    return load_config(path, environ=environ)


def command_config(prog: str, path: str | os.PathLike[str] | None) -> Config | None:
    """``load_command_config`` for a command's ``main``: a config that does not load is printed and exits with status 2."""
    import sys

    try:
        return load_command_config(path)
    except (ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_stage_config(
    prog: str, path: Path, log_level: str | None = None, log_format: str | None = None, *,
    stage: str | None = None, camera: str | None = None, instance: str | None = None,
) -> Config | None:
    """What every long-running stage does first: load the config, set up logging (``crowdwatch.logs``).

    The level and format are the flags', else $CROWDWATCH_LOG_LEVEL / $CROWDWATCH_LOG_FORMAT,
    else the config's ``[log]``. With ``[log] files`` the lines also go to
    ``<paths.var>/log/<stage>[-<camera>][-<instance>].log``, rotated (``instance``: an infer worker beyond the first). Every
    stage refuses a config with a :class:`ConfigWarning` that stops it (run and infer: no registry, no model, no
    GPU for the providers; each side of CURVE: its keys missing from the environment). Returns None after printing
    the reason, so ``main`` can exit with status 2. With CURVE turned off for tcp:// endpoints, the stage logs a
    warning (``insecure_transport``).
    """
    import sys

    from crowdwatch import logs

    stage = stage or prog.removeprefix("crowdwatch ")
    try:
        config = load_config(path, stage=stage)
    except (ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    lc = config.log
    camera = camera if camera in config.cameras else None  # a name from the command line, checked before it names a file
    name = "-".join(p for p in (stage, camera, instance) if p)
    try:
        logs.setup(
            stage, log_level or os.environ.get(logs.LEVEL_ENV) or lc.level, log_format or os.environ.get(logs.FORMAT_ENV) or lc.format,
            camera=camera, file=logs.stage_file(config.paths.var / "log", name) if lc.files else None,
            file_max_bytes=lc.file_max_bytes, file_backups=lc.file_backups,
        )  # fmt: skip
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    if config.transport.insecure_tcp:
        import logging

        logs.event(logging.getLogger("crowdwatch.transport"), "insecure_transport",
                   "CURVE is off for tcp:// endpoints ([transport.curve] enabled = false, insecure = true): frames and results "
                   "travel in plaintext, and any host that reaches the ports can send frames and read the counts", level=logging.WARNING)  # fmt: skip
    return config
