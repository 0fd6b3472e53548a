"""Source: the frames of one camera, for as long as it is wanted, whatever the stream does.

Per connection: open, decode, sample to the target fps, fit to the model box,
hand out. Any failure (cannot open, read error, live stream ended, stall) marks
the camera down and reconnects after an exponential backoff with full jitter;
``frames()`` never raises for a stream problem, only ``SourceError`` for a
misconfiguration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any, Protocol

import av
import numpy as np

from crowdwatch.fit import Fit

from .backoff import Backoff
from .config import SourceConfig, SourceError
from .frame import Frame, FrameStream, RawFrame
from .pacing import Pacer
from .pyav import STREAM_ERRORS, AvStream
from .sampling import FpsSampler
from .stats import DECODE_ERROR, EOF, OPEN, READ, SAMPLING, STALL, SourceStats
from .timestamps import StreamTime
from .urls import Target, resolve
from .watchdog import Stalled, StallWatchdog

log = logging.getLogger(__name__)

# Longest single sleep, so that close() from another thread is honoured promptly.
_SLEEP_SLICE_S = 0.1


class Clock(Protocol):
    def time_ns(self) -> int: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float, /) -> None: ...


class Source:
    """Iterator of Frames for one camera, with reconnect. One consumer thread; close() from any thread."""

    def __init__(self, cfg: SourceConfig, stats: SourceStats | None = None, clock: Clock = time) -> None:
        self.cfg = cfg.validate()
        self.target: Target = resolve(cfg.url)  # SourceError here, before anything runs
        self.stats = stats if stats is not None else SourceStats()
        self._clock = clock
        self._stop = threading.Event()
        # Held while a stream is opened or read, released while a frame is out with the
        # consumer: close() from another thread may then close the stream at once; otherwise
        # the reader closes it at its next packet (a blocked read ends within read_timeout_s).
        self._io_lock = threading.Lock()
        self._stream: FrameStream | None = None
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self._fit: Fit | None = None
        self._seq = 0
        self._been_up = False  # a connection has delivered a frame: the next one to do so is a reconnect
        # Failures that mean "reconnect". A plugin is foreign code: anything it raises counts,
        # so that one bug in it cannot take the camera down for good.
        self._retryable: tuple[type[BaseException], ...] = (
            (Exception,) if self.target.plugin is not None else STREAM_ERRORS
        )

    @property
    def live(self) -> bool:
        """A network camera (rtsp, http): frames come at the camera's pace, never ahead of it."""
        return self.target.is_network

    @property
    def paced(self) -> bool:
        """Frames are held back to their timestamps: ``realtime`` on a file or plugin source only.

        A live stream cannot run ahead of its camera; pacing it would only sleep
        through its timestamp jumps while the camera moves on.
        """
        return self.cfg.realtime and not self.live

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._io_lock.acquire(blocking=False):
            try:
                self._close_stream()
            finally:
                self._io_lock.release()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self) -> Iterator[Frame]:
        """Frames until close(); a file that does not loop also ends at its end.

        One consumer at a time. SourceError (a misconfigured plugin) is the only exception.
        """
        watchdog = StallWatchdog(self.cfg.stall_timeout_s, self._clock.monotonic)
        delay = 0.0
        try:
            while not self._stop.is_set():
                if delay > 0 and not self._sleep(delay):
                    return
                stream = self._connect(watchdog)
                if stream is None:
                    delay = self._retry_delay()
                    continue
                delivered, failure = yield from self._session(stream, watchdog)
                if self._stop.is_set():
                    return
                if failure is None:  # clean end of stream
                    if self.target.finite and delivered:
                        log.info("camera %s: end of %s", self.cfg.camera, self.target.redacted)
                        return
                    failure = (EOF, "stream ended" if delivered else "stream ended before its first frame")
                self.stats.fail(*failure)
                delay = self._retry_delay()
        finally:
            with self._io_lock:
                self._close_stream()
            self.stats.up = False

    def _session(
        self, stream: FrameStream, watchdog: StallWatchdog
    ) -> Generator[Frame, None, tuple[bool, tuple[str, str] | None]]:
        """The frames of one connection. Returns whether it delivered any, and the failure
        that ended it (None: end of stream, or close())."""
        sampler = FpsSampler(self.cfg.fps)
        pacer = Pacer(self._clock.monotonic)
        # a live stream arrives at its own pace: never paced, and its timestamp jumps are repaired
        stream_time = StreamTime(self._clock.monotonic, live=self.live)
        watchdog.progress()
        items = iter(stream)
        delivered = False
        failure: tuple[str, str] | None = None
        try:
            while True:
                raw, failure = self._next_raw(items)
                if raw is None or self._stop.is_set():
                    break
                self.stats.frames_decoded += 1
                self.stats.last_frame_monotonic = self._clock.monotonic()
                watchdog.progress()
                if not delivered:
                    delivered = True
                    self._came_up()
                if self.paced and raw.time is not None:
                    if not self._sleep(pacer.delay(raw.time)):
                        break
                    watchdog.progress()
                capture_ns = self._clock.time_ns()
                keep = sampler.keep(stream_time(raw.time))
                if stream_time.distrusted_at_frame:
                    log.warning("camera %s: timestamps stopped advancing; sampling by arrival time", self.cfg.camera)
                if stream_time.jumped_at_frame:
                    log.warning("camera %s: timestamp jump (discontinuity %d of this connection); timing continues from the wall clock",
                                self.cfg.camera, stream_time.discontinuities)
                if not keep:
                    self.stats.drop(SAMPLING)
                    continue
                frame = self._to_frame(raw, capture_ns)
                if frame is None:
                    continue
                self.stats.frames_emitted += 1
                yield frame
                watchdog.progress()  # the consumer's time is not the stream's stall
        finally:
            with self._io_lock:
                self._close_stream(items)
            self.stats.up = False
        return delivered, failure

    def _came_up(self) -> None:
        self._backoff.reset()
        self.stats.up = True
        if self._been_up:
            self.stats.reconnects += 1
            log.info("camera %s: reconnected to %s", self.cfg.camera, self.target.redacted,
                     extra={"event": "source_up", "camera": self.cfg.camera})
        self._been_up = True

    # -- connection ---------------------------------------------------------------------

    def _connect(self, watchdog: StallWatchdog) -> FrameStream | None:
        """Open a stream, or count the failure and return None. SourceError propagates."""
        with self._io_lock:
            if self._stop.is_set():
                return None
            try:
                if self.target.plugin is not None:
                    stream: FrameStream = self.target.plugin.factory(self.cfg)
                else:
                    av_stream = AvStream(self.target, self.cfg, self.stats, watchdog, self._stop)
                    self._stream = av_stream  # so that a failing open is still closed
                    stream = av_stream.open()
            except SourceError:
                raise
            except self._retryable as exc:
                self._close_stream()
                self.stats.fail(OPEN, self._describe(exc))
                return None
            self._stream = stream
            return stream

    def _next_raw(self, items: Iterator[RawFrame]) -> tuple[RawFrame | None, tuple[str, str] | None]:
        """The next decoded frame; (None, None) at end of stream; (None, (kind, message)) on failure."""
        with self._io_lock:
            if self._stop.is_set():
                return None, None
            try:
                return next(items), None
            except StopIteration:
                return None, None
            except Stalled as exc:
                return None, (STALL, str(exc))
            except SourceError:
                raise
            except self._retryable as exc:
                return None, (READ, self._describe(exc))

    def _retry_delay(self) -> float:
        delay = self._backoff.next_delay()
        log.warning(
            "camera %s: %s (%s); retrying in %.2f s",
            self.cfg.camera, self.stats.last_error, self.target.redacted, delay,
            extra={"event": "source_down", "camera": self.cfg.camera},
        )
        return delay

    def _close_stream(self, items: Any = None) -> None:
        """Close the current stream; the caller holds _io_lock."""
        if items is not None and items is not self._stream and hasattr(items, "close"):
            try:
                items.close()
            except Exception:  # noqa: BLE001 - closing must not fail the source
                log.debug("camera %s: error closing the frame iterator", self.cfg.camera, exc_info=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                log.debug("camera %s: error closing the stream", self.cfg.camera, exc_info=True)

    def _describe(self, exc: BaseException) -> str:
        # PyAV errors quote the URL they failed on, password included.
        text = f"{type(exc).__name__}: {exc}"
        if self.target.open_url != self.target.redacted:
            text = text.replace(self.target.open_url, self.target.redacted)
        return text

    def _sleep(self, seconds: float) -> bool:
        """Sleep in slices; False if close() was called meanwhile."""
        deadline = self._clock.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return True
            self._clock.sleep(min(remaining, _SLEEP_SLICE_S))
        return False

    # -- frames -------------------------------------------------------------------------

    def _to_frame(self, raw: RawFrame, capture_ns: int) -> Frame | None:
        """Convert and fit one frame to the model box; None (counted) if it is unusable."""
        try:
            rgb = _rgb(raw.image)
            h, w = rgb.shape[:2]
            fit = self._fit
            if fit is None or (fit.src_w, fit.src_h) != (w, h):  # first frame, or the camera changed size
                fit = self._fit = Fit.plan(w, h, self.cfg.width, self.cfg.height)
            image = fit.apply(rgb)
        except (ValueError, av.FFmpegError) as exc:
            self.stats.drop(DECODE_ERROR)
            log.debug("camera %s: unusable frame: %s", self.cfg.camera, exc)
            return None
        frame = Frame(self.cfg.camera, self._seq, capture_ns, image, raw.pts, fit, dict(raw.meta))
        self._seq += 1
        return frame


def _rgb(image: av.VideoFrame | np.ndarray) -> np.ndarray:
    if isinstance(image, av.VideoFrame):
        # Convert at source size, resize with OpenCV: faster than frame.reformat(w, h, ...) (docs/PERFORMANCE.md, "Camera decode").
        return image.to_ndarray(format="rgb24")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"a stream must yield RGB uint8 (h, w, 3) images; found "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    return image
