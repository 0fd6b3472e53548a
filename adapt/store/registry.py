"""Per-camera model registry (``crowdwatch models list|rollback``).

Layout::

    models/<camera>/<version>/model.pt      checkpoint, masks included
    models/<camera>/<version>/model.onnx    exported graph (rebuilt from model.pt if missing)
    models/<camera>/<version>/card.json     parent, recipe, frames, statistics, validation
    models/<camera>/current                 text file naming the serving version

``base`` is the camera name of the shipped, synthetic-only model. A camera
without its own ``current`` is served by ``base``. Versions appear atomically:
they are assembled in a hidden staging directory and renamed into place, and
``current`` is replaced with ``os.replace``, so a reader never sees half a
version and a crash mid-publish leaves the serving model untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from adapt.store.atomic import atomic_write
from adapt.store.names import InvalidCameraName, validate_camera_name

BASE = "base"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / "models"
CHECKPOINT = "model.pt"
ONNX = "model.onnx"
CARD = "card.json"
POINTER = "current"


class RegistryError(RuntimeError):
    pass


def default_root() -> Path:
    return Path(os.environ.get("CROWDWATCH_MODELS", DEFAULT_ROOT))


@dataclass(frozen=True)
class ModelVersion:
    camera: str
    version: str
    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def onnx(self) -> Path:
        return self.path / ONNX

    def card(self) -> dict:
        try:
            return json.loads((self.path / CARD).read_text())
        except (OSError, ValueError):
            return {}


def new_version_name(now: float | None = None) -> str:
    """Sortable, unique enough for one adaptation at a time per camera."""
    t = time.gmtime(now if now is not None else time.time())
    return time.strftime("v%Y%m%dT%H%M%SZ", t)


class Registry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def camera_dir(self, camera: str) -> Path:
        return self.root / validate_camera_name(camera)

    def versions(self, camera: str) -> list[ModelVersion]:
        d = self.camera_dir(camera)
        if not d.is_dir():
            return []
        found = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CHECKPOINT).is_file()]
        return [ModelVersion(camera, p.name, p) for p in sorted(found, key=lambda p: p.name)]

    def current(self, camera: str) -> ModelVersion | None:
        """The camera's own serving version, or None if it has none."""
        pointer = self.camera_dir(camera) / POINTER
        try:
            name = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        path = self.camera_dir(camera) / name
        if not name or "/" in name or name.startswith(".") or not (path / CHECKPOINT).is_file():
            raise RegistryError(f"{pointer} names {name!r}, which is not a version of {camera}")
        return ModelVersion(camera, name, path)

    def resolve(self, camera: str) -> ModelVersion:
        """The version that should serve ``camera``: its own, else the base model."""
        own = self.current(camera) if camera != BASE else None
        if own is not None:
            return own
        base = self.current(BASE)
        if base is None:
            raise RegistryError(f"no base model in {self.root / BASE} (expected a '{POINTER}' file naming a version)")
        return base

    def pointer_mtime(self, camera: str) -> float | None:
        """Cheap change detection for hot swap: the stage polls this."""
        try:
            return (self.camera_dir(camera) / POINTER).stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def publish(self, camera: str, files: dict[str, Path], card: dict, version: str | None = None, make_current: bool = True) -> ModelVersion:
        """Copy ``files`` (name -> source) into a new version, then switch ``current``."""
        if CHECKPOINT not in files:
            raise RegistryError(f"a version needs {CHECKPOINT}")
        cam_dir = self.camera_dir(camera)
        cam_dir.mkdir(parents=True, exist_ok=True)
        version = version or new_version_name()
        final = cam_dir / version
        if final.exists():
            raise RegistryError(f"version {camera}/{version} already exists")
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=cam_dir))
        try:
            for name, src in files.items():
                shutil.copy2(src, staging / name)
            (staging / CARD).write_text(json.dumps({**card, "camera": camera, "version": version}, indent=2, sort_keys=True))
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if make_current:
            self.set_current(camera, version)
        return ModelVersion(camera, version, final)

    def set_current(self, camera: str, version: str) -> None:
        if not (self.camera_dir(camera) / version / CHECKPOINT).is_file():
            raise RegistryError(f"{camera} has no version {version!r}")
        atomic_write(self.camera_dir(camera) / POINTER, (version + "\n").encode())

    def pointer_text(self, camera: str) -> str | None:
        """What the ``current`` file says, unchecked (None without one)."""
        try:
            return (self.camera_dir(camera) / POINTER).read_text().strip()
        except FileNotFoundError:
            return None

    def rollback(self, camera: str, to: str | None = None) -> ModelVersion | None:
        """Point ``current`` at ``to``, or at the parent of the current version.

        A dangling ``current`` (naming a version that is not there) is repaired:
        it is pointed at ``to``, else at the newest version older than the name
        it holds (else the newest version); with no version left the pointer is
        removed and the camera falls back to base (returns None).

        ``base`` rolls back the same way: a published base model keeps every
        earlier version (its card's parent is None, so the newest older version
        is the one restored), and cameras without their own model follow its
        pointer. Its pointer is never removed.
        """
        try:
            cur = self.current(camera)
        except RegistryError:
            return self._repair(camera, to)
        if to is None:
            if cur is None:
                raise RegistryError(f"{camera} has no current version to roll back from")
            parent = cur.card().get("parent")
            own = {v.version for v in self.versions(camera)}
            if parent in own:
                to = parent
            else:
                older = [v.version for v in self.versions(camera) if v.version < cur.version]
                if not older:
                    # without its pointer a camera falls back to base; base itself has nothing to fall back to
                    fallback = "" if camera == BASE else f"; remove {self.camera_dir(camera) / POINTER} to fall back to base"
                    raise RegistryError(f"{camera}/{cur.version} has no earlier version{fallback}")
                to = older[-1]
        self.set_current(camera, to)
        return ModelVersion(camera, to, self.camera_dir(camera) / to)

    def _repair(self, camera: str, to: str | None) -> ModelVersion | None:
        if to is None:
            named = self.pointer_text(camera) or ""
            own = [v.version for v in self.versions(camera)]
            older = [v for v in own if v < named]
            to = (older or own or [None])[-1]
        if to is None:
            if camera == BASE:  # removing it would leave every camera without its own model unserved
                raise RegistryError(f"{self.camera_dir(camera) / POINTER} names a missing version and no base version is left to point at")
            (self.camera_dir(camera) / POINTER).unlink(missing_ok=True)
            return None
        self.set_current(camera, to)
        return ModelVersion(camera, to, self.camera_dir(camera) / to)

    def cameras(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            try:
                validate_camera_name(p.name)
            except InvalidCameraName:
                continue
            if p.is_dir():
                out.append(p.name)
        return out


def default_base_checkpoint(root: str | Path | None = None) -> Path:
    """The base model's current checkpoint in the registry at ``root`` (default: :func:`default_root`)."""
    return Registry(root).resolve(BASE).checkpoint


def ensure_onnx(version: ModelVersion) -> Path:
    """Export ``model.onnx`` beside the checkpoint when it is missing (shipped models carry only the checkpoint)."""
    if version.onnx.is_file():
        return version.onnx
    from adapt.model.checkpoint import load_checkpoint
    from adapt.model.export import export_onnx

    ckpt = load_checkpoint(version.checkpoint)
    return export_onnx(ckpt.build(), version.onnx, ckpt.meta)
