"""Web overlay: real PUB socket -> WebServer -> HTTP (JSON API, MJPEG), plus the drawing maths."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
import zmq

import streamer.web as web
from crowdwatch.config import Config, load_config
from crowdwatch.fit import Fit
from crowdwatch.result import Figures, Result
from crowdwatch.wire import encode_result, open_socket
from streamer import overlay
from streamer.overlay import HEADER_H, LIVE, STALE, CameraView, Status
from streamer.web import BOUNDARY, WebServer, WebSettings

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 10.0  # upper bound of every wait in these tests

CONFIG = """
[paths]
var = "var"
run = "run"
[cameras.plaza]
url = "synthetic://?people=60"
fps = 2
[cameras.plaza.zones]
fountain = [[250, 230], [390, 230], [430, 320], [210, 320]]
entrance = [[0, 360], [200, 360], [170, 480], [0, 480]]
[cameras.concourse]
url = "synthetic://?style=indoor"
fps = 1
[cameras.concourse.thresholds]
people = 40
[cameras.concourse.zones]
gates = [[160, 120], [480, 120], [520, 220], [120, 220]]
"""

GREEN = (40, 200, 40)  # RGB of the test frames: far from every heatmap and placeholder colour


# --------------------------------------------------------------------------- helpers (shared with the browser test)


def write_config(tmp_path: Path) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return load_config(path)


def density_blob(shape: tuple[int, int] = (60, 80), centre: tuple[int, int] = (20, 60), people: float = 12.0) -> np.ndarray:
    """A Gaussian crowd of ``people`` around cell ``centre`` (row, col)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    d = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * 3.0**2))
    return (d / d.sum() * people).astype(np.float32)


FIGURE_FIELDS = {f.name for f in msgspec.structs.fields(Figures)}


def make_result(camera: str = "plaza", seq: int = 1, *, image: np.ndarray | None = None,
                density: np.ndarray | None = None, **kw: object) -> Result:  # fmt: skip
    """A result of a 640x480 camera; keyword arguments go to its figures or to the result."""
    d = density_blob() if density is None else density
    figures: dict[str, object] = dict(
        count=float(d.sum()), zones={"fountain": 3.5, "entrance": 1.25} if camera == "plaza" else {"gates": 7.0},
        uncertainty=1.5, close_pairs=2.25, density_peak_per_m2=1.5, area_over_density_ratio=0.02, calibrated=True,
    )  # fmt: skip
    figures.update({k: v for k, v in kw.items() if k in FIGURE_FIELDS})
    fields: dict[str, object] = dict(
        camera=camera, seq=seq, capture_ns=time.time_ns(), density=d, model_version=f"{camera}-0003", fit=Fit.identity(640, 480),
        timings={"infer_s": 0.04}, truth=12.0, image=np.full((480, 640, 3), GREEN, np.uint8) if image is None else image,
    )  # fmt: skip
    fields.update({k: v for k, v in kw.items() if k not in FIGURE_FIELDS})
    return Result(figures=Figures(**figures), **fields)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout: float = WAIT_S, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get(server: WebServer, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def get_json(server: WebServer, path: str) -> tuple[int, dict]:
    status, ctype, body = get(server, path)
    assert ctype == "application/json"
    return status, json.loads(body)


def camera_json(server: WebServer, camera: str) -> dict:
    return get_json(server, f"/api/results/{camera}")[1]


def publish_until(pub: zmq.Socket, msg: Callable[[], Result], done: Callable[[], object], jpeg: int | None = None) -> None:
    """Publish until ``done()``: a SUB that has just connected misses the first messages."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pub.send_multipart(encode_result(msg(), jpeg_quality=jpeg), copy=False)
        if wait_or_none(done, 0.2):
            return
    raise AssertionError("the web server never saw the published result")


def wait_or_none(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


class MJPEGReader:
    """A streaming client that parses multipart/x-mixed-replace parts."""

    def __init__(self, server: WebServer, path: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
        self.conn.request("GET", path)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        assert self.resp.readline() == f"--{BOUNDARY}\r\n".encode()

    def part(self) -> bytes:
        headers = {}
        while (line := self.resp.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        assert headers.get("content-type") == "image/jpeg", headers
        body = self.resp.read(int(headers["content-length"]))
        assert self.resp.readline() == b"\r\n"
        assert self.resp.readline() == f"--{BOUNDARY}\r\n".encode()
        return body

    def image(self) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(self.part(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None
        return img

    def close(self) -> None:
        self.resp.close()  # the response holds the socket open too
        self.conn.close()


def picture(img: np.ndarray) -> np.ndarray:
    """The overlay below its header bar."""
    return img[HEADER_H:]


def green_fraction(bgr: np.ndarray) -> float:
    """Share of pixels showing the test frame's green."""
    b, g, r = (bgr[..., i].astype(int) for i in range(3))
    return float(np.mean((g > 150) & (r < 110) & (b < 110)))


def heat_fraction(bgr: np.ndarray) -> float:
    """Share of saturated warm (orange/red/yellow) pixels: the top of the heatmap scale."""
    hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    return float(np.mean(((h < 30) | (h > 170)) & (s > 120) & (v > 120)))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path)


@pytest.fixture
def pub(config: Config) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = open_socket(ctx, "pub", config.transport.results_bind, bind=True, hwm=100)
    yield sock
    sock.close(linger=0)
    ctx.term()


def start_server(config: Config, **settings: object) -> WebServer:
    return WebServer(config, WebSettings(port=0, **settings)).start()  # type: ignore[arg-type]


@pytest.fixture
def server(config: Config, pub: zmq.Socket) -> Iterator[WebServer]:
    srv = start_server(config)
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- API


def no_arrays(obj: object) -> bool:
    if isinstance(obj, list):
        return False
    if isinstance(obj, dict):
        return all(no_arrays(v) for v in obj.values())
    return True


def test_api_reflects_published_results(server: WebServer, pub: zmq.Socket) -> None:
    assert get_json(server, "/api/results/plaza")[1]["state"] == "no data"
    publish_until(pub, lambda: make_result(seq=7), lambda: camera_json(server, "plaza")["seq"] == 7)
    status, data = get_json(server, "/api/results")
    assert status == 200
    cams = {c["camera"]: c for c in data["cameras"]}
    assert list(cams) == ["plaza", "concourse"]  # config order
    plaza = cams["plaza"]
    assert plaza["state"] == LIVE
    assert plaza["count"] == pytest.approx(12.0, abs=0.01)  # float16 on the wire
    assert plaza["uncertainty"] == 1.5 and plaza["close_pairs"] == 2.25
    assert plaza["zones"] == {"fountain": 3.5, "entrance": 1.25}
    assert plaza["model_version"] == "plaza-0003" and plaza["has_image"] is True
    assert 0 <= plaza["age_s"] < 5 and plaza["latency_s"] < 5
    assert plaza["thresholds"]["people"] == 150
    # Configured zones show up before any result, with no value.
    assert cams["concourse"]["state"] == "no data" and cams["concourse"]["zones"] == {"gates": None}
    assert cams["concourse"]["thresholds"]["people"] == 40
    assert [c for c in data["cameras"] if not no_arrays(c)] == []

    # A newer result replaces the older one; per-camera endpoint agrees with the list.
    publish_until(pub, lambda: make_result("concourse", seq=3, count=55.0), lambda: camera_json(server, "concourse")["seq"] == 3)
    one = camera_json(server, "concourse")
    assert one["count"] == 55.0 and one["state"] == LIVE and one["zones"] == {"gates": 7.0}
    assert get(server, "/healthz")[0] == 200


def test_unknown_and_invalid_cameras_get_404(server: WebServer) -> None:
    for path in ("/api/results/nope", "/api/results/PLAZA", "/api/results/..%2f..%2fetc", "/api/results/",
                 "/api/results/a/b", "/stream/nope.mjpg", "/stream/../plaza.mjpg", "/snapshot/x%20y.jpg", "/nothing"):  # fmt: skip
        status, ctype, body = get(server, path)
        assert status == 404, path
        assert ctype == "application/json" and "error" in json.loads(body)


def test_malformed_messages_are_dropped_and_counted(server: WebServer, pub: zmq.Socket) -> None:
    good = make_result(seq=1)
    bad_camera = json.loads(bytes(encode_result(good)[0]))
    bad_camera["body"]["camera"] = "Not/A/Camera"

    def dropped() -> dict:
        return get_json(server, "/api/results")[1]["dropped"]

    # Keep sending until the SUB is connected and has seen each kind at least once.
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not {"bad_json", "bad_camera", "unknown_camera", "truncated"} <= dropped().keys():
        pub.send_multipart([b"{not json", b"x"])
        pub.send_multipart([json.dumps(bad_camera).encode(), *encode_result(good)[1:]])
        pub.send_multipart(encode_result(make_result("ghost")))  # valid, but not a configured camera
        parts = encode_result(good)
        pub.send_multipart([parts[0], bytes(parts[1])[:-2], *parts[2:]])  # density buffer cut short
        time.sleep(0.1)
    counts = dropped()
    assert {"bad_json", "bad_camera", "unknown_camera", "truncated"} <= counts.keys(), counts
    assert camera_json(server, "plaza")["state"] == "no data"  # nothing bad got through

    # The receiver is still alive and the drops are in the stage's metrics.
    publish_until(pub, lambda: make_result(seq=2), lambda: camera_json(server, "plaza")["seq"] == 2)
    status, ctype, body = get(server, "/metrics")
    text = body.decode()
    assert status == 200
    n = int(counts["bad_json"])
    pattern = r'crowd_frames_dropped_total\{camera="",reason="bad_json",stage="web"\} (\d+)\.0'
    assert int(re.search(pattern, text).group(1)) >= n
    assert re.search(r'crowd_frames_dropped_total\{camera="plaza",reason="truncated",stage="web"\} [1-9]', text)
    assert re.search(r'crowd_frames_total\{camera="plaza",stage="web"\} [1-9]', text)


# --------------------------------------------------------------------------- MJPEG


def test_stream_sends_overlay_jpegs_and_placeholder_before_data(server: WebServer, pub: zmq.Socket) -> None:
    waiting = MJPEGReader(server, "/stream/concourse.mjpg")
    try:
        ph = waiting.image()
        assert ph.shape == (HEADER_H + 480, 640, 3)
        assert green_fraction(picture(ph)) == 0 and heat_fraction(picture(ph)) == 0
        assert float(picture(ph).mean()) < 60  # dark placeholder
    finally:
        waiting.close()

    publish_until(pub, lambda: make_result(seq=1), lambda: camera_json(server, "plaza")["seq"] == 1, jpeg=90)
    reader = MJPEGReader(server, "/stream/plaza.mjpg")
    try:
        img = reader.image()
        assert img.shape == (HEADER_H + 480, 640, 3)
        assert green_fraction(picture(img)) > 0.6  # the frame itself, not the placeholder
        # Heat where the blob is (cell row 20, col 60 -> pixel y 164, x 484), none far from it.
        assert heat_fraction(picture(img)[150:180, 470:500]) > 0.3
        assert green_fraction(picture(img)[400:470, 300:360]) > 0.9

        # A new result reaches an already open stream.
        pub.send_multipart(encode_result(make_result(seq=2, density=density_blob(centre=(45, 15)))), copy=False)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            img = reader.image()
            if heat_fraction(picture(img)[350:380, 110:140]) > 0.3:
                break
        else:
            raise AssertionError("the stream never showed the second result")
    finally:
        reader.close()


def test_frames_are_encoded_once_per_result_and_shared(config: Config, pub: zmq.Socket,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    encoded: list[bytes] = []
    real = overlay.encode_jpeg

    def counting(bgr: np.ndarray, quality: int = overlay.JPEG_QUALITY) -> bytes:
        out = real(bgr, quality)
        encoded.append(out)
        return out

    monkeypatch.setattr(overlay, "encode_jpeg", counting)
    srv = start_server(config, keepalive_s=30.0)
    readers: list[MJPEGReader] = []
    try:
        publish_until(pub, lambda: make_result(seq=1), lambda: camera_json(srv, "plaza")["seq"] == 1)
        readers = [MJPEGReader(srv, "/stream/plaza.mjpg") for _ in range(3)]
        firsts = [r.part() for r in readers]
        for seq in range(2, 6):
            pub.send_multipart(encode_result(make_result(seq=seq, count=float(seq))), copy=False)
            wait_for(lambda seq=seq: camera_json(srv, "plaza")["seq"] == seq, what=f"seq {seq}")
            parts = [r.part() for r in readers]
            # Every viewer got the very same bytes: one encode, shared.
            assert all(p == parts[0] for p in parts)
        assert all(f in encoded for f in firsts)
        # A snapshot while others watch is the shared picture, at once.
        t0 = time.monotonic()
        status, ctype, snap = get(srv, "/snapshot/plaza.jpg")
        assert (status, ctype, snap) == (200, "image/jpeg", parts[0])
        assert time.monotonic() - t0 < 1.0
        # One render per new result (plus the first picture for the viewers), never one per viewer.
        assert len(encoded) <= 1 + 4 + 1, len(encoded)
    finally:
        for r in readers:
            r.close()
        srv.stop()


def test_slow_client_blocks_nobody_and_rate_is_limited(config: Config, pub: zmq.Socket) -> None:
    srv = start_server(config, stream_fps=5.0, render_fps=50.0, request_timeout_s=3.0)
    stop = threading.Event()
    # Noise does not compress: ~200 KB JPEGs fill a stuck client's socket buffers within a second or two.
    noise = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def flood() -> None:  # results far faster than stream_fps
        seq = 0
        while not stop.is_set():
            seq += 1
            # The count differs per result, so each overlay differs.
            pub.send_multipart(encode_result(make_result(seq=seq, count=float(seq), image=noise)), copy=False)
            time.sleep(0.02)

    publisher = threading.Thread(target=flood, daemon=True)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    stuck.settimeout(WAIT_S)
    try:
        publisher.start()
        wait_for(lambda: camera_json(srv, "plaza")["state"] == LIVE, what="first result")
        # A client that asks for the stream and never reads.
        stuck.connect(("127.0.0.1", srv.port))
        stuck.sendall(b"GET /stream/plaza.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: srv.feeds["plaza"].viewers == 1, what="the stuck client's stream")
        time.sleep(0.5)  # its socket buffers fill up
        t0 = time.monotonic()
        reader = MJPEGReader(srv, "/stream/plaza.mjpg")
        try:
            parts = [reader.part() for _ in range(7)]
            elapsed = time.monotonic() - t0
        finally:
            reader.close()
        assert len(set(parts)) == 7  # fresh frames kept coming
        # At most stream_fps frames per second (six gaps of 1/5 s), and not held up
        # by the stuck client's blocked writes (request_timeout_s = 3 s).
        assert 6 / 5.0 * 0.9 <= elapsed < 2.8, elapsed
        t0 = time.monotonic()
        assert get(srv, "/api/results")[0] == 200
        assert time.monotonic() - t0 < 1.0
        # The stuck client is cut off by the socket timeout (its handler ends) ...
        wait_for(lambda: srv.feeds["plaza"].viewers == 0, what="the stuck client to be dropped")
        # ... and gets what was buffered, then EOF.
        received = 0
        while chunk := stuck.recv(1 << 16):
            received += len(chunk)
        assert received > 0
    finally:
        stop.set()
        publisher.join(timeout=5)
        stuck.close()
        srv.stop()


def test_camera_goes_stale_and_the_overlay_says_so(config: Config, pub: zmq.Socket) -> None:
    srv = start_server(config, min_stale_s=0.8, stale_periods=0.0)
    try:
        publish_until(pub, lambda: make_result(seq=1), lambda: camera_json(srv, "plaza")["seq"] == 1)
        wait_for(lambda: camera_json(srv, "plaza")["state"] == STALE, what="stale state")
        assert camera_json(srv, "plaza")["age_s"] >= 0.8  # rounded to 0.01: 0.8004 reads 0.8
        reader = MJPEGReader(srv, "/stream/plaza.mjpg")
        try:
            # A duplicate of the last result still in flight (publish_until sends until one lands)
            # can make the camera live again for a moment on a loaded machine: read until stale.
            deadline = time.monotonic() + 10
            img = reader.image()
            while green_fraction(picture(img)) > 0 and time.monotonic() < deadline:
                img = reader.image()
        finally:
            reader.close()
        # Greyed out: the green frame and the heatmap colours are gone, the stale badge is amber.
        assert green_fraction(picture(img)) == 0 and heat_fraction(picture(img)) < 0.01
        badge = img[10:40, 520:630].reshape(-1, 3).astype(int)
        amber = (badge[:, 2] > 200) & (badge[:, 1] > 100) & (badge[:, 1] < 180) & (badge[:, 0] < 60)
        assert amber.mean() > 0.3
    finally:
        srv.stop()


def test_page_lists_every_camera_with_its_stream(server: WebServer) -> None:
    status, ctype, body = get(server, "/")
    page = body.decode()
    assert status == 200 and ctype.startswith("text/html")
    for cam in ("plaza", "concourse"):
        assert f'data-camera="{cam}"' in page and f'src="/stream/{cam}.mjpg"' in page
    assert 'data-zone="fountain"' in page and 'data-zone="gates"' in page
    assert "http://" not in page and "https://" not in page  # nothing from outside
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page and get(server, asset)[0] == 200
    assert get(server, "/static/../web.py")[0] == 404


# --------------------------------------------------------------------------- drawing


def drawn(density: np.ndarray, image: np.ndarray, fit: Fit | None = None, **figures: object) -> Result:
    """A result to draw: ``image`` made from the camera by ``fit`` (default: it is the camera frame)."""
    fit = fit or Fit.identity(image.shape[1], image.shape[0])
    return Result(camera="plaza", seq=1, capture_ns=0, model_version="v1", figures=Figures(**{"count": 0.0, **figures}),  # type: ignore[arg-type]
                  fit=fit, density=density, image=image)  # fmt: skip


def test_heatmap_colour_is_where_the_density_is() -> None:
    grey = np.full((480, 640, 3), 128, np.uint8)
    d = np.zeros((60, 80), np.float32)
    d[30, 40] = 2.0  # one crowded cell: pixels x 320..327, y 240..247
    out = overlay.blend_heatmap(grey, d)
    assert np.array_equal(out[:200], grey[:200]) and np.array_equal(out[:, :300], grey[:, :300])
    centre = out[244, 324].astype(int)
    assert np.abs(centre - 128).max() > 60  # strongly coloured
    assert centre[2] > centre[0]  # warm: the top of the colour scale

    view = CameraView("plaza", (640, 480))
    img = overlay.render_result(view, Status(LIVE, 0.1), drawn(d, np.full((480, 640, 3), 128, np.uint8), count=2.0, uncertainty=0.5))
    assert img.shape == (HEADER_H + 480, 640, 3)
    assert np.abs(picture(img)[244, 324].astype(int) - 128).max() > 60
    assert np.array_equal(picture(img)[100:200, 100:200], grey[100:200, 100:200])


def test_zone_geometry_follows_the_letterbox() -> None:
    # A 1280x720 camera fitted into a 640x480 box: scale 0.5, content 640x360, padded to 640x384.
    fit = Fit.plan(1280, 720, 640, 480)
    geo = overlay.view_geometry((640, 384), fit)
    assert geo.crop == (640, 360) and geo.out_size == (640, 360) and geo.zone_scale == pytest.approx(0.5)
    assert overlay.zone_points([(1280, 720), (200, 100)], geo).tolist() == [[640, 360], [100, 50]]
    # The same input sent as a 320x192 preview: zones land in the same place on the display.
    geo2 = overlay.view_geometry((320, 192), fit)
    assert geo2.crop == (320, 180) and geo2.out_size == (640, 360) and geo2.zone_scale == pytest.approx(0.5)
    # A frame that was the model input already: source pixels are input pixels.
    geo3 = overlay.view_geometry((640, 480), Fit.identity(640, 480))
    assert geo3.zone_scale == 1.0 and geo3.crop == (640, 480)
    # A big model input is shown at the maximum display width.
    geo4 = overlay.view_geometry((1920, 1088), Fit.plan(1920, 1080, 1920, 1088))
    assert geo4.crop == (1920, 1080) and geo4.out_size == (overlay.MAX_DISPLAY_W, 540)

    # Drawn: the zone outline passes through its configured corner.
    view = CameraView("plaza", (640, 480), zones={"box": [(200, 200), (600, 200), (600, 600), (200, 600)]})
    img = overlay.render_result(view, Status(LIVE, 0.1), drawn(np.zeros((48, 80), np.float32), np.full((384, 640, 3), 60, np.uint8), fit, zones={"box": 0.0}))
    pic = picture(img)
    assert pic.shape[:2] == (360, 640)
    assert pic[200, 300].min() > 200  # right edge at x = 600 * 0.5, white
    assert pic[200, 250].max() < 80  # inside the zone: the frame itself
    # Same result with a 320x240 preview image: same picture size, same zone place.
    small = overlay.render_result(view, Status(LIVE, 0.1), drawn(np.zeros((48, 80), np.float32), np.full((192, 320, 3), 60, np.uint8), fit, zones={"box": 0.0}))
    assert small.shape == img.shape and picture(small)[200, 300].min() > 200


# --------------------------------------------------------------------------- process


def test_main_serves_and_exits_cleanly_on_sigterm(config: Config, pub: zmq.Socket, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.web", "--config", config.source, "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,  # log lines go to stdout (crowdwatch.logs)
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and "web overlay on" not in line:
            line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"web overlay on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        srv = type("S", (), {"port": port})()
        publish_until(pub, lambda: make_result(seq=1), lambda: camera_json(srv, "plaza")["seq"] == 1)  # type: ignore[arg-type]
        reader = MJPEGReader(srv, "/stream/plaza.mjpg")  # type: ignore[arg-type]
        reader.part()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0  # an open stream does not hold shutdown up
        reader.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_main_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nweb_port = 'eighty'\n")
    assert web.main(["--config", str(tmp_path / "bad.toml")]) == 2
    assert "server.web_port" in capsys.readouterr().err
