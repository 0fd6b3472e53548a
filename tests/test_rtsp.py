"""A Source against a real RTSP server (GstRtspServer) that is killed and restarted on the same port.

Needs the system python3 with gi and GStreamer's RTSP server (see tests/rtsp_server.py
for the Debian packages); skipped with the reason when they are missing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamer.sources import Source, SourceConfig, SourceStats
from streamer.sources.testclip import write_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from rtsp_server import RtspServer  # noqa: E402
from test_sources import Consumer  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generated_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Long enough that the server never reaches its end during a test (an end is a
    # reconnect of its own, which would blur what is counted).
    return write_clip(tmp_path_factory.mktemp("rtsp") / "clip.mp4", width=320, height=240, fps=10, seconds=40, gop=10).path


@pytest.fixture(params=["generated", "pets2009"])
def media(request: pytest.FixtureRequest, generated_clip: Path) -> Path:
    if request.param == "generated":
        return generated_clip
    path = request.getfixturevalue("shared_data") / "pets2009_s2l1" / "vtest.avi"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, stats: SourceStats) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; stats: {stats}")
        time.sleep(0.02)


@pytest.fixture
def server(rtsp_ready: None, media: Path) -> Iterator[RtspServer]:
    with RtspServer(media) as srv:
        yield srv


def test_source_reconnects_by_itself_after_the_server_restarts(server: RtspServer):
    port = server.start()
    stats = SourceStats()
    source = Source(
        SourceConfig(
            camera="rtsp-test",
            url=server.url,
            fps=5,
            width=320,
            height=320,
            open_timeout_s=5,
            read_timeout_s=5,
            stall_timeout_s=5,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
        ),
        stats,
    )
    consumer = Consumer(source)
    try:
        first = [consumer.next_frame(15, "first connection") for _ in range(3)]
        assert stats.up and stats.reconnects == 0
        for frame in first:
            assert frame.image.shape[0] % 32 == 0 and frame.image.shape[1] == 320
            assert frame.image.mean() > 5  # a picture, not the black padding
        assert [f.seq for f in first] == [0, 1, 2]

        server.kill()  # like a crashed camera: no TEARDOWN, the TCP connection just dies
        wait_until(lambda: not stats.up, 10, "the source to notice the server is gone", stats)
        wait_until(lambda: stats.failures["open"] >= 1, 10, "a failed reconnect while it is down", stats)
        assert stats.reconnects == 0
        consumer.drain()

        assert server.start(port) == port
        after = consumer.next_frame(20, "the reconnect")
        wait_until(lambda: stats.reconnects == 1, 5, "the reconnect to be counted", stats)
        assert stats.up
        assert after.seq > first[-1].seq  # one sequence across connections
        assert after.source_pts is None or after.source_pts < 2.0  # a new session: the server started over
        more = [consumer.next_frame(10, "frames after the reconnect") for _ in range(3)]
        assert [f.seq for f in more] == [after.seq + 1, after.seq + 2, after.seq + 3]
        assert stats.reconnects == 1
        assert stats.failures["stall"] == 0
    finally:
        consumer.stop()
    assert not stats.up


class _CountingClock:
    """The real clock, counting what the source asks to sleep (pacing or backoff)."""

    def __init__(self) -> None:
        self.slept = 0.0

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, /) -> None:
        self.slept += seconds
        time.sleep(seconds)


def test_realtime_is_ignored_for_a_live_rtsp_camera(rtsp_ready: None, generated_clip: Path):
    with RtspServer(generated_clip) as server:
        server.start()
        clock = _CountingClock()
        source = Source(SourceConfig(camera="rtsp-live", url=server.url, fps=5, width=320, height=320, realtime=True,
                                     open_timeout_s=5, read_timeout_s=5, stall_timeout_s=5), clock=clock)
        assert source.live and not source.paced
        frames = []
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 5:
                break
        source.close()
        assert len(frames) == 5
        assert clock.slept == 0.0  # the camera sets the pace; the source never waits on its timestamps
