"""Camera and zone names become paths and Prometheus labels, so they are validated once, here.

``adapt.store.names`` re-exports this module; nothing else restates the rule.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from .errors import Found, fail

CAMERA_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
ZONE_NAME_RE = CAMERA_NAME_RE


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


def _camera_name(name: str) -> str:
    if not CAMERA_NAME_RE.fullmatch(name):
        raise fail("a camera name of 1 to 64 characters from [a-z0-9_-]", Found(f"name {name!r}"))
    return name


def _zone_name(name: str) -> str:
    if not ZONE_NAME_RE.fullmatch(name):
        raise fail("a zone name of 1 to 64 characters from [a-z0-9_-]", name)
    return name


# Dict keys: [cameras.<CameraName>], [cameras.X.zones] <ZoneName> = [...]
CameraName = Annotated[str, AfterValidator(_camera_name), WithJsonSchema({"type": "string", "pattern": CAMERA_NAME_RE.pattern})]
ZoneName = Annotated[str, AfterValidator(_zone_name), WithJsonSchema({"type": "string", "pattern": ZONE_NAME_RE.pattern})]
