"""What actually serves each camera: records the inference stage writes, ``models list`` reads.

``<var>/serving/<camera>.json`` (atomic writes)::

    {"camera": "lobby", "model": "lobby", "version": "v2", "path": ".../models/lobby/v2",
     "fallback": false, "error": null, "time": 1700000000.0}

``model`` is the registry entry serving it (the camera itself or ``base``);
``fallback`` is true while its ``current`` version could not be loaded and a
last good version (the previous record) or the base model serves instead,
``error`` says why. The inference stage rewrites the record on every change,
so it is the honest answer to "what is serving", and the last good version
after a restart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from adapt.store.atomic import atomic_write
from adapt.store.names import validate_camera_name


def serving_path(var: str | Path, camera: str) -> Path:
    return Path(var) / "serving" / f"{validate_camera_name(camera)}.json"


def write_serving(var: str | Path, camera: str, model: str, version: str, path: str | Path, *,
                  fallback: bool = False, error: str | None = None) -> None:
    rec = {"camera": camera, "model": model, "version": version, "path": str(path), "fallback": fallback,
           "error": error, "time": time.time()}
    p = serving_path(var, camera)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, (json.dumps(rec, sort_keys=True) + "\n").encode())


def read_serving(var: str | Path, camera: str) -> dict | None:
    """The camera's record, or None if there is none (or it is unreadable)."""
    try:
        rec = json.loads(serving_path(var, camera).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("version"), str) and isinstance(rec.get("path"), str) else None
