"""Hold frames back to the stream's own rate (a file standing in for a live camera)."""

from __future__ import annotations

from collections.abc import Callable

# Behind by more than this (the consumer stalled): start over from now rather than
# replaying the backlog as a burst, the way a camera would have moved on.
MAX_LAG_S = 1.0


class Pacer:
    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._wall0: float | None = None
        self._t0 = 0.0

    def reset(self) -> None:
        self._wall0 = None

    def delay(self, t: float) -> float:
        """Seconds to wait before the frame at stream time t is due (0 when due already)."""
        now = self._monotonic()
        if self._wall0 is None or t < self._t0:
            self._wall0, self._t0 = now, t
            return 0.0
        due = self._wall0 + (t - self._t0)
        if now - due > MAX_LAG_S:
            self._wall0, self._t0 = now, t
            return 0.0
        return max(0.0, due - now)
