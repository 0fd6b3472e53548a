"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one implementation in crowdwatch: checkpoints, ONNX graphs, registry
pointers, labels and the buffer's frames are all written here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically and durably; returns it.

    ``write`` is the bytes to write, or a function called on the open temp
    file. The temp file (``.<name>.<random>.tmp`` beside ``path``, mode 0600)
    is fsynced, renamed over ``path``, and then the folder is fsynced so the
    rename itself survives a crash. On any error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                view = memoryview(write)
                while view:  # os.write may write less than asked
                    view = view[os.write(f.fileno(), view):]
            else:
                write(f)
                f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (a rename into it) durable; a no-op where the filesystem cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every filesystem; the data file itself is synced
    finally:
        os.close(fd)
