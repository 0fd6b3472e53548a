"""When to decode keyframes only.

Decoding keyframes only is far cheaper (the decoder skips every non-key frame:
see docs/PERFORMANCE.md, "Camera decode"), and it is enough when the target fps is no higher
than the stream's keyframe rate: sampling would throw the other frames away
anyway. Surveillance streams with a keyframe every 1 to 2 s and inference at
0.5 to 1 fps are the typical case.
"""

from __future__ import annotations

import statistics
from collections import deque

# Keyframe intervals remembered; the median resists the odd scene-cut keyframe.
WINDOW = 8
# Intervals needed before deciding (two GOPs of full decoding).
MIN_INTERVALS = 2


class KeyframeRate:
    """Keyframes per second of stream time, from the keyframe flags of demuxed packets."""

    def __init__(self) -> None:
        self._last_key_t: float | None = None
        self._intervals: deque[float] = deque(maxlen=WINDOW)

    def observe(self, t: float | None, is_key: bool) -> None:
        if not is_key or t is None:
            return
        if self._last_key_t is not None:
            gap = t - self._last_key_t
            if gap > 0:
                self._intervals.append(gap)
            elif gap < 0:  # loop or reset: start measuring afresh
                self._intervals.clear()
        self._last_key_t = t

    def rate(self) -> float | None:
        if len(self._intervals) < MIN_INTERVALS:
            return None
        return 1.0 / statistics.median(self._intervals)


def want_keyframes_only(setting: bool | None, fps: float, keyframe_rate: float | None) -> bool:
    """The configured choice, or in auto mode: only once the keyframe rate is known to cover fps."""
    if setting is not None:
        return setting
    return keyframe_rate is not None and fps <= keyframe_rate
