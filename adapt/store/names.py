"""Camera names: the one rule lives in :mod:`crowdwatch.config.names`; this module re-exports it for adapt/."""

from __future__ import annotations

from crowdwatch.config.names import CAMERA_NAME_RE, InvalidCameraName, validate_camera_name

__all__ = ["CAMERA_NAME_RE", "InvalidCameraName", "validate_camera_name"]
