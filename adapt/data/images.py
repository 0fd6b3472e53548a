"""Reading image files: the one reader of an image file, natural file order, image suffixes.

Every image crowdwatch reads from disk (dataset images, adaptation frames,
buffered frames, frames to label) goes through ``load_image``.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

# What load_image decodes, and what a folder of frames may hold. The dataset
# layouts take a subset (datasets.DATASET_SUFFIXES).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class DatasetError(ValueError):
    """A dataset cannot be read at all (bad root, unknown format, no images)."""


class BadImage(DatasetError):
    """An image file cannot be read or decoded.

    ``reason`` is short and path-free so that it can key a skip counter.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple:  # survive pickling across DataLoader workers
        return (type(self), (self.path, self.reason))


def natural_key(path: Path) -> tuple:
    """Sort key comparing digit runs as numbers: IMG_2 < IMG_10.

    ``re.split`` with a capture group alternates text and digits, so keys
    compare str with str and int with int at every position.
    """
    parts = re.split(r"(\d+)", path.name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def load_image(path: Path | str) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3); raise BadImage (a ValueError) naming the path and reason.

    Grey and alpha images are converted to 3 channels. EXIF orientation is
    applied, so the pixels are the image as a viewer shows it (the labelling
    page, a browser, shows frames that way too).
    """
    path = Path(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)  # also handles non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise BadImage(path, f"cannot read file: {e.strerror or type(e).__name__}") from None
    if buf.size == 0:
        raise BadImage(path, "file is empty")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise BadImage(path, "cannot decode image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
