"""Where the learning side's files live, from ``--config`` ([model] registry, [paths]).

Every function takes the loaded config or None (no config file: the built-in
defaults the commands always had). Command-line flags override these.
"""

from __future__ import annotations

from pathlib import Path

from adapt.store.names import validate_camera_name
from crowdwatch.config import Config


def registry_root(config: Config | None) -> Path | None:
    """[model] registry; None: the registry's own default ($CROWDWATCH_MODELS, else the repo's models/)."""
    return None if config is None else config.model.registry


def buffer_root(config: Config | None) -> Path | None:
    """<[paths] var>/buffer; None: the adapter buffer's own default (the repo's var/buffer)."""
    return None if config is None else config.paths.var / "buffer"


def labels_dir(config: Config | None, camera: str) -> Path:
    """A camera's labelled frames: its ``adapt.labels``, else <[paths] labels>/<camera> (labels/<camera> without a config)."""
    camera = validate_camera_name(camera)
    cam = None if config is None else config.cameras.get(camera)
    if cam is not None and cam.adapt.labels is not None:
        return cam.adapt.labels
    return (Path("labels") if config is None else config.paths.labels) / camera
