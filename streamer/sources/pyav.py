"""One PyAV connection to a camera, file or http stream: open, decode (keyframes
only when that is enough), loop files. Reading and timestamps are
``crowdwatch.video.VideoReader``'s, shared with the buffer's video import.

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

from crowdwatch.video import NoVideoStream, VideoReader

from .config import SourceConfig
from .frame import RawFrame
from .keyframes import KeyframeRate, want_keyframes_only
from .stats import DECODE_ERROR, NONKEY, SourceStats
from .urls import Target
from .watchdog import StallWatchdog

log = logging.getLogger(__name__)


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
        self._video: VideoReader | None = None
        self._keyrate = KeyframeRate()
        self._keyframes_only = False

    @property
    def keyframes_only(self) -> bool:
        return self._keyframes_only

    def open(self) -> AvStream:
        # Decoder threads stay at PyAV's default, slice threading: frame threading would add
        # one frame of latency per thread to a live stream, and with a process per camera,
        # one thread each is the most frames per core (docs/PERFORMANCE.md, "Camera decode").
        self._video = VideoReader(self.target.open_url, options=open_options(self.target, self.cfg),
                                  timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s), name=self.target.redacted)  # fmt: skip
        if self.cfg.keyframes_only:
            self._set_keyframes_only(True)
        return self

    def close(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.close()

    def __iter__(self) -> Iterator[RawFrame]:
        video = self._video
        if video is None:
            raise NoVideoStream("AvStream is not open")
        offset = 0.0  # added to pts so that time runs on across loops
        last_t: float | None = None
        while True:
            decoded = 0
            for frame, pts in video.frames(on_packet=self._observe_packet, on_bad=lambda: self.stats.drop(DECODE_ERROR),
                                           stop=self._stop, check=self.watchdog.check):  # fmt: skip
                if not video.timed:
                    pts = None  # invented timestamps: the Source uses arrival time
                t = None
                if pts is not None:
                    if decoded == 0 and last_t is not None:
                        offset = last_t + video.period_s - pts  # the loop's first frame follows the last one
                    t = pts + offset
                    last_t = t
                decoded += 1
                yield RawFrame(frame, t, pts)
            if not self.cfg.loop or self._stop.is_set():
                return
            if decoded == 0:
                # Seeking back would only spin: nothing in this stream decodes.
                raise EmptyStream(f"end of stream without a decodable frame in {self.target.redacted}")
            video.rewind()

    def _observe_packet(self, packet: av.Packet) -> None:
        key = packet.is_keyframe
        ts = packet.pts if packet.pts is not None else packet.dts
        assert self._video is not None
        if self._video.timed and ts is not None:
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
        self._video.stream.codec_context.skip_frame = "NONKEY" if on else "DEFAULT"
        self._keyframes_only = on
        if self.cfg.keyframes_only is None:
            log.info(
                "camera %s: keyframes-only decoding %s (fps %.3g, keyframe rate %s/s)",
                self.cfg.camera, "on" if on else "off", self.cfg.fps,
                f"{self._keyrate.rate():.3g}" if self._keyrate.rate() else "unknown",
            )
