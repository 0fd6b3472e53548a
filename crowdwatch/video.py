"""Reading video with PyAV: the first video track, decoded, each frame with a repaired timestamp.

One reader for the camera sources (``streamer/sources/pyav.py``: files, rtsp,
http) and for the adapter buffer's import of a recorded video
(``adapt/store/buffer.py``, ``crowdwatch adapt --frames clip.mp4``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import av

log = logging.getLogger(__name__)

# Consecutive demuxer errors tolerated in a corrupt stretch before giving up on the
# stream; the demuxer usually resyncs after one or two.
MAX_DEMUX_ERRORS = 8
# Frame period assumed when the stream declares no rate.
DEFAULT_PERIOD_S = 0.04


class NoVideoStream(Exception):
    pass


class BestEffortPts:
    """FFmpeg's guess_correct_pts: per frame, the pts, unless the pts have been less
    monotonic than the dts so far; then the dts.

    Containers without B-frame reordering (AVI) attach decode-order timestamps to
    frames that come out in presentation order: their pts jump back and forth while
    the dts advance evenly. PyAV does not expose the decoder's best_effort_timestamp.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._faulty_pts = self._faulty_dts = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self._faulty_dts += self._last_dts is not None and dts <= self._last_dts
            self._last_dts = dts
        if pts is not None:
            self._faulty_pts += self._last_pts is not None and pts <= self._last_pts
            self._last_pts = pts
        if pts is not None and (self._faulty_pts <= self._faulty_dts or dts is None):
            return pts
        return dts


class VideoReader:
    """One open video: a file or a stream (``url`` as av.open takes it).

    Raises what av.open raises (av.FFmpegError, OSError), or NoVideoStream.
    """

    def __init__(self, url: str | Path, *, options: Mapping[str, str] | None = None,
                 timeout: float | tuple[float, float] | None = None, name: str | None = None) -> None:  # fmt: skip
        self.url, self.name = str(url), name or str(url)  # name: what errors say (a URL without its password)
        self.container = av.open(self.url, mode="r", container_options=dict(options or {}), timeout=timeout)
        if not self.container.streams.video:
            self.container.close()
            raise NoVideoStream(f"no video track in {self.name}")
        self.stream = self.container.streams.video[0]
        # Formats without timestamps (MJPEG over http, raw elementary streams) get pts
        # invented by libavformat at the declared or an assumed rate: fine to sample a
        # file by, not to pace a live stream by.
        self.timed = not (self.container.format.flags & av.format.Flags.no_timestamps.value)
        self.rate = self.stream.average_rate or self.stream.guessed_rate  # frames per second, None when undeclared
        self.period_s = 1.0 / float(self.rate) if self.rate else DEFAULT_PERIOD_S
        self._guess = BestEffortPts()

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(
        self,
        *,
        on_packet: Callable[[av.Packet], None] | None = None,
        on_bad: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        check: Callable[[], None] | None = None,
    ) -> Iterator[tuple[av.VideoFrame, float | None]]:
        """(frame, time in seconds) from here to the end; the time is the best-effort pts (None: the frame has none).

        Only the video track is demuxed (audio never reaches Python). A corrupt
        packet or frame is skipped and reported to ``on_bad``; more than
        MAX_DEMUX_ERRORS demuxer errors in a row raise. ``on_packet`` sees each
        packet before it is decoded, ``check`` runs before each read (a
        watchdog may raise there), ``stop`` ends the iteration.
        """
        container, video = self.container, self.stream
        packets = container.demux(video)
        demux_errors = 0
        while stop is None or not stop.is_set():
            if check is not None:
                check()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.InvalidDataError:
                demux_errors += 1
                if on_bad is not None:
                    on_bad()
                if demux_errors > MAX_DEMUX_ERRORS:
                    raise
                packets = container.demux(video)  # carries on from the current read position
                continue
            demux_errors = 0
            if packet.size and on_packet is not None:  # size 0: the flush packet at end of stream, which drains the decoder
                on_packet(packet)
            try:
                frames = packet.decode()
            except av.FFmpegError:
                if on_bad is not None:
                    on_bad()
                continue
            for frame in frames:
                if frame.is_corrupt:
                    if on_bad is not None:
                        on_bad()
                    continue
                ts = self._guess(frame.pts, frame.dts)
                yield frame, (float(ts * frame.time_base) if ts is not None and frame.time_base else None)

    def seek(self, t_s: float) -> None:
        """To the keyframe at or before ``t_s`` (a time that ``frames`` gave); the decoder is flushed."""
        self.container.seek(int(t_s / self.stream.time_base), stream=self.stream, backward=True)
        self._guess.reset()  # the jump is ours, not a broken timestamp

    def rewind(self) -> None:
        """Back to the start (also flushes the decoder out of its end-of-stream state)."""
        self.container.seek(0)
        self._guess.reset()

    def span_s(self) -> float | None:
        """Length in seconds from the metadata, else from a demux-only pass over packet times (a second handle)."""
        stream, container = self.stream, self.container
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / av.time_base
        if stream.frames and stream.average_rate:
            return float(stream.frames / stream.average_rate)
        lo = hi = None
        packets = 0
        try:
            with av.open(self.url) as probe:  # so that this handle stays where it is
                for packet in probe.demux(probe.streams.video[0]):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    packets += 1
                    t = packet.pts if packet.pts is not None else packet.dts
                    if t is None or packet.time_base is None:
                        continue
                    s = float(t * packet.time_base)
                    lo = s if lo is None else min(lo, s)
                    hi = s if hi is None else max(hi, s)
        except (av.FFmpegError, OSError) as e:
            log.warning("%s: cannot measure its length (%s)", self.name, e)
            return None
        if lo is not None and hi is not None and hi > lo:
            return hi - lo
        # No timestamps (raw elementary streams): frames are timed by counting, at the stream's rate.
        return packets / float(self.rate) if packets and self.rate else None
