"""Readers for labelled crowd datasets: head points per image, never pixels.

Readers only pair image files with label files and parse labels; they do not
open images (that is :func:`load_image`, called by the torch datasets). Every
file that cannot be used lands in ``DatasetIndex.skipped`` with a reason, so a
bad file never aborts a read and never vanishes silently.

Layouts (``format`` argument of :func:`read_dataset`)
-----------------------------------------------------
``shanghaitech``
    ``root/images/IMG_<n>.jpg`` with ``root/ground-truth/GT_IMG_<n>.mat``
    (``ground_truth/`` is accepted too). ``loadmat(f)["image_info"]`` is a 1x1
    cell holding a 1x1 struct with ``location`` (N, 2) as (x, y) and
    ``number``; an optional ``head_size`` (N,) field holds head diameters in
    pixels (our synthetic renderer writes it).
``ucf``
    UCF_CC_50: ``root/<n>.jpg`` with ``root/<n>_ann.mat`` holding
    ``annPoints`` (N, 2) as (x, y).
``gcc``
    GTA5 Crowd Counting: ``pngs/<name>.png`` with ``mats/<name>.mat`` in
    ``root`` itself or in scene folders up to two levels below it
    (``root/<scene>/pngs``, ``root/<part>/<scene>/pngs``). ``image_info`` holds
    ``location`` stored as (row, col) = (y, x), which is swapped to (x, y).
    Accepted nestings: a 1x1 struct (``image_info[0,0]["location"]``), a 1x1
    cell holding a 1x1 struct (the ShanghaiTech nesting), or either of those
    with more 1x1 cell wrappers; ``location`` as a top-level variable is
    accepted as well. ``number``, when present, must match.
``json``
    ``root/images/<stem>.<jpg|jpeg|png>`` with ``root/labels/<stem>.json`` =
    ``{"image": "<file name>", "width": W, "height": H, "points": [[x, y], ...],
    "head_sizes": [s, ...]}``; ``image``, ``width``, ``height`` and
    ``head_sizes`` are optional. A NaN head size means "unknown for this head".

Points are (x, y) in pixels. Points outside the image are kept here; the
density map drops and counts them. Image files are listed in natural order
(``IMG_2`` before ``IMG_10``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from adapt.data.images import DatasetError, natural_key

FORMATS = ("shanghaitech", "ucf", "gcc", "json")
# the image files the dataset layouts (and list_images) take; images.IMAGE_SUFFIXES is all that load_image decodes
DATASET_SUFFIXES = (".jpg", ".jpeg", ".png")

LAYOUTS = {
    "shanghaitech": "root/images/IMG_<n>.jpg + root/ground-truth/GT_IMG_<n>.mat (image_info -> location (x, y))",
    "ucf": "root/<n>.jpg + root/<n>_ann.mat (annPoints (x, y))",
    "gcc": "[root | root/<scene> | root/<part>/<scene>]/pngs/<name>.png + .../mats/<name>.mat (image_info -> location (y, x))",
    "json": 'root/images/<stem>.<jpg|jpeg|png> + root/labels/<stem>.json ({"points": [[x, y], ...]})',
}


class BadAnnotation(DatasetError):
    """A label file is missing, malformed or inconsistent."""


@dataclass(frozen=True, eq=False)
class Annotation:
    image_path: Path
    points: np.ndarray  # (N, 2) float32, (x, y) pixels
    head_sizes: np.ndarray | None = None  # (N,) float32 head diameter in px, when known

    @property
    def count(self) -> int:
        return int(len(self.points))

    def __repr__(self) -> str:  # arrays of thousands of points are no use in logs
        sizes = "none" if self.head_sizes is None else "known"
        return f"Annotation({str(self.image_path)!r}, count={self.count}, head_sizes={sizes})"


@dataclass
class DatasetIndex:
    root: Path
    format: str
    items: list[Annotation] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    @property
    def total_points(self) -> int:
        return sum(a.count for a in self.items)

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------- helpers


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATASET_SUFFIXES]
    return sorted(files, key=natural_key)


def check_points(raw: Any, what: str = "points") -> np.ndarray:
    """(N, 2) finite float32, or BadAnnotation. Empty inputs give (0, 2)."""
    try:
        p = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadAnnotation(f"{what} are not numeric: {e}") from None
    if p.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != 2:
        raise BadAnnotation(f"{what} must have shape (N, 2), found {p.shape}")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise BadAnnotation(f"{what} has {int(bad.sum())} non-finite row(s), first at index {int(np.argmax(bad))}")
    return p.astype(np.float32)


def check_head_sizes(raw: Any, n: int) -> np.ndarray:
    """(n,) float32 head diameters; NaN = unknown, anything else must be finite and > 0."""
    try:
        s = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadAnnotation(f"head sizes are not numeric: {e}") from None
    # MATLAB stores vectors as 1xN or Nx1; an empty one may come back as (0, 0).
    if s.size == 0 and n == 0:
        return np.zeros(0, dtype=np.float32)
    if s.ndim > 2 or (s.ndim == 2 and 1 not in s.shape) or s.size != n:
        raise BadAnnotation(f"head sizes must be a vector of {n} values, found shape {s.shape}")
    s = s.reshape(-1)
    known = ~np.isnan(s)
    if not (np.isfinite(s[known]).all() and (s[known] > 0).all()):
        raise BadAnnotation("head sizes must be finite and > 0 (or NaN for unknown)")
    return s.astype(np.float32)


def _load_mat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises a zoo of types on corrupt files
        raise BadAnnotation(f"cannot read .mat file: {type(e).__name__}: {e}") from None


def _require(mat: dict[str, Any], key: str) -> Any:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BadAnnotation(f"no {key!r} variable in .mat (found {found})")
    return mat[key]


def _unwrap(obj: Any) -> Any:
    """Strip 1x1 cell wrappers (object arrays of size 1) down to the content."""
    for _ in range(8):
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
            obj = obj.reshape(-1)[0]
        else:
            return obj
    return obj


def _struct_fields(mat: dict[str, Any], key: str) -> dict[str, Any]:
    """Fields of the 1x1 struct stored under ``key``, through any 1x1 cell nesting."""
    obj = _unwrap(_require(mat, key))
    if not (isinstance(obj, np.ndarray) and obj.dtype.names):
        raise BadAnnotation(f"{key!r} is not a struct (found {type(obj).__name__} {getattr(obj, 'shape', '')})")
    if obj.size != 1:
        raise BadAnnotation(f"{key!r} is a struct array of {obj.size} elements, expected 1")
    rec = obj.reshape(-1)[0]
    return {name: _unwrap(rec[name]) for name in obj.dtype.names}


def _check_number(fields: dict[str, Any], n: int) -> None:
    if "number" not in fields:
        return
    try:
        number = float(np.asarray(fields["number"], dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        raise BadAnnotation(f"'number' field is not a number: {fields['number']!r}") from None
    if number != n:
        raise BadAnnotation(f"'number' field says {number:g} but 'location' holds {n} points")


def _image_info_points(path: Path, swap_xy: bool) -> tuple[np.ndarray, np.ndarray | None]:
    mat = _load_mat(path)
    if "image_info" not in mat and "location" in mat:
        fields = {"location": mat["location"]}
    else:
        fields = _struct_fields(mat, "image_info")
    if "location" not in fields:
        raise BadAnnotation(f"image_info has no 'location' field (fields: {sorted(fields)})")
    pts = check_points(fields["location"], "location")
    if swap_xy:
        pts = np.ascontiguousarray(pts[:, ::-1])
    _check_number(fields, len(pts))
    sizes = None
    if "head_size" in fields:
        sizes = check_head_sizes(fields["head_size"], len(pts))
    return pts, sizes


# --------------------------------------------------------------------------- formats

# A lister returns (pairs of (image, label file or None when missing), orphan label files).
Pairs = tuple[list[tuple[Path, Path | None]], list[Path]]


def _pair(images: Iterable[Path], label_for: Callable[[Path], Path], label_files: Iterable[Path]) -> Pairs:
    pairs: list[tuple[Path, Path | None]] = []
    used: set[Path] = set()
    for img in images:
        lab = label_for(img)
        if lab.is_file():
            used.add(lab)
            pairs.append((img, lab))
        else:
            pairs.append((img, None))
    orphans = sorted((p for p in label_files if p not in used), key=natural_key)
    return pairs, orphans


def _list_shanghaitech(root: Path) -> Pairs:
    gt_dir = root / "ground-truth"
    if not gt_dir.is_dir() and (root / "ground_truth").is_dir():
        gt_dir = root / "ground_truth"
    labels = gt_dir.glob("GT_*.mat") if gt_dir.is_dir() else []
    return _pair(list_images(root / "images"), lambda p: gt_dir / f"GT_{p.stem}.mat", labels)


def _list_ucf(root: Path) -> Pairs:
    return _pair(list_images(root), lambda p: root / f"{p.stem}_ann.mat", root.glob("*_ann.mat"))


def _relative_key(path: Path, root: Path) -> tuple:
    return tuple(natural_key(Path(part)) for part in path.relative_to(root).parts)


def _gcc_scene_dirs(root: Path) -> list[Path]:
    dirs = [root] if (root / "pngs").is_dir() else []
    for pattern in ("*/pngs", "*/*/pngs"):
        found = (p.parent for p in root.glob(pattern) if p.is_dir())
        dirs += sorted(found, key=lambda d: _relative_key(d, root))
    return dirs


def _list_gcc(root: Path) -> Pairs:
    pairs: list[tuple[Path, Path | None]] = []
    orphans: list[Path] = []
    for scene in _gcc_scene_dirs(root):
        images = list_images(scene / "pngs")
        mats = (scene / "mats").glob("*.mat") if (scene / "mats").is_dir() else []
        ps, os_ = _pair(images, lambda p, s=scene: s / "mats" / f"{p.stem}.mat", mats)
        pairs += ps
        orphans += os_
    return pairs, orphans


def _list_json(root: Path) -> Pairs:
    labels = (root / "labels").glob("*.json") if (root / "labels").is_dir() else []
    return _pair(list_images(root / "images"), lambda p: root / "labels" / f"{p.stem}.json", labels)


def _parse_json(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        doc = json.loads(label.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadAnnotation(f"cannot parse JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadAnnotation(f"top level must be an object, found {type(doc).__name__}")
    if "points" not in doc:
        raise BadAnnotation(f"no 'points' key (keys: {sorted(doc)})")
    if not isinstance(doc["points"], list):
        raise BadAnnotation(f"'points' must be a list, found {type(doc['points']).__name__}")
    name = doc.get("image")
    if name is not None and name != image.name:
        raise BadAnnotation(f"label names image {name!r} but is paired with {image.name!r}")
    for key in ("width", "height"):
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise BadAnnotation(f"{key!r} must be a positive integer, found {v!r}")
    pts = check_points(doc["points"])
    sizes = None
    if doc.get("head_sizes") is not None:
        raw = [np.nan if s is None else s for s in doc["head_sizes"]] if isinstance(doc["head_sizes"], list) else doc["head_sizes"]
        sizes = check_head_sizes(raw, len(pts))
    return pts, sizes


_LISTERS: dict[str, Callable[[Path], Pairs]] = {
    "shanghaitech": _list_shanghaitech,
    "ucf": _list_ucf,
    "gcc": _list_gcc,
    "json": _list_json,
}

_PARSERS: dict[str, Callable[[Path, Path], tuple[np.ndarray, np.ndarray | None]]] = {
    "shanghaitech": lambda img, lab: _image_info_points(lab, swap_xy=False),
    "ucf": lambda img, lab: (check_points(_require(_load_mat(lab), "annPoints"), "annPoints"), None),
    "gcc": lambda img, lab: _image_info_points(lab, swap_xy=True),
    "json": _parse_json,
}


# --------------------------------------------------------------------------- public API


def read_dataset(root: str | Path, format: str, limit: int | None = None) -> DatasetIndex:
    """Index a labelled dataset; see the module docstring for the layouts.

    ``limit`` stops after that many usable items (skips do not count towards
    it), taken in natural file order. Raises DatasetError when ``root`` does
    not exist, the format is unknown or no image is found where the layout
    expects them; every other problem is recorded in ``skipped``.
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, found {limit}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; {format} layout: {LAYOUTS[format]}")
    pairs, orphans = _LISTERS[format](root)
    if not pairs:
        raise DatasetError(f"no images found under {root}; {format} layout: {LAYOUTS[format]}")

    index = DatasetIndex(root=root, format=format)
    parse = _PARSERS[format]
    for image, label in pairs:
        if limit is not None and len(index.items) >= limit:
            break
        if label is None:
            index.skipped.append((image, "no label file for this image"))
            continue
        try:
            points, sizes = parse(image, label)
        except BadAnnotation as e:
            index.skipped.append((label, str(e)))
            continue
        index.items.append(Annotation(image_path=image, points=points, head_sizes=sizes))
    if limit is None:
        index.skipped += [(p, "label file without a matching image") for p in orphans]
    return index
