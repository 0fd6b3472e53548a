"""Keep at most `fps` frames per second of stream time.

Time is cut into slots of 1/fps seconds from an anchor; a frame is kept when it
is the first one in a new slot. This bounds the rate exactly (never more than
one per slot), spaces the kept frames evenly, and does not drift the way
"at least 1/fps since the last kept frame" does with jittery timestamps.
"""

from __future__ import annotations

import math

# Timestamps on an exact grid (10 fps sampled at 10 fps) must not fall into the
# previous slot through float error.
_EPS = 1e-6
# A jump this large (seconds) is a discontinuity (camera reset, pts wrap), not a gap to honour.
MAX_GAP_S = 10.0


class FpsSampler:
    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0; found {fps}")
        self.fps = fps
        self._anchor: float | None = None
        self._last_slot = -1
        self._last_t: float | None = None

    def reset(self) -> None:
        self._anchor = None
        self._last_slot = -1
        self._last_t = None

    def keep(self, t: float) -> bool:
        """Whether the frame at stream time t (seconds) is emitted."""
        # A step back within one slot is timestamp jitter and falls in an old slot;
        # anything larger either way is a new timeline.
        if self._last_t is not None and not (-1.0 / self.fps <= t - self._last_t <= MAX_GAP_S):
            self.reset()
        self._last_t = t
        if self._anchor is None:
            self._anchor = t
        slot = math.floor((t - self._anchor) * self.fps + _EPS)
        if slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True
