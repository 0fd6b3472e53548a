"""The live page in headless Chromium: the tiles load their MJPEG overlays and the JS fills in the figures.

Needs Debian's ``chromium`` package (CI installs it); skipped, saying so, without it.
``CROWDWATCH_UPDATE_SCREENSHOT=1`` also copies the screenshot to docs/overlay.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from test_web import camera_json, publish_until, start_server, wait_for, write_config

from crowdwatch.config import Config
from crowdwatch.fit import Fit
from crowdwatch.result import Figures, Result
from crowdwatch.wire import encode_result, open_socket
from streamer.crowd_metrics import STRIDE
from streamer.web import WebServer

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WINDOW = (1280, 800)

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed (apt-get install chromium); CI installs it"
)


# --------------------------------------------------------------------------- scenes


def scene(seed: int, style: str, people: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB 640x480 frame, head points) from the project's synthetic renderer."""
    from adapt.synth import render_sample

    r = render_sample(seed, 640, 480, style, people)
    return r.image, r.points


def density_from_heads(points: np.ndarray, size: tuple[int, int] = (640, 480), sigma_px: float = 4.0) -> np.ndarray:
    """What the model outputs for these heads: Gaussians summed into stride-8 cells (sum = count)."""
    w, h = size
    impulses = np.zeros((h, w), np.float32)
    xy = np.clip(np.round(points).astype(int), 0, [w - 1, h - 1])
    np.add.at(impulses, (xy[:, 1], xy[:, 0]), 1.0)
    blurred = cv2.GaussianBlur(impulses, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    return blurred.reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE).sum(axis=(1, 3))


def result(camera: str, seq: int, image: np.ndarray, heads: np.ndarray, config: Config) -> Result:
    density = density_from_heads(heads)
    rng = np.random.default_rng(seq)
    count = float(density.sum()) + float(rng.normal(0, 0.4))
    zones = {z: round(count * f, 2) for z, f in zip(config.cameras[camera].zones, (0.22, 0.12))}
    figures = Figures(count=max(0.0, count), zones=zones, uncertainty=2.3 + 0.1 * (seq % 3), close_pairs=6.5,
                      density_peak_per_m2=1.9, area_over_density_ratio=0.03, calibrated=True)  # fmt: skip
    return Result(
        camera=camera, seq=seq, capture_ns=time.time_ns(), model_version=f"{camera}-0007", figures=figures,
        fit=Fit.identity(image.shape[1], image.shape[0]), density=density, image=image, timings={"infer_s": 0.031}, truth=float(len(heads)),
    )  # fmt: skip


def hot_pixels(bgr: np.ndarray) -> int:
    """Saturated warm pixels: the upper half of the heatmap's colour scale."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    return int(np.count_nonzero(((h < 30) | (h > 170)) & (s > 150) & (v > 150)))


def colour_pixels(bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    target = np.array(rgb[::-1], dtype=int)
    return int(np.count_nonzero(np.abs(bgr.astype(int) - target).max(axis=-1) <= tol))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, WebServer, zmq.Socket]]:
    config = write_config(tmp_path)
    ctx = zmq.Context()
    pub = open_socket(ctx, "pub", config.transport.results_bind, bind=True, hwm=100)
    # Stale after 1.5 s, so a camera that stopped shows as stale within the test.
    srv = start_server(config, min_stale_s=1.5, stale_periods=0.0)
    yield config, srv, pub
    srv.stop()
    pub.close(linger=0)
    ctx.term()


def test_page_in_headless_chromium(setup: tuple[Config, WebServer, zmq.Socket], tmp_path: Path) -> None:
    config, srv, pub = setup
    plaza_img, plaza_heads = scene(11, "day", (45, 60))
    conc_img, conc_heads = scene(5, "indoor", (60, 75))

    # The plaza stops after one result: stale by the time the browser looks.
    publish_until(pub, lambda: result("plaza", 1, plaza_img, plaza_heads, config),
                  lambda: camera_json(srv, "plaza")["seq"] == 1, jpeg=85)  # fmt: skip
    stop = threading.Event()

    def concourse() -> None:  # live, above its people threshold (40)
        seq = 0
        while not stop.is_set():
            seq += 1
            pub.send_multipart(encode_result(result("concourse", seq, conc_img, conc_heads, config), jpeg_quality=85))
            stop.wait(0.25)

    feeder = threading.Thread(target=concourse, daemon=True)
    feeder.start()
    shot = tmp_path / "overlay.png"
    try:
        wait_for(lambda: camera_json(srv, "concourse")["state"] == "live", what="concourse live")
        wait_for(lambda: camera_json(srv, "plaza")["state"] == "stale", what="plaza stale")
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            # Virtual time ends the never-ending MJPEG "load"; 3 s covers several API polls and frames.
            "--virtual-time-budget=3000", f"--screenshot={shot}", f"http://127.0.0.1:{srv.port}/",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45, cwd=tmp_path)
    finally:
        stop.set()
        feeder.join(timeout=5)
    assert shot.is_file(), f"no screenshot; chromium exited {proc.returncode}: {proc.stderr[-2000:]}"

    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (WINDOW[1], WINDOW[0], 3)
    assert float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).std()) > 20  # not blank
    # The overlays arrived: far more heatmap colour than the raw frames themselves hold.
    baseline = hot_pixels(cv2.cvtColor(conc_img, cv2.COLOR_RGB2BGR))
    assert hot_pixels(img) > baseline + 1500, (hot_pixels(img), baseline)
    # The JS ran: the connection pill is green, and the stale camera is flagged amber.
    assert colour_pixels(img[:45, WINDOW[0] - 200 :], (0x38, 0xA0, 0x48)) > 200
    assert colour_pixels(img, (0xEB, 0x8C, 0x00)) > 300

    if os.environ.get("CROWDWATCH_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "overlay.png")

