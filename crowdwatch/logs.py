"""One logging set-up for every process: the stages, the supervisor and adaptation jobs.

    from crowdwatch import logs
    logs.setup("infer", level="INFO", fmt="auto", file=var / "log" / "infer.log")
    logs.event(log, "camera_down", "no frame for %.0f s", 12, camera="lobby", level=logging.WARNING)

Formats:

* ``json``: one JSON object per line with exactly the keys of :data:`KEYS`
  (``time`` ISO 8601 UTC, ``level``, ``stage``, ``camera`` or null, ``event``
  or null, ``message``; a traceback is appended to ``message``);
* ``text``: ``time level stage[camera] message`` for people;
* ``auto`` (the default): json when the stream is not a terminal (a
  container, a pipe, a file), text on a terminal.

The level and the format also come from ``CROWDWATCH_LOG_LEVEL`` and
``CROWDWATCH_LOG_FORMAT`` when no flag or config sets them; ``crowdwatch run``
passes its own on to every child and adaptation job. A log file, when kept,
is a :class:`~logging.handlers.RotatingFileHandler` with a bounded size.

This module imports nothing from ``streamer`` or ``adapt``: both use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

KEYS = ("time", "level", "stage", "camera", "event", "message")
FORMATS = ("auto", "json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_ENV = "CROWDWATCH_LOG_LEVEL"
FORMAT_ENV = "CROWDWATCH_LOG_FORMAT"
DEFAULT_FILE_MAX_BYTES = 10 * 1024**2
DEFAULT_FILE_BACKUPS = 3

_process: dict[str, str | None] = {"stage": None, "camera": None, "level": None, "format": None}
_installed: list[logging.Handler] = []
_lock = threading.Lock()


def resolve_format(fmt: str | None, stream: IO[str] | None = None) -> str:
    """``json`` or ``text``: ``fmt``, else $CROWDWATCH_LOG_FORMAT, else by whether ``stream`` is a terminal."""
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "auto").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, found {fmt!r}")
    if fmt != "auto":
        return fmt
    stream = sys.stdout if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def resolve_level(level: str | None) -> str:
    """``level``, else $CROWDWATCH_LOG_LEVEL, else INFO; upper-cased and checked."""
    value = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    if value not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, found {value!r}")
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    elif record.stack_info:
        message += "\n" + record.stack_info
    when = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record.levelname,
        "stage": getattr(record, "stage", None) or _process["stage"] or record.name,
        "camera": getattr(record, "camera", None) or _process["camera"],
        "event": getattr(record, "event", None),
        "message": message,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, always the keys of :data:`KEYS`."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        f = _fields(record)
        where = f["stage"] + (f"[{f['camera']}]" if f["camera"] else "")
        event = f" ({f['event']})" if f["event"] else ""
        return f"{f['time']} {f['level']:<7} {where}{event}: {f['message']}"


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(
    stage: str,
    level: str | None = None,
    fmt: str | None = None,
    *,
    camera: str | None = None,
    file: Path | None = None,
    file_max_bytes: int = DEFAULT_FILE_MAX_BYTES,
    file_backups: int = DEFAULT_FILE_BACKUPS,
    stream: IO[str] | None = None,
) -> str:
    """Configure the root logger for this process; returns the format used (``json`` or ``text``).

    ``stream`` defaults to stdout. ``file``, when given, gets the same lines and
    rotates at ``file_max_bytes`` keeping ``file_backups`` old files. Calling it
    again replaces what an earlier call installed. Uncaught exceptions are logged.
    """
    stream = sys.stdout if stream is None else stream
    resolved = resolve_format(fmt, stream)
    lvl = resolve_level(level)
    with _lock:
        _process.update(stage=stage, camera=camera, level=lvl, format=resolved)
        root = logging.getLogger()
        for h in _installed:
            root.removeHandler(h)
            h.close()  # a StreamHandler leaves its stream open
        _installed.clear()
        for h in list(root.handlers):  # a basicConfig() from elsewhere would print every line twice
            root.removeHandler(h)
        out = logging.StreamHandler(stream)
        out.setFormatter(formatter(resolved))
        _installed.append(out)
        if file is not None:
            try:
                Path(file).parent.mkdir(parents=True, exist_ok=True)
                rot = logging.handlers.RotatingFileHandler(file, maxBytes=file_max_bytes, backupCount=file_backups, encoding="utf-8")
                rot.setFormatter(formatter(resolved))
                _installed.append(rot)
            except OSError as exc:  # a read-only or full disk must not stop the stage; say so on the stream
                out.handle(logging.makeLogRecord({"msg": f"cannot write the log file {file}: {exc}", "levelno": logging.WARNING,
                                                  "levelname": "WARNING", "name": "crowdwatch.logs"}))
        for h in _installed:
            root.addHandler(h)
        root.setLevel(lvl)
    sys.excepthook = _log_uncaught
    return resolved


def child_flags() -> list[str]:
    """``--log-level L --log-format F`` as this process set them up: what a supervised child gets."""
    out = []
    if _process["level"]:
        out += ["--log-level", str(_process["level"])]
    if _process["format"]:
        out += ["--log-format", str(_process["format"])]
    return out


def child_env() -> dict[str, str]:
    """The same as environment variables, for children that take no flags (adaptation jobs)."""
    out = {}
    if _process["level"]:
        out[LEVEL_ENV] = str(_process["level"])
    if _process["format"]:
        out[FORMAT_ENV] = str(_process["format"])
    return out


def _log_uncaught(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("crowdwatch").critical("uncaught exception", exc_info=(exc_type, exc, tb), extra={"event": "crash"})


def event(logger: logging.Logger, name: str, msg: str, *args: object, camera: str | None = None,
          level: int = logging.INFO, stage: str | None = None) -> None:
    """Log a named event (``camera_down``, ``model_swap``, ...): the ``event`` key of the line."""
    extra: dict[str, Any] = {"event": name}
    if camera is not None:
        extra["camera"] = camera
    if stage is not None:
        extra["stage"] = stage
    logger.log(level, msg, *args, extra=extra)


def parse_line(line: str) -> dict[str, Any] | None:
    """A JSON log line written by this module, else None (used to relay a child's lines)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and set(KEYS) <= obj.keys() else None


def relay(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """Log a child's parsed JSON line again, here, keeping its stage, camera, event and level."""
    level = logging.getLevelName(str(fields.get("level", "INFO")))
    level = level if isinstance(level, int) else logging.INFO
    logger.log(level, "%s", fields.get("message", ""), extra={k: fields.get(k) for k in ("stage", "camera", "event")})


def stage_file(log_dir: Path, name: str) -> Path:
    """``<log_dir>/<name>.log`` with ``:`` (``ingest:lobby``) made file-safe."""
    return Path(log_dir) / f"{name.replace(':', '-')}.log"
