"""One PyAV connection to a camera, file or http stream: open, demux the video
track, decode (keyframes only when that is enough), loop files.

Every failure surfaces as an exception from ``open()`` or from iteration, and the
Source decides what to do with it; corrupt packets and frames are the exception:
they are counted (``decode_error``) and skipped, because one bad packet must not
cost a reconnect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import av

from .config import SourceConfig
from .frame import RawFrame
from .keyframes import KeyframeRate, want_keyframes_only
from .stats import DECODE_ERROR, NONKEY, SourceStats
from .timestamps import BestEffortPts
from .urls import Target
from .watchdog import StallWatchdog

log = logging.getLogger(__name__)

# Consecutive demuxer errors tolerated in a corrupt stretch of a file before giving up on
# the connection; the demuxer usually resyncs after one or two.
MAX_DEMUX_ERRORS = 8
# Frame period assumed across a loop seam when the stream declares no rate.
DEFAULT_PERIOD_S = 0.04


class NoVideoStream(Exception):
    pass


class EmptyStream(Exception):
    pass


# What a broken camera, network or file can raise; anything else from this module is a bug
# and propagates rather than being retried forever. (PyAV's interrupt callback reports a
# clock jump as RuntimeError.)
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError, OSError, EOFError, RuntimeError, NoVideoStream, EmptyStream,
)


def open_options(target: Target, cfg: SourceConfig) -> dict[str, str]:
    """Container options for av.open: TCP for RTSP (no UDP loss, passes firewalls) and
    socket I/O timeouts in microseconds, on top of PyAV's own open/read timeouts."""
    io_timeout_us = str(int(cfg.read_timeout_s * 1_000_000))
    if target.scheme in ("rtsp", "rtsps"):
        return {
            "rtsp_transport": "tcp",
            "timeout": io_timeout_us,
            "allowed_media_types": "video",  # do not set up (or read) an audio track
            # Probing for 1 s instead of 5 (the SDP already has the codec parameters)
            # brings a connect, and so every reconnect, from ~2.7 s down to ~1 s.
            "analyzeduration": "1000000",
        }
    if target.scheme in ("http", "https"):
        return {"timeout": io_timeout_us}
    return {}


class AvStream:
    def __init__(
        self,
        target: Target,
        cfg: SourceConfig,
        stats: SourceStats,
        watchdog: StallWatchdog,
        stop: threading.Event | None = None,
    ) -> None:
        self.target = target
        self.cfg = cfg
        self.stats = stats
        self.watchdog = watchdog
        # Checked on every packet: in keyframes-only mode a whole GOP (seconds) of packets
        # can go by without a frame to return to the Source.
        self._stop = stop or threading.Event()
        self._container: av.container.InputContainer | None = None
        self._video: av.VideoStream | None = None
        self._keyrate = KeyframeRate()
        self._keyframes_only = False
        self._timed = True

    @property
    def keyframes_only(self) -> bool:
        return self._keyframes_only

    def open(self) -> AvStream:
        self._container = av.open(
            self.target.open_url,
            mode="r",
            container_options=open_options(self.target, self.cfg),
            timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s),
        )
        if not self._container.streams.video:
            raise NoVideoStream(f"no video track in {self.target.redacted}")
        # Decoder threads stay at PyAV's default, slice threading: frame threading would add
        # one frame of latency per thread to a live stream, and with a process per camera,
        # one thread each is the most frames per core (docs/PERFORMANCE.md, "Camera decode").
        self._video = self._container.streams.video[0]
        # Formats without timestamps (MJPEG over http) get pts invented at an assumed
        # 25 fps by libavformat; the Source must use arrival time instead.
        self._timed = not (self._container.format.flags & av.format.Flags.no_timestamps.value)
        if self.cfg.keyframes_only:
            self._set_keyframes_only(True)
        return self

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def __iter__(self) -> Iterator[RawFrame]:
        if self._container is None or self._video is None:
            raise NoVideoStream("AvStream is not open")
        rate = self._video.average_rate or self._video.guessed_rate
        period = 1.0 / float(rate) if rate else DEFAULT_PERIOD_S
        offset = 0.0  # added to pts so that time runs on across loops
        last_t: float | None = None
        guess = BestEffortPts()
        while True:
            decoded = 0
            guess.reset()
            for frame in self._decode_pass():
                ts = guess(frame.pts, frame.dts) if self._timed else None
                pts = float(ts * frame.time_base) if ts is not None and frame.time_base else None
                t = None
                if pts is not None:
                    if decoded == 0 and last_t is not None:
                        offset = last_t + period - pts  # the loop's first frame follows the last one
                    t = pts + offset
                    last_t = t
                decoded += 1
                yield RawFrame(frame, t, pts)
            if not self.cfg.loop or self._stop.is_set():
                return
            if decoded == 0:
                # Seeking back would only spin: nothing in this stream decodes.
                raise EmptyStream(f"end of stream without a decodable frame in {self.target.redacted}")
            assert self._container is not None
            self._container.seek(0)  # also flushes the decoder out of its end-of-stream state

    def _decode_pass(self) -> Iterator[av.VideoFrame]:
        """Decoded frames from here to end of stream."""
        assert self._container is not None and self._video is not None
        container, video = self._container, self._video
        packets = container.demux(video)  # the video track only: audio is never read into Python
        demux_errors = 0
        while not self._stop.is_set():
            self.watchdog.check()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.InvalidDataError:
                demux_errors += 1
                self.stats.drop(DECODE_ERROR)
                if demux_errors > MAX_DEMUX_ERRORS:
                    raise
                packets = container.demux(video)  # carries on from the current read position
                continue
            demux_errors = 0
            if packet.size:  # size 0: the flush packet at end of stream, which drains the decoder
                self._observe_packet(packet)
            try:
                frames = packet.decode()
            except av.FFmpegError:
                self.stats.drop(DECODE_ERROR)
                continue
            for frame in frames:
                if frame.is_corrupt:
                    self.stats.drop(DECODE_ERROR)
                    continue
                yield frame

    def _observe_packet(self, packet: av.Packet) -> None:
        key = packet.is_keyframe
        ts = packet.pts if packet.pts is not None else packet.dts
        if self._timed and ts is not None:
            self._keyrate.observe(float(ts * packet.time_base), key)
        if key:
            # Switch modes only right before a keyframe: turning full decoding back on
            # mid-GOP would decode frames whose references were skipped.
            want = want_keyframes_only(self.cfg.keyframes_only, self.cfg.fps, self._keyrate.rate())
            if want != self._keyframes_only:
                self._set_keyframes_only(want)
        elif self._keyframes_only:
            self.stats.drop(NONKEY)
            self.watchdog.progress()  # skipping on purpose is not a stall

    def _set_keyframes_only(self, on: bool) -> None:
        assert self._video is not None
        self._video.codec_context.skip_frame = "NONKEY" if on else "DEFAULT"
        self._keyframes_only = on
        if self.cfg.keyframes_only is None:
            log.info(
                "camera %s: keyframes-only decoding %s (fps %.3g, keyframe rate %s/s)",
                self.cfg.camera, "on" if on else "off", self.cfg.fps,
                f"{self._keyrate.rate():.3g}" if self._keyrate.rate() else "unknown",
            )
