"""What one camera source is asked to do, checked once when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass


class SourceError(ValueError):
    """A camera source is misconfigured: bad URL, missing file, impossible numbers.

    Raised up front, never for a stream that merely fails at run time (those are
    retried). The caller runs each camera in its own process, so this stops one
    camera only.
    """


# The model wants H and W in multiples of 32; a box smaller than that cannot hold a frame.
MIN_BOX = 32


@dataclass(frozen=True)
class SourceConfig:
    camera: str
    url: str
    fps: float  # target inference fps: at most this many frames per second of stream time
    # Model input box. The output is scaled to fit inside it, aspect kept, then padded
    # to multiples of 32 (never beyond the box rounded down to 32). None: keep that side.
    width: int | None = None
    height: int | None = None
    loop: bool = False  # files (and seekable http): start again at EOF
    realtime: bool = False  # pace decoding at the stream's own rate (files and plugins standing in for cameras; ignored for rtsp/http)
    keyframes_only: bool | None = None  # None: auto, when fps <= the stream's keyframe rate
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    stall_timeout_s: float = 15.0  # no frame for this long: close and reopen
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def validate(self) -> SourceConfig:
        """Return self, or raise SourceError naming the field, what was expected and what was found."""
        if not isinstance(self.camera, str) or not self.camera:
            raise SourceError(f"camera must be a non-empty string; found {self.camera!r}")
        where = f"camera {self.camera!r}"
        if not isinstance(self.url, str) or not self.url.strip():
            raise SourceError(f"{where}: url must be a non-empty string; found {self.url!r}")
        _positive(where, "fps", self.fps)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < MIN_BOX:
                raise SourceError(f"{where}: {name} must be None or an integer >= {MIN_BOX}; found {value!r}")
        if self.keyframes_only not in (None, True, False):
            raise SourceError(f"{where}: keyframes_only must be true, false or unset; found {self.keyframes_only!r}")
        for name in ("open_timeout_s", "read_timeout_s", "stall_timeout_s", "backoff_initial_s", "backoff_max_s"):
            _positive(where, name, getattr(self, name))
        if self.backoff_max_s < self.backoff_initial_s:
            raise SourceError(
                f"{where}: backoff_max_s must be >= backoff_initial_s ({self.backoff_initial_s}); "
                f"found {self.backoff_max_s}"
            )
        return self


def _positive(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SourceError(f"{where}: {name} must be a finite number > 0; found {value!r}")
