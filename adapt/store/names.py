"""Camera names become paths and Prometheus labels, so they are validated once, here."""

from __future__ import annotations

import re

CAMERA_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


class InvalidCameraName(ValueError):
    pass


def validate_camera_name(name: object) -> str:
    """Return ``name`` if it is a safe camera name, else raise InvalidCameraName.

    Allowed: 1 to 64 characters from ``[a-z0-9_-]``. This rules out path
    separators, ``..``, empty names and anything that needs label escaping.
    """
    if not isinstance(name, str) or not CAMERA_NAME_RE.fullmatch(name):
        raise InvalidCameraName(
            f"camera name must match {CAMERA_NAME_RE.pattern} (lowercase letters, digits, '_' and '-', "
            f"1 to 64 characters); found {name!r}"
        )
    return name
