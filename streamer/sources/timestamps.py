"""Repairing stream timestamps: the ones a stream has are often wrong or missing.

Sampling and pacing run on stream time, so a bad clock would make a camera emit
too much, too little or nothing at all. Per frame, the reader's best-effort pts
comes first (``crowdwatch.video``); what a live connection does with its clock
is repaired here.
"""

from __future__ import annotations

from collections.abc import Callable


class StreamTime:
    """Stream time for every frame of one connection, repairing missing or stuck timestamps.

    Frames without a timestamp (MJPEG over http has none; an RTSP stream's first
    frame often has none) are placed by the wall clock: after the last timed frame,
    or, before any, at the time elapsed since the connection opened. A stream whose
    timestamps stop advancing while frames keep coming (cameras and servers that send
    constant RTP timestamps exist) would let sampling emit nothing ever again, so after
    `STUCK_S` of that the connection is timed by the wall clock from then on.

    On a live stream (``live=True``: rtsp, http) the timestamps must follow the wall
    clock: a jump of more than `JUMP_S` beyond the wall time between two frames, either
    way (a camera's clock reset, an RTP timestamp wrap, a server's splice) is a
    discontinuity, not a gap: the stream time goes on from the previous frame by the
    wall time in between, and later timestamps are taken relative to the new base.
    A file's gaps are its own and stay.
    """

    STUCK_S = 2.0
    JUMP_S = 5.0

    def __init__(self, monotonic: Callable[[], float], *, live: bool = False) -> None:
        self._monotonic = monotonic
        self.live = live
        self.reset()

    def reset(self) -> None:
        self._opened = self._monotonic()
        self._last_t: float | None = None  # the last value handed out
        self._last_wall = self._opened
        self._last_raw: float | None = None
        self._stuck_since: float | None = None
        self.distrusted = False  # timestamps of this connection are being ignored
        self.distrusted_at_frame = False
        self._offset = 0.0  # added to a live stream's timestamps after its discontinuities
        self.discontinuities = 0
        self.jumped_at_frame = False

    def __call__(self, t: float | None) -> float:
        now = self._monotonic()
        self.distrusted_at_frame = False  # True only for the frame that turned distrust on
        self.jumped_at_frame = False  # True only for a frame whose timestamp was rebased
        if t is not None and not self.distrusted and self.live and self._last_raw is not None and self._last_t is not None:
            step, wall = t - self._last_raw, now - self._last_wall
            if step > wall + self.JUMP_S or step < -self.JUMP_S:
                # continue from the previous frame by the wall time in between
                self._offset = self._last_t + wall - t
                self.discontinuities += 1
                self.jumped_at_frame = True
                self._last_raw = t
                self._stuck_since = None
                self._last_t, self._last_wall = t + self._offset, now
                return self._last_t
        if t is not None and not self.distrusted:
            if self._last_raw is None or t > self._last_raw:
                self._stuck_since = None
            elif self._stuck_since is None:
                self._stuck_since = now
            elif now - self._stuck_since > self.STUCK_S:
                self.distrusted = self.distrusted_at_frame = True
            self._last_raw = t
        if t is None or self.distrusted:
            t = self._last_t + (now - self._last_wall) if self._last_t is not None else now - self._opened
        else:
            t = t + self._offset
        self._last_t, self._last_wall = t, now
        return t
