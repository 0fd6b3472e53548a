"""Durations and sizes: a human string or a plain number.

A duration field takes a number of seconds or a string such as "500ms",
"90s", "5m", "24h", "7d" (``interval = "24h"`` and ``interval = 86400`` are the
same). A size field takes a number of bytes or a string such as "512MiB" or
"2GB".
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

from .errors import Kind, fail

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}  # fmt: skip

DURATION_EXPECTED = 'a duration string such as "500ms", "90s", "5m", "24h" or "7d", or a number of seconds'
SIZE_EXPECTED = 'a size in bytes or a string such as "512MiB" or "2GB"'


def parse_duration(text: str) -> float:
    """'500ms', '90s', '5m', '24h', '7d' -> seconds. Raises ValueError otherwise (numbers too)."""
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


def to_seconds(value: object) -> float:
    """A duration value from TOML: a number of seconds or a duration string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except ValueError:
        raise fail(DURATION_EXPECTED, value) from None


def to_milliseconds(value: object) -> float:
    """Like :func:`to_seconds`, but a plain number is milliseconds (for keys ending in ``_ms``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    try:
        return parse_duration(value) * 1000.0  # type: ignore[arg-type]
    except ValueError:
        raise fail(DURATION_EXPECTED.replace("seconds", "milliseconds"), value) from None


def to_bytes(value: object) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return parse_size(value)  # type: ignore[arg-type]
    except ValueError:
        raise fail(SIZE_EXPECTED, value) from None


_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION_RE.pattern}]}
_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE_RE.pattern}]}

# Seconds. Bounds go on the field: Field(86400.0, ge=60) (and show in error texts, not in the JSON Schema).
Duration = Annotated[float, BeforeValidator(to_seconds), Kind("duration"), WithJsonSchema(_DURATION_SCHEMA)]
# Milliseconds, for the keys that end in _ms.
Milliseconds = Annotated[float, BeforeValidator(to_milliseconds), Kind("duration", "ms"), WithJsonSchema(_DURATION_SCHEMA)]
# Bytes.
Size = Annotated[int, BeforeValidator(to_bytes), Kind("size"), WithJsonSchema(_SIZE_SCHEMA)]
