"""The adapter buffer: unlabeled frames of one camera, kept on disk for adaptation.

Layout: ``<root>/<camera>/<capture_ns>.jpg`` where ``capture_ns`` is zero-padded
to 20 digits, so that lexical order is time order. The frame tap writes here
while ``crowdwatch adapt`` reads; ``fill_from_video`` / ``fill_from_folder``
import recorded material. See docs/BUFFER.md for the policy (limits, sampling,
retention) and why the defaults are what they are.

A frame is stored when it passes, in order: a shape/dtype check (``bad_frame``),
retention (``expired``), the capture-time interval (``interval``), the
near-duplicate test against the last stored frame (``duplicate``) and the
free-space check (``disk_full``); then it is written atomically. Every frame not
stored is counted under its reason, and nothing here raises to the frame tap;
``offer`` returns the reason, and the inference stage exports the
``WRITE_FAILURES`` as ``crowd_buffer_write_failures_total{camera, reason}``.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from adapt.data.images import IMAGE_SUFFIXES, load_image, natural_key
from adapt.store.atomic import atomic_write
from adapt.store.names import validate_camera_name
from crowdwatch.config.buffer import BufferSettings
from crowdwatch.video import NoVideoStream, VideoReader

log = logging.getLogger(__name__)

SKIP_REASONS = ("interval", "duplicate", "disk_full", "bad_frame", "write_error", "expired")
# The skips where the disk, not the sampling policy, refused a frame: the infer stage exports them.
WRITE_FAILURES = ("disk_full", "write_error")
THUMB_W, THUMB_H = 64, 36
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
# A temp file younger than this may belong to another live writer (e.g. the tap
# in `crowdwatch run` while `crowdwatch adapt` opens the same buffer), so only
# older ones are treated as crash leftovers. A write takes milliseconds.
STALE_TMP_S = 60.0
# Seeking a video only pays when the gap to the next sample spans keyframes.
SEEK_MIN_GAP_S = 10.0
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

_FRAME_RE = re.compile(r"^(\d{20})\.jpg$")  # exactly what frame_name() writes
_TMP_RE = re.compile(r"^\..+\.tmp$")


@dataclass
class BufferStats:
    frames: int                      # frames on disk now
    bytes: int                       # their total size
    accepted: int                    # frames stored (cumulative, or this fill's)
    skipped: dict[str, int]          # frames not stored, by reason (all SKIP_REASONS present)
    disk_full: bool = False          # buffering is paused for lack of space


def thumbnail(image: np.ndarray) -> np.ndarray:
    """64x36 grayscale float32 thumbnail; area averaging washes out pixel noise."""
    small = cv2.resize(image, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a - b)))


def frame_problem(image: object) -> str | None:
    """Why ``image`` is not an RGB uint8 (H, W, 3) frame, or None."""
    if not isinstance(image, np.ndarray):
        return f"not an ndarray ({type(image).__name__})"
    if image.dtype != np.uint8:
        return f"dtype {image.dtype}, expected uint8"
    if image.ndim != 3 or image.shape[2] != 3:
        return f"shape {image.shape}, expected (H, W, 3)"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return f"empty frame {image.shape}"
    return None


def frame_name(capture_ns: int) -> str:
    return f"{capture_ns:020d}.jpg"


def capture_seconds(paths: list[Path]) -> np.ndarray | None:
    """Capture times in seconds of buffer frames, from their names; None if any name is not a buffer frame's."""
    stems = [Path(p).stem for p in paths]
    if not stems or not all(len(s) == 20 and s.isdigit() for s in stems):
        return None
    return np.array([int(s) for s in stems], np.float64) / NS_PER_S


class _Counters:
    """Accepted / skipped counts; one per buffer (cumulative) and one per fill call."""

    def __init__(self) -> None:
        self.accepted = 0
        self.skipped = {r: 0 for r in SKIP_REASONS}

    def add(self, reason: str | None) -> None:
        if reason is None:
            self.accepted += 1
        else:
            self.skipped[reason] += 1


@dataclass
class _Sampler:
    """Interval + near-duplicate state of one stream of frames (the live tap, or one import)."""

    interval_ns: int
    threshold: float
    last_ns: int | None = None
    last_thumb: np.ndarray | None = field(default=None, repr=False)

    def interval_ok(self, capture_ns: int) -> bool:
        # A backwards jump larger than the interval (camera clock reset) restarts the timeline.
        return self.last_ns is None or abs(capture_ns - self.last_ns) >= self.interval_ns

    def is_duplicate(self, thumb: np.ndarray) -> bool:
        return self.last_thumb is not None and thumb_distance(thumb, self.last_thumb) < self.threshold

    def accept(self, capture_ns: int, thumb: np.ndarray) -> None:
        self.last_ns, self.last_thumb = capture_ns, thumb


class FrameBuffer:
    """Bounded on-disk store of one camera's unlabeled frames.

    Thread safety: one writer (``offer`` from the frame tap; ``fill_*`` may run
    alongside it) and any number of readers (``frames``, ``stats``, other
    processes listing the directory). Files appear only by ``os.replace`` of a
    fsynced temp file, so a reader never sees a partial frame; a listed frame may
    vanish (eviction) before it is opened, which readers must tolerate.
    """

    def __init__(self, root: Path, camera: str, config: BufferSettings = BufferSettings(), clock: Callable[[], float] = time.time) -> None:
        self.camera = validate_camera_name(camera)  # before the name touches a path
        self.config = config
        self.dir = Path(root) / self.camera
        self._clock = clock
        # Lock order: _offer_lock -> _io_lock -> _lock. stats() takes only _lock,
        # which is never held across an fsync, so the metrics scrape never waits on the disk.
        self._offer_lock = threading.Lock()    # the live sampler
        self._io_lock = threading.Lock()       # writes, rescans, clear
        self._lock = threading.Lock()          # index, counters, failure flags
        self._index: list[tuple[int, int]] = []  # (capture_ns, size), oldest first
        self._bytes = 0
        self._counts = _Counters()
        self._disk_full = False
        self._write_failing = False
        self._tmp_seq = 0
        self._live = _Sampler(self._interval_ns(config.min_interval_s), config.dedup_threshold)
        try:
            self._ensure_dir()
            with self._lock:
                self._remove_stale_tmp(self._now_ns())
                self._rescan()
            self._resume_live_sampler()
        except OSError as e:  # e.g. a full or read-only disk at startup: the tap keeps running
            log.warning("buffer %s: cannot prepare %s: %s", self.camera, self.dir, e)

    # ---------------------------------------------------------------- public

    def offer(self, image: np.ndarray, capture_ns: int) -> str | None:
        """Store ``image`` (RGB uint8 (H, W, 3)) captured at ``capture_ns``; None if stored, else the skip reason."""
        with self._offer_lock:
            self._expire(self._now_ns())
            reason, thumb, ns = self._screen(image, capture_ns, self._live)
            if reason is None:
                reason = self._store(image, ns)
                if reason is None:
                    self._live.accept(ns, thumb)
            with self._lock:
                self._counts.add(reason)
            return reason

    def frames(self) -> list[Path]:
        """Stored frames, oldest first, as listed on disk now (so other processes see the same)."""
        return [self.dir / frame_name(ns) for ns, _ in self._scan_dir()]

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(len(self._index), self._bytes, self._counts.accepted, dict(self._counts.skipped), self._disk_full)

    def prune(self) -> int:
        """Re-read the directory, drop crash leftovers, apply retention and limits; frames removed."""
        now = self._now_ns()
        with self._io_lock, self._lock:
            try:
                self._remove_stale_tmp(now)
                self._rescan()
            except OSError as e:
                log.warning("buffer %s: cannot list %s: %s", self.camera, self.dir, e)
            return self._expire_locked(now) + self._evict_locked()

    def clear(self) -> None:
        """Delete every frame of this camera (and any temp file); counters are kept."""
        with self._offer_lock, self._io_lock, self._lock:
            try:
                names = [p for p in self.dir.iterdir() if _FRAME_RE.match(p.name) or _TMP_RE.match(p.name)]
            except FileNotFoundError:
                names = []
            for p in names:
                p.unlink(missing_ok=True)
            self._index.clear()
            self._bytes = 0
            self._live = _Sampler(self._live.interval_ns, self.config.dedup_threshold)
        log.info("buffer %s: cleared %d files", self.camera, len(names))

    def fill_from_video(self, path: Path, every_s: float | None = None, max_frames: int | None = None) -> BufferStats:
        """Import frames of a video, spread over its whole length, on its own timeline (pts).

        Candidates are at least ``interval`` apart in pts, where ``interval`` is
        ``every_s`` (default: ``min_interval_s``, or 0 when only ``max_frames``
        is given), widened to ``duration / min(max_frames, config.max_frames)``
        so that the frames cover the whole video instead of its start. A
        candidate that duplicates the last stored frame is skipped (and uses up
        its slot). Frames are dated so that the last one is "now": retention
        counts from the import. Returns this call's counts and the buffer's size.
        Raises ValueError if the file cannot be opened as a video.
        """
        path = Path(path)
        if every_s is not None and every_s < 0:
            raise ValueError(f"every_s must be >= 0, found {every_s}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, found {max_frames}")
        try:
            video = VideoReader(path)
        except NoVideoStream:
            raise ValueError(f"{path}: has no video stream") from None
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{path}: cannot open as a video: {e}") from e
        with video:
            video.stream.thread_type = "AUTO"
            span_s = video.span_s()
            cap = min(max_frames or self.config.max_frames, self.config.max_frames)
            interval_s = every_s if every_s is not None else (0.0 if max_frames is not None else self.config.min_interval_s)
            if span_s is not None:
                interval_s = max(interval_s, span_s / cap)
            anchor_ns = self._now_ns() - int((span_s or 0.0) * NS_PER_S)
            sampler = _Sampler(self._interval_ns(interval_s), self.config.dedup_threshold)
            calls = _Counters()
            log.info("buffer %s: importing %s (%.1f s) one candidate every %.2f s, at most %d frames",
                     self.camera, path, span_s or float("nan"), interval_s, cap)
            for rel_ns, image in _sample_video(video, sampler.interval_ns, calls, self._count):
                reason = self._import_one(image, anchor_ns + rel_ns, sampler, slot_used=True)
                calls.add(reason)
                if calls.accepted >= cap:
                    break
        return self._fill_result(calls)

    def fill_from_folder(self, path: Path) -> BufferStats:
        """Import every image file directly in ``path`` (natural name order), with dedup but no interval.

        Unreadable files count as ``bad_frame`` and never stop the import.
        Frames are dated 1 ms apart ending "now", keeping the folder's order.
        """
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"{path}: not a folder")
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                       key=natural_key)
        sampler = _Sampler(0, self.config.dedup_threshold)
        calls = _Counters()
        step_ns = 1_000_000
        anchor_ns = self._now_ns() - len(files) * step_ns
        for i, p in enumerate(files):
            try:
                image = load_image(p)
            except ValueError as e:
                log.warning("buffer %s: skipping %s", self.camera, e)
                reason: str | None = "bad_frame"
                self._count(reason)
            else:
                reason = self._import_one(image, anchor_ns + i * step_ns, sampler, slot_used=False)
            calls.add(reason)
        return self._fill_result(calls)

    # -------------------------------------------------------------- sampling

    def _screen(self, image: np.ndarray, capture_ns: int, sampler: _Sampler) -> tuple[str | None, np.ndarray | None, int]:
        """The skip reason before any disk work (or None), the thumbnail and the checked capture time."""
        problem = frame_problem(image)
        try:
            ns = int(capture_ns)
            if ns != capture_ns or not 0 <= ns < 10**20 or isinstance(capture_ns, bool):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            problem, ns = problem or f"capture_ns {capture_ns!r} is not a non-negative integer", 0
        if problem is not None:
            log.debug("buffer %s: bad frame: %s", self.camera, problem)
            return "bad_frame", None, ns
        if ns < self._now_ns() - self._retention_ns():
            return "expired", None, ns
        if not sampler.interval_ok(ns):
            return "interval", None, ns
        thumb = thumbnail(image)
        if sampler.is_duplicate(thumb):
            return "duplicate", None, ns
        return None, thumb, ns

    def _import_one(self, image: np.ndarray, capture_ns: int, sampler: _Sampler, slot_used: bool) -> str | None:
        reason, thumb, ns = self._screen(image, capture_ns, sampler)
        if reason is None:
            reason = self._store(image, ns)
            if reason is None:
                sampler.accept(ns, thumb)
        elif reason == "duplicate" and slot_used:
            sampler.last_ns = ns  # a duplicate candidate still uses its slot, so decoding can skip ahead
        self._count(reason)
        return reason

    def _resume_live_sampler(self) -> None:
        """After a restart, keep the interval and dedup rules relative to the newest stored frame."""
        with self._lock:
            newest = self._index[-1][0] if self._index else None
        if newest is None:
            return
        try:
            self._live.accept(newest, thumbnail(load_image(self.dir / frame_name(newest))))
        except ValueError:
            self._live.last_ns = newest

    # --------------------------------------------------------------- storage

    def _store(self, image: np.ndarray, capture_ns: int) -> str | None:
        """Encode and write one frame atomically, then enforce the limits; None or a skip reason."""
        with self._io_lock:
            try:
                self._ensure_dir()
                if not self._has_room():  # before encoding: a full disk costs a statvfs per frame, not a JPEG
                    return self._disk_full_now("free space below min_free_bytes")
            except OSError as e:
                return self._disk_full_now(str(e)) if e.errno in DISK_FULL_ERRNOS else self._write_failed(e)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
            if not ok:
                return "bad_frame"
            data = buf.tobytes()
            if len(data) > self.config.max_bytes:
                return self._write_failed(OSError(errno.EFBIG, f"one frame ({len(data)} bytes) exceeds max_bytes={self.config.max_bytes}"))
            ns = self._free_ns(capture_ns)
            try:
                self._write_atomic(frame_name(ns), data)
            except OSError as e:
                return self._disk_full_now(str(e)) if e.errno in DISK_FULL_ERRNOS else self._write_failed(e)
            with self._lock:
                if self._disk_full or self._write_failing:
                    log.warning("buffer %s: writing again", self.camera)
                self._disk_full = self._write_failing = False
                bisect.insort(self._index, (ns, len(data)))
                self._bytes += len(data)
                self._evict_locked()
        return None

    def _write_atomic(self, name: str, data: bytes) -> None:
        atomic_write(self.dir / name, data)  # owner-only temp file: frames show people

    def _has_room(self) -> bool:
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            return True  # cannot tell; the write itself will report ENOSPC
        return free >= self.config.min_free_bytes

    def _disk_full_now(self, why: str) -> str:
        with self._lock:
            first = not self._disk_full
            self._disk_full = True
        if first:  # logged once per episode; the counter carries the rest
            log.warning("buffer %s: disk full (%s); buffering paused until space returns", self.camera, why)
        return "disk_full"

    def _write_failed(self, e: OSError) -> str:
        with self._lock:
            first = not self._write_failing
            self._write_failing = True
        if first:  # once per episode, like disk_full
            log.error("buffer %s: cannot write frames to %s: %s", self.camera, self.dir, e)
        return "write_error"

    def _free_ns(self, capture_ns: int) -> int:
        """``capture_ns``, or the next free nanosecond, so that two frames never share a file."""
        ns = capture_ns
        with self._lock:
            while True:
                i = bisect.bisect_left(self._index, (ns, -1))
                if (i == len(self._index) or self._index[i][0] != ns) and not (self.dir / frame_name(ns)).exists():
                    return ns
                ns += 1

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------ limits/retention

    def _expire(self, now_ns: int) -> None:
        with self._lock:
            self._expire_locked(now_ns)

    def _expire_locked(self, now_ns: int) -> int:
        cutoff = now_ns - self._retention_ns()
        n = 0
        while self._index and self._index[0][0] < cutoff:
            self._drop_oldest_locked()
            n += 1
        if n:
            log.info("buffer %s: retention removed %d frames older than %g days", self.camera, n, self.config.retention_days)
        return n

    def _evict_locked(self) -> int:
        n = 0
        while self._index and (len(self._index) > self.config.max_frames or self._bytes > self.config.max_bytes):
            self._drop_oldest_locked()
            n += 1
        return n

    def _drop_oldest_locked(self) -> None:
        ns, size = self._index.pop(0)
        self._bytes -= size
        try:
            (self.dir / frame_name(ns)).unlink(missing_ok=True)
        except OSError as e:  # keep going: an undeletable file must not wedge the buffer
            log.warning("buffer %s: cannot delete %s: %s", self.camera, frame_name(ns), e)

    def _rescan(self) -> None:
        """Rebuild the index from disk (another process may have added or removed frames)."""
        self._index = self._scan_dir()
        self._bytes = sum(size for _, size in self._index)

    def _scan_dir(self) -> list[tuple[int, int]]:
        out = []
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        for e in entries:
            m = _FRAME_RE.match(e.name)
            if not m:
                continue
            try:
                out.append((int(m.group(1)), e.stat().st_size))
            except FileNotFoundError:  # evicted while listing
                continue
        out.sort()
        return out

    def _remove_stale_tmp(self, now_ns: int) -> None:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for e in entries:
            if not _TMP_RE.match(e.name):
                continue
            try:
                if now_ns / NS_PER_S - e.stat().st_mtime >= STALE_TMP_S:
                    os.unlink(e.path)
                    log.info("buffer %s: removed leftover temp file %s", self.camera, e.name)
            except FileNotFoundError:
                continue

    # ---------------------------------------------------------------- helpers

    def _count(self, reason: str | None) -> None:
        with self._lock:
            self._counts.add(reason)

    def _fill_result(self, calls: _Counters) -> BufferStats:
        with self._lock:
            return BufferStats(len(self._index), self._bytes, calls.accepted, dict(calls.skipped), self._disk_full)

    def _now_ns(self) -> int:
        return int(self._clock() * NS_PER_S)

    def _retention_ns(self) -> int:
        return int(self.config.retention_days * NS_PER_DAY)

    @staticmethod
    def _interval_ns(seconds: float) -> int:
        return int(round(seconds * NS_PER_S))


def _sample_video(video: VideoReader, interval_ns: int, calls: _Counters, count: Callable[[str], None]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (time since the first frame in ns, RGB frame), one candidate per ``interval_ns``.

    Times are the reader's repaired timestamps; a file without them (a raw
    elementary stream) is timed by counting frames at its rate. Only candidates
    are converted to RGB. When the next candidate is far ahead the demuxer
    seeks to the keyframe before it; if the seek does not land after the last
    candidate (keyframes further apart than the gap, a container that cannot
    seek) or the file is timed by counting, the rest is decoded sequentially.
    Corrupt packets and frames count as ``bad_frame`` and decoding goes on; a
    run of unreadable packets ends the import with the frames taken so far.
    """

    def bad() -> None:
        calls.add("bad_frame")
        count("bad_frame")

    period_ns = int(video.period_s * NS_PER_S)
    origin: float | None = None  # the first frame's time, seconds
    last: int | None = None
    counting = False
    target = 0
    seeking = interval_ns >= SEEK_MIN_GAP_S * NS_PER_S
    frames = video.frames(on_bad=bad)
    while True:
        try:
            frame, t_s = next(frames)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as e:
            log.warning("giving up on the video after a run of read errors (last: %s)", e)
            return
        if t_s is None and not counting:
            counting, seeking = True, False
            log.info("video without timestamps; timing by frame count at %.3f fps", NS_PER_S / period_ns)
        if counting:
            t = 0 if last is None else last + period_ns
        else:
            origin = t_s if origin is None else origin
            t = round((t_s - origin) * NS_PER_S)
        last = t
        if t < target:
            continue
        yield t, frame.to_ndarray(format="rgb24")
        target = t + interval_ns
        if seeking:
            frames, seeking = _seek_to(video, origin + target / NS_PER_S, origin + t / NS_PER_S, bad)


def _seek_to(video: VideoReader, target_s: float, last_s: float, bad: Callable[[], None]) -> tuple[Iterator, bool]:
    """Seek to the keyframe before ``target_s``; the new frame iterator, and whether seeking helped.

    If the seek went back to or before the last candidate, the iterator still
    yields from there (frames before the target are skipped by the caller), but
    seeking is given up for the rest of the file.
    """
    try:
        video.seek(target_s)
    except (av.FFmpegError, OSError, ValueError, TypeError) as e:
        log.debug("seek failed (%s); decoding sequentially", e)
        return video.frames(on_bad=bad), False
    frames = video.frames(on_bad=bad)
    try:
        first = next(frames)
    except StopIteration:
        return iter(()), False
    except (av.FFmpegError, OSError):
        return video.frames(on_bad=bad), False

    def chained() -> Iterator:
        yield first
        yield from frames

    return chained(), first[1] is not None and first[1] > last_s
