"""Camera sources against small clips made on the spot with PyAV (no network beyond 127.0.0.1)."""

from __future__ import annotations

import http.server
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from crowdwatch.fit import Fit
from crowdwatch.video import BestEffortPts
from streamer.sources import (
    Frame,
    RawFrame,
    Source,
    SourceConfig,
    SourceError,
    SourceStats,
    register_scheme,
    unregister_scheme,
)
from streamer.sources.backoff import Backoff
from streamer.sources.sampling import FpsSampler
from streamer.sources.testclip import Clip, pattern, write_clip
from streamer.sources.timestamps import StreamTime
from streamer.sources.watchdog import Stalled, StallWatchdog

# ---- helpers ---------------------------------------------------------------------------


class FakeClock:
    """time-like clock whose sleep() advances time instantly: pacing and backoff without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def cfg(url: str | Path, **kw) -> SourceConfig:
    kw.setdefault("fps", 1000.0)
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return SourceConfig(camera="cam", url=str(url), **kw)


def take(source: Source, n: int | None = None) -> list[Frame]:
    """Up to n frames (all, for a finite source), then close."""
    out: list[Frame] = []
    for frame in source.frames():
        out.append(frame)
        if n is not None and len(out) >= n:
            break
    source.close()
    return out


def key_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return [float(p.pts * p.time_base) for p in container.demux(video) if p.size and p.is_keyframe]


class Consumer:
    """Runs source.frames() on a thread, so that a test can wait on it with timeouts."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source.frames():
                self.frames.put(frame)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def next_frame(self, timeout_s: float, what: str) -> Frame:
        try:
            return self.frames.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout_s} s ({what}); stats: {self.source.stats}") from None

    def drain(self) -> list[Frame]:
        out = []
        while True:
            try:
                out.append(self.frames.get_nowait())
            except queue.Empty:
                return out

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; stats: {self.source.stats}")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.source.close()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "frames() did not end after close()"
        assert self.error is None, f"frames() raised {self.error!r}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    d = tmp_path_factory.mktemp("clips")
    return {
        # 100 frames, keyframe every second, moov first so that it streams over http
        "h264": write_clip(d / "h264.mp4", fps=25, seconds=4, gop=25, container_options={"movflags": "faststart"}),
        "bframes": write_clip(d / "bframes.mp4", fps=10, seconds=3, gop=10, bframes=True),
        "mpeg4": write_clip(d / "mpeg4.ts", codec="mpeg4", fps=10, seconds=3, gop=10),
    }


# ---- fps sampling ----------------------------------------------------------------------


@pytest.mark.parametrize("fps, expected", [(25, 100), (5, 20), (7, 28), (1, 4)])
def test_sampling_emits_at_most_fps_per_second_of_stream_time(clips, fps, expected):
    stats = SourceStats()
    frames = take(Source(cfg(clips["h264"].path, fps=fps, keyframes_only=False), stats))
    times = [f.source_pts for f in frames]
    assert len(frames) == expected
    assert stats.frames_decoded == 100
    assert stats.frames_emitted == expected
    assert stats.dropped["sampling"] == 100 - expected
    # Never two frames in one 1/fps slot, and no one-second window holds more than fps.
    assert all(b - a > 1 / fps - 0.041 for a, b in zip(times, times[1:]))
    for second in range(4):
        assert sum(second <= t < second + 1 for t in times) <= fps
    assert [f.seq for f in frames] == list(range(expected))


def test_sampler_grid_is_exact_and_handles_jitter_and_jumps():
    sampler = FpsSampler(10)
    assert sum(sampler.keep(i / 10) for i in range(100)) == 100  # on the grid: every frame
    sampler.reset()
    rng = random.Random(1)
    kept = [t for t in (i / 30 + rng.uniform(-0.003, 0.003) for i in range(300)) if sampler.keep(t)]
    assert len(kept) == 100  # 30 fps with jitter -> exactly 10 per second
    assert sampler.keep(500.0)  # a jump forward is a new timeline
    assert sampler.keep(1.0)  # and so is a jump back


def test_stream_time_fills_missing_timestamps_from_the_wall_clock():
    clock = FakeClock()
    st = StreamTime(clock.monotonic)
    clock.sleep(0.05)
    assert st(None) == pytest.approx(0.05)  # before any timestamp: time since connect
    assert st(2.0) == 2.0
    clock.sleep(0.3)
    assert st(None) == pytest.approx(2.3)  # after one: extrapolated


def test_best_effort_pts_takes_the_dts_when_the_pts_are_in_decode_order():
    # vtest.avi: AVI has no reordering, so frames carry decode-order pts
    avi = [(1, 2), (4, 3), (3, 4), (5, 5), (2, 6), (8, 7), (7, 8), (9, 9), (6, 10)]
    guess = BestEffortPts()
    assert [guess(p, d) for p, d in avi][3:] == [5, 6, 7, 8, 9, 10]
    mp4 = [(0, -2), (1, -1), (2, 0), (3, 1), (4, 2)]  # proper pts: kept
    guess.reset()
    assert [guess(p, d) for p, d in mp4] == [0, 1, 2, 3, 4]
    guess.reset()
    assert [guess(p, None) for p in (0, 1)] == [0, 1] and guess(None, None) is None


def test_stream_time_falls_back_to_the_wall_clock_when_timestamps_stop_advancing():
    clock = FakeClock()
    st = StreamTime(clock.monotonic)
    times = []
    for _ in range(50):  # 5 s of frames at 10 fps, all stamped 7.0 (a broken RTP clock)
        clock.sleep(0.1)
        times.append(st(7.0))
    assert st.distrusted
    stuck = [t for t in times if t == 7.0]
    assert 20 <= len(stuck) <= 22  # about StreamTime.STUCK_S worth, then wall time
    assert np.diff(times[len(stuck) :]) == pytest.approx(0.1)
    sampler = FpsSampler(2)
    assert sum(sampler.keep(t) for t in times) == 1 + math.floor((times[-1] - 7.0) * 2)


# ---- keyframes only --------------------------------------------------------------------


def test_keyframes_only_yields_only_keyframes(clips):
    clip = clips["h264"]
    stats = SourceStats()
    frames = take(Source(cfg(clip.path, fps=25, keyframes_only=True), stats))
    keys = key_times(clip.path)
    assert keys == [0.0, 1.0, 2.0, 3.0]
    assert [f.source_pts for f in frames] == keys
    assert stats.frames_decoded == len(keys)  # the decoder skipped the rest
    assert stats.dropped["nonkey"] == clip.frames - len(keys)


def test_keyframes_only_with_b_frames_and_mpeg4(clips):
    for name in ("bframes", "mpeg4"):
        clip = clips[name]
        frames = take(Source(cfg(clip.path, fps=25, keyframes_only=True)))
        assert [f.source_pts for f in frames] == pytest.approx(key_times(clip.path)), name


def test_auto_keyframes_only_turns_on_when_fps_is_within_the_keyframe_rate(clips):
    clip = clips["h264"]  # one keyframe per second
    keys = key_times(clip.path)
    on = SourceStats()
    frames = take(Source(cfg(clip.path, fps=1), on))  # keyframes_only=None: auto
    assert [f.source_pts for f in frames] == keys
    assert on.dropped["nonkey"] > 0  # switched on after measuring two keyframe intervals
    assert on.frames_decoded < clip.frames
    off = SourceStats()
    take(Source(cfg(clip.path, fps=2), off))  # 2 fps needs more than the keyframes
    assert off.dropped["nonkey"] == 0
    assert off.frames_decoded == clip.frames


# ---- resizing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src, box, content, out",
    [
        ((320, 240), (None, None), (320, 240), (320, 256)),  # no box: only padded
        ((320, 240), (200, 200), (192, 144), (192, 160)),  # box rounded down to 192x192 first
        ((320, 240), (160, None), (160, 120), (160, 128)),
        ((320, 240), (None, 96), (128, 96), (128, 96)),
        ((320, 240), (640, 480), (640, 480), (640, 480)),  # enlarged to fill the box
        ((1920, 1080), (640, 640), (640, 360), (640, 384)),
        ((480, 360), (1024, 768), (1024, 768), (1024, 768)),
        ((1000, 10), (512, 512), (512, 5), (512, 32)),
    ],
)
def test_fit_keeps_aspect_and_pads_to_multiples_of_32_within_the_box(src, box, content, out):
    fit = Fit.plan(*src, *box)
    assert (fit.content_w, fit.content_h) == content
    assert (fit.out_w, fit.out_h) == out
    assert fit.out_w % 32 == 0 and fit.out_h % 32 == 0
    for limit, side in zip(box, out):
        assert limit is None or side <= limit
    assert abs(fit.content_w - src[0] * fit.scale) <= 1 and abs(fit.content_h - src[1] * fit.scale) <= 1
    image = np.full((src[1], src[0], 3), 200, np.uint8)
    result = fit.apply(image)
    assert result.shape == (out[1], out[0], 3) and result.flags.c_contiguous
    assert (result[: content[1], : content[0]] == 200).all()  # content top-left, unchanged colour
    assert (result[content[1] :] == 0).all() and (result[:, content[0] :] == 0).all()  # black padding


def test_source_output_is_model_ready_and_matches_the_decoded_picture(clips):
    clip = clips["h264"]
    frames = take(Source(cfg(clip.path, fps=25, width=200, height=200)), 5)
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (160, 192, 3)
        assert frame.image.flags.c_contiguous
        assert frame.fit is not None and frame.fit.scale == pytest.approx(0.6)
        assert frame.capture_ns > 0 and frame.camera == "cam"
    # RGB in the right order, at the right scale: compare with the pattern the clip was made from.
    expected = cv2.resize(pattern(clip.width, clip.height, 4), (192, 144), interpolation=cv2.INTER_AREA)
    got = frames[4].image[:144].astype(int)
    assert np.abs(got - expected).mean() < 12  # lossy codec; a channel swap would be ~100
    assert (frames[4].image[144:] == 0).all()


# ---- looping and pacing ----------------------------------------------------------------


def test_loop_restarts_the_file_with_continuous_stream_time(clips):
    clip = clips["h264"]
    stats = SourceStats()
    frames = take(Source(cfg(clip.path, fps=25, loop=True), stats), 250)
    assert len(frames) == 250
    pts = [f.source_pts for f in frames]
    assert pts[99] == pytest.approx(3.96) and pts[100] == 0.0 and pts[200] == 0.0
    assert [f.seq for f in frames] == list(range(250))
    assert stats.dropped["sampling"] == 0  # no seam in stream time: nothing over budget
    assert stats.reconnects == 0 and sum(stats.failures.values()) == 0


def test_loop_with_sampling_across_the_seam(clips):
    frames = take(Source(cfg(clips["h264"].path, fps=2, loop=True, keyframes_only=False)), 24)
    # 2 per second of stream time, evenly, through three loops of a 4 s clip
    assert [f.source_pts for f in frames[:10]] == pytest.approx([0, 0.52, 1, 1.52, 2, 2.52, 3, 3.52, 0, 0.52], abs=0.05)


def test_realtime_paces_at_the_file_rate_with_a_fake_clock(clips):
    clock = FakeClock()
    frames = take(Source(cfg(clips["h264"].path, fps=5, realtime=True), clock=clock))
    assert len(frames) == 20
    assert clock.slept == pytest.approx(3.96, abs=0.01)  # the clip's length, paced frame by frame
    captured = [f.capture_ns / 1e9 - frames[0].capture_ns / 1e9 for f in frames]
    assert captured == pytest.approx([f.source_pts for f in frames], abs=0.01)


def test_realtime_paces_on_the_real_clock(clips):
    start = time.monotonic()
    frames = take(Source(cfg(clips["h264"].path, fps=10, realtime=True)), 6)
    elapsed = time.monotonic() - start
    assert frames[-1].source_pts == pytest.approx(0.52)  # 0, 0.12, 0.2, 0.32, 0.4, 0.52
    assert 0.45 < elapsed < 2.5  # loosely: the machine is shared
    fast = time.monotonic()
    take(Source(cfg(clips["h264"].path, fps=10)), 6)
    assert time.monotonic() - fast < elapsed


def test_close_from_another_thread_ends_frames_promptly(clips):
    consumer = Consumer(Source(cfg(clips["h264"].path, fps=5, realtime=True, loop=True)))
    consumer.frames.get(timeout=5)
    start = time.monotonic()
    consumer.stop(timeout_s=2)
    assert time.monotonic() - start < 1.0
    assert consumer.source.stats.up is False


# ---- bad urls and configs --------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("foo://camera/1", "unknown url scheme 'foo'"),
        ("rtsp:///stream", "has no host"),
        ("http://", "has no host"),
        ("rtsp://cam:99999/x", "bad port"),
        ("/nonexistent/clip.mp4", "video file not found"),
        ("file:///nonexistent/clip.mp4", "video file not found"),
        ("file://server/share/clip.mp4", "names host 'server'"),
        ("rtsp://admin:hunter2@/stream", "has no host"),
    ],
)
def test_bad_urls_raise_source_error_up_front(url, message):
    with pytest.raises(SourceError, match=message) as err:
        Source(cfg(url))
    assert "hunter2" not in str(err.value)  # passwords never reach messages


def test_a_directory_is_not_a_video_file(tmp_path):
    with pytest.raises(SourceError, match="not a regular file"):
        Source(cfg(tmp_path))


@pytest.mark.parametrize(
    "field, value",
    [("fps", 0), ("fps", float("nan")), ("width", 16), ("height", 100.5), ("stall_timeout_s", -1), ("backoff_max_s", 0.001)],
)
def test_bad_numbers_raise_source_error_naming_the_field(clips, field, value):
    with pytest.raises(SourceError, match=field):
        Source(cfg(clips["h264"].path, **{field: value}))


def test_file_url_and_plain_path_are_the_same_source(clips):
    path = clips["mpeg4"].path
    a = take(Source(cfg(path, fps=5)))
    b = take(Source(cfg(f"file://{path}", fps=5)))
    assert len(a) == len(b) == 15
    assert [f.source_pts for f in a] == [f.source_pts for f in b]


# ---- corrupt and truncated files -------------------------------------------------------


def test_corrupt_packets_are_counted_and_skipped(clips, tmp_path):
    data = bytearray(clips["h264"].path.read_bytes())
    rng = np.random.default_rng(0)
    for where in (0.3, 0.5, 0.7):  # overwrite three stretches of frame data
        i = int(len(data) * where)
        data[i : i + 20_000] = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    stats = SourceStats()
    frames = take(Source(cfg(bad, fps=25), stats))
    assert stats.dropped["decode_error"] > 0
    assert 50 < len(frames) < 100
    assert stats.failures["read"] == 0  # a bad packet is not a lost connection


def test_truncated_stream_plays_up_to_the_cut_and_ends(clips, tmp_path):
    data = clips["mpeg4"].path.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    stats = SourceStats()
    frames = take(Source(cfg(cut, fps=25), stats))
    assert 5 < len(frames) < clips["mpeg4"].frames
    assert stats.up is False


def test_unplayable_file_is_retried_with_backoff_until_closed(clips, tmp_path):
    data = clips["bframes"].path.read_bytes()  # moov at the end: a cut file has no index
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    stats = SourceStats()
    consumer = Consumer(Source(cfg(cut), stats))
    consumer.wait_for(lambda: stats.failures["open"] >= 3, 5, "three failed opens")
    consumer.stop()
    assert consumer.frames.empty()
    assert stats.up is False and stats.reconnects == 0
    assert "InvalidDataError" in (stats.last_error or "")


# ---- http ------------------------------------------------------------------------------


class _Server:
    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[Callable[[type[http.server.BaseHTTPRequestHandler]], _Server]]:
    servers: list[_Server] = []

    def start(handler: type[http.server.BaseHTTPRequestHandler]) -> _Server:
        servers.append(_Server(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_http_mp4_is_read_and_its_end_means_reconnect(clips, http_server):
    root = clips["h264"].path.parent

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http_server(Files)
    stats = SourceStats()
    consumer = Consumer(Source(cfg(server.url("/h264.mp4"), fps=25), stats))
    # More frames than the clip holds: http counts as live, so the end is a lost stream.
    consumer.wait_for(lambda: consumer.frames.qsize() >= 130, 15, "130 frames over http")
    consumer.stop()
    assert stats.reconnects >= 1 and stats.failures["eof"] >= 1
    pts = [consumer.frames.get().source_pts for _ in range(130)]
    assert pts[:3] == [0.0, 0.04, 0.08] and pts[100] == 0.0


class _Multipart(http.server.BaseHTTPRequestHandler):
    """A quiet handler that answers GET with the headers of an MJPEG stream."""

    def log_message(self, *args):
        pass

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()


def _mjpeg_handler(parts: int, interval_s: float, good: int | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    """MJPEG over http, `parts` parts `interval_s` apart; after `good` parts, noise that never decodes."""

    class Mjpeg(_Multipart):
        def do_GET(self):
            self.start_stream()
            rng = np.random.default_rng(0)
            try:
                for i in range(parts):
                    if good is not None and i >= good:  # a JPEG start marker, then noise
                        jpg = b"\xff\xd8" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
                    else:
                        jpg = cv2.imencode(".jpg", pattern(160, 120, i))[1].tobytes()
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    self.wfile.write(head + jpg + b"\r\n")
                    self.wfile.flush()
                    time.sleep(interval_s)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Mjpeg


def test_mjpeg_over_http_is_sampled_by_arrival_time(http_server):
    server = http_server(_mjpeg_handler(parts=400, interval_s=0.02))  # ~50 frames/s
    stats = SourceStats()
    consumer = Consumer(Source(cfg(server.url("/video.mjpg"), fps=5, width=96), stats))
    consumer.wait_for(lambda: consumer.frames.qsize() >= 6, 10, "6 mjpeg frames")
    consumer.stop()
    frames = [consumer.frames.get() for _ in range(consumer.frames.qsize())]
    assert all(f.source_pts is None for f in frames)  # mpjpeg has no timestamps of its own
    assert frames[0].image.shape == (96, 96, 3)  # 160x120 -> 96x72, padded to 96x96
    gaps = np.diff([f.capture_ns / 1e9 for f in frames])
    # 5 fps of wall time (0.2 s apart), not 5 per 25 invented timestamps (0.1 s apart)
    assert np.median(gaps) > 0.15
    assert stats.dropped["sampling"] > stats.frames_emitted


def test_stall_watchdog_reconnects_when_packets_flow_but_nothing_decodes(http_server):
    # Each connection: 10 good frames, then parts that all fail to decode. The read never
    # blocks, so only the watchdog can notice; the reconnect brings good frames back.
    server = http_server(_mjpeg_handler(parts=10_000, interval_s=0.02, good=10))
    stats = SourceStats()
    consumer = Consumer(Source(cfg(server.url("/video.mjpg"), fps=100, stall_timeout_s=0.5), stats))
    consumer.wait_for(lambda: stats.reconnects >= 1, 15, "a reconnect after a stall")
    consumer.stop()
    assert stats.failures["stall"] >= 1
    assert stats.failures["read"] == stats.failures["eof"] == 0
    assert stats.dropped["decode_error"] > 10
    assert stats.frames_decoded > 10  # the first connection's good frames, then the new one's


def test_read_timeout_breaks_a_silent_connection(http_server):
    class Silent(_Multipart):
        def do_GET(self):
            self.start_stream()
            self.wfile.flush()
            time.sleep(3)  # then nothing: a server that hangs

    server = http_server(Silent)
    stats = SourceStats()
    start = time.monotonic()
    consumer = Consumer(Source(cfg(server.url("/hang"), open_timeout_s=0.5, read_timeout_s=0.5), stats))
    consumer.wait_for(lambda: stats.failures["open"] + stats.failures["read"] >= 1, 5, "a timeout")
    assert time.monotonic() - start < 2.5  # well before the server gives up on its own (3 s)
    consumer.stop()
    assert "ExitError" in (stats.last_error or "")  # PyAV's interrupt callback, not a server close



def test_stream_time_repairs_a_live_streams_timestamp_jumps():
    clock = FakeClock()
    st = StreamTime(clock.monotonic, live=True)
    times = []
    for raw in (0.0, 0.1, 0.2, 25.2, 25.3, 3.3, 3.4):  # +25 s jump, then a reset back
        clock.sleep(0.1)
        times.append(st(raw))
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert st.discontinuities == 2 and not st.distrusted
    file_time = StreamTime(clock.monotonic)  # a file's gap is its own
    assert [file_time(t) for t in (0.0, 0.1, 25.1)] == [0.0, 0.1, 25.1]


class _FakeLiveStream:
    """What AvStream.open() gives for an rtsp:// camera, scripted: frame times in seconds."""

    times: tuple[float, ...] = ()
    clock: FakeClock | None = None  # frames arrive 0.5 s apart on it (a live camera's pace)

    def __init__(self, target, cfg, stats, watchdog, stop) -> None:
        pass

    def open(self) -> _FakeLiveStream:
        return self

    def __iter__(self) -> Iterator[RawFrame]:
        for i, t in enumerate(self.times):
            if i and self.clock is not None:
                self.clock.now += 0.5  # arrival, not a sleep of the source
            yield RawFrame(pattern(64, 32, i), time=t, pts=t)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("realtime", [True, False])
def test_a_live_source_is_never_paced_and_delivers_across_a_timestamp_jump(monkeypatch, clips, realtime):
    import streamer.sources.source as source_module

    monkeypatch.setattr(source_module, "AvStream", _FakeLiveStream)
    clock = FakeClock()
    monkeypatch.setattr(_FakeLiveStream, "times", (0.0, 0.5, 1.0, 26.0, 26.5))  # a 25 s jump
    monkeypatch.setattr(_FakeLiveStream, "clock", clock)
    source = Source(cfg("rtsp://cam.example/stream", fps=2, realtime=realtime), clock=clock)
    assert source.live and not source.paced
    frames = take(source, 5)
    assert [f.source_pts for f in frames] == [0.0, 0.5, 1.0, 26.0, 26.5]  # the jumped frame comes too
    assert clock.slept == 0.0  # nothing slept through the jump (or anything else)
    # a file (or plugin) standing in for a camera is still paced
    assert Source(cfg(clips["h264"].path, realtime=True)).paced


# ---- plugin schemes and reconnect ------------------------------------------------------


class _PatternStream:
    """A plugin stream: n frames of the test pattern; optionally fails after `fail_after`."""

    def __init__(self, n: int, fail_after: int | None = None) -> None:
        self.n, self.fail_after, self.closed = n, fail_after, False

    def __iter__(self) -> Iterator[RawFrame]:
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("simulated network failure")
            yield RawFrame(pattern(100, 50, i), time=i / 10, pts=i / 10, meta={"people": i})

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def scheme() -> Iterator[str]:
    yield "testpattern"
    unregister_scheme("testpattern")


def test_registered_scheme_frames_are_sampled_fitted_and_carry_meta(scheme):
    streams: list[_PatternStream] = []

    def factory(config: SourceConfig) -> _PatternStream:
        streams.append(_PatternStream(30))
        return streams[-1]

    register_scheme(scheme, factory, finite=True)
    frames = take(Source(cfg(f"{scheme}://demo", fps=5, width=64)))
    assert len(frames) == 15  # 3 s at 10 fps, sampled to 5
    assert frames[0].image.shape == (32, 64, 3)
    assert [f.meta["people"] for f in frames[:3]] == [0, 2, 4]
    assert streams[0].closed


def test_plugin_failures_reconnect_with_backoff_and_are_counted(scheme):
    opened: list[_PatternStream] = []

    def factory(config: SourceConfig) -> _PatternStream:
        if len(opened) == 1:  # the second attempt cannot connect at all
            opened.append(_PatternStream(0))
            raise ConnectionRefusedError("camera offline")
        opened.append(_PatternStream(10, fail_after=5 if not opened else None))
        return opened[-1]

    clock = FakeClock()
    stats = SourceStats()
    register_scheme(scheme, factory, finite=True)
    frames = take(Source(cfg(f"{scheme}://flaky", fps=100, backoff_initial_s=1, backoff_max_s=8), stats, clock))
    assert [f.meta["people"] for f in frames] == [0, 1, 2, 3, 4] + list(range(10))
    assert [f.seq for f in frames] == list(range(15))
    assert stats.reconnects == 1
    assert stats.failures["read"] == 1 and stats.failures["open"] == 1
    assert "camera offline" in (stats.last_error or "")
    assert 0 <= clock.slept <= 1 + 2  # two delays, full jitter: [0, 1] then [0, 2]


def test_plugin_source_error_is_a_misconfiguration_and_raises(scheme):
    def factory(config: SourceConfig) -> _PatternStream:
        raise SourceError("no such scene 'nowhere'")

    register_scheme(scheme, factory)
    with pytest.raises(SourceError, match="nowhere"):
        take(Source(cfg(f"{scheme}://nowhere")))
    unregister_scheme(scheme)
    with pytest.raises(SourceError, match="unknown url scheme"):
        Source(cfg(f"{scheme}://nowhere"))
    with pytest.raises(ValueError, match="built in"):
        register_scheme("rtsp", factory)


# ---- backoff and watchdog units --------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling():
    backoff = Backoff(0.5, 4.0, random.Random(3))
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert 0 <= delay <= ceilings[-1]
    assert ceilings == [0.5, 1, 2, 4, 4, 4, 4, 4]
    delays = [Backoff(1, 1, random.Random(i)).next_delay() for i in range(200)]
    assert min(delays) < 0.1 and max(delays) > 0.9  # the whole range, not a fixed delay
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_watchdog_fires_only_after_the_timeout_without_progress():
    clock = FakeClock()
    dog = StallWatchdog(2.0, clock.monotonic)
    clock.sleep(1.5)
    dog.check()
    dog.progress()
    clock.sleep(1.9)
    dog.check()
    clock.sleep(0.2)
    with pytest.raises(Stalled, match="no frame for 2.1 s"):
        dog.check()


# ---- a real camera recording -----------------------------------------------------------


@pytest.mark.shared_data
def test_pets2009_recording_loops_as_a_camera(shared_data):
    path = shared_data / "pets2009_s2l1" / "vtest.avi"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    stats = SourceStats()
    frames = take(Source(cfg(path, fps=2, width=640, height=480, loop=True), stats), 170)  # 79.5 s per loop
    assert all(f.image.shape == (480, 640, 3) for f in frames)  # 480x360 enlarged to fill the box
    assert frames[0].fit is not None and frames[0].fit.scale == pytest.approx(4 / 3)
    pts = np.array([f.source_pts for f in frames])
    seam = int(np.argmin(np.diff(pts))) + 1
    assert 155 <= seam <= 161  # 2 fps over 79.5 s of H.264 with B-frames
    assert np.diff(pts[:seam]) == pytest.approx(0.5, abs=0.06)
    assert stats.failures == dict.fromkeys(stats.failures, 0) and stats.dropped["decode_error"] == 0
