"""What a Source hands out (Frame), and what a stream behind it yields (RawFrame).

A pluggable scheme (``register_scheme``) produces a FrameStream of RawFrames;
the Source does the rest for every kind alike: fps sampling, pacing, resizing
to the model box, sequence numbers, capture times, reconnects and counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
import numpy as np

from crowdwatch.fit import Fit


@dataclass
class Frame:
    camera: str
    seq: int  # per camera, +1 per emitted frame, kept across reconnects
    capture_ns: int  # time.time_ns() when the frame was decoded (after realtime pacing)
    image: np.ndarray  # RGB uint8 (h, w, 3), C-contiguous, h and w multiples of 32
    source_pts: float | None  # the stream's own presentation time in seconds, when it has one
    # How source pixels map onto `image`: (x, y) -> (x * fit.scale, y * fit.scale);
    # the padding is at the right and bottom. Zones and calibration need it.
    fit: Fit | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # passed through from a plugin (e.g. synthetic truth)


@dataclass
class RawFrame:
    # A decoded PyAV frame (converted only if it is emitted) or an RGB uint8 (h, w, 3) array.
    image: av.VideoFrame | np.ndarray
    # Stream time in seconds, non-decreasing across loops; sampling and pacing run on it.
    # None: the stream has no timing (e.g. MJPEG over http); arrival time is used.
    time: float | None
    pts: float | None = None  # the stream's own pts in seconds (restarts on each loop)
    meta: dict[str, Any] = field(default_factory=dict)


class FrameStream(Protocol):
    """One connection to a camera. Iteration ends at end of stream; errors raise."""

    def __iter__(self) -> Iterator[RawFrame]: ...

    def close(self) -> None: ...
