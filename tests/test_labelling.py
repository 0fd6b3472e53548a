"""`crowdwatch label`: frames picked and copied, clicks saved as JSON points the gate reads, bad input refused.

The last test clicks heads in headless Chromium over the DevTools protocol
(needs Debian's ``chromium`` and the ``websocket-client`` package; skipped,
saying so, without them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_web import wait_for

from adapt.commands.label import main
from adapt.data.datasets import read_dataset
from adapt.selfsup.labelling import LabelError, LabelSet, serve, spread


def write_frames(folder: Path, n: int, size: tuple[int, int] = (160, 120)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"frame_{i:03d}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_frames_are_spread_over_the_source() -> None:
    paths = [Path(f"{i}.jpg") for i in range(100)]
    assert [p.name for p in spread(paths, 3)] == ["0.jpg", "50.jpg", "99.jpg"]
    assert spread(paths[:2], 5) == paths[:2]
    with pytest.raises(LabelError):
        spread(paths, 0)


def test_points_round_trip_into_the_dataset_the_gate_reads(tmp_path: Path) -> None:
    labels = LabelSet(tmp_path / "out")
    assert labels.add(write_frames(tmp_path / "src", 3)) == 3
    assert labels.save("frame_001", [[10, 20], [30.25, 40.5]]) == 2
    assert labels.save("frame_002", []) == 0  # a frame with nobody in it is a label too
    index = read_dataset(tmp_path / "out", "json")
    counts = {Path(item.image_path).stem: len(item.points) for item in index.items}
    assert counts == {"frame_001": 2, "frame_002": 0}
    # a frame not labelled yet is skipped, not read as empty
    assert [(p.stem, why) for p, why in index.skipped] == [("frame_000", "no label file for this image")]
    # a second session sees the same frames and points, and adds none twice
    again = LabelSet(tmp_path / "out")
    assert again.points("frame_001") == [[10.0, 20.0], [30.25, 40.5]]
    assert again.add(write_frames(tmp_path / "src", 3)) == 0


def test_bad_points_and_names_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    labels = LabelSet(tmp_path / "out")
    labels.add(write_frames(tmp_path / "src", 1))
    for bad, why in (([[200, 10]], "outside the 160x120"), ([[1, float("nan")]], "finite"), ([[1, 2, 3]], None), ("x", None)):
        with pytest.raises(LabelError, match=why):
            labels.save("frame_000", bad)
    with pytest.raises(LabelError, match="no frame"):
        labels.save("../../etc/passwd", [])
    assert list((tmp_path / "out" / "labels").iterdir()) == []


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def server(tmp_path: Path):
    labels = LabelSet(tmp_path / "out")
    labels.add(write_frames(tmp_path / "src", 2))
    srv = serve(labels, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield labels, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_api(server) -> None:
    labels, url = server
    status, page = request(url + "/")
    assert status == 200 and b"<canvas" in page
    status, body = request(url + "/api/frames")
    assert status == 200 and [f["name"] for f in json.loads(body)] == ["frame_000", "frame_001"]
    status, body = request(url + "/image/frame_000")
    assert status == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    status, body = request(url + "/api/labels/frame_000", "PUT", json.dumps({"points": [[5, 6]]}).encode())
    assert status == 200 and json.loads(body) == {"name": "frame_000", "count": 1}
    assert labels.points("frame_000") == [[5.0, 6.0]]
    # bad requests: clear errors, nothing changed
    assert request(url + "/api/labels/frame_000", "PUT", b"{not json")[0] == 400
    assert request(url + "/api/labels/frame_000", "PUT", b'{"points": [[500, 6]]}')[0] == 400
    assert request(url + "/api/labels/frame_000", "PUT", b'[1]')[0] == 400
    assert request(url + "/api/labels/..%2F..%2Fconfig", "PUT", b'{"points": []}')[0] == 404
    assert request(url + "/image/..%2Fsrc%2Fframe_000")[0] == 404
    assert labels.points("frame_000") == [[5.0, 6.0]]


def test_command_refuses_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["--camera", "Bad/Name", "--out", str(tmp_path / "o")]) == 1
    assert "camera name" in capsys.readouterr().err
    assert main(["--camera", "lobby", "--frames", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class DevTools:
    """The least of the Chrome DevTools protocol: send a command, wait for its answer."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=20)
        self.seq = 0

    def __call__(self, method: str, **params) -> dict:
        self.seq += 1
        self.ws.send(json.dumps({"id": self.seq, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.seq:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        return self("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed (apt-get install chromium); CI installs it")
def test_clicks_in_headless_chromium_become_labels(server, tmp_path: Path) -> None:
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e .[dev])")
    labels, url = server
    profile = tmp_path / "chromium"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=800,600", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port = wait_for(lambda: (profile / "DevToolsActivePort").is_file() and (profile / "DevToolsActivePort").read_text().split("\n")[0], 20.0, "chromium's DevTools port")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page("Page.navigate", url=url + "/")
        wait_for(lambda: page.js("document.getElementById('status').textContent") == "ready", 20.0, "the page to load its first frame")
        rect = page.js("(() => { const r = document.getElementById('view').getBoundingClientRect(); return [r.left, r.top, r.width]; })()")
        left, top, shown = rect
        s = shown / 160  # the 160x120 frame as the page shows it

        def at(x: float, y: float) -> tuple[float, float]:
            return left + x * s, top + y * s

        page.click(*at(40, 30))
        page.click(*at(120, 90))
        wait_for(lambda: len(labels.points("frame_000")) == 2, what="two saved points")
        got = np.array(labels.points("frame_000"))
        assert np.abs(got - [[40, 30], [120, 90]]).max() < 1.5
        page.click(*at(41, 31))  # on a mark: removes it
        wait_for(lambda: len(labels.points("frame_000")) == 1, what="one saved point")
        assert np.abs(np.array(labels.points("frame_000")) - [[120, 90]]).max() < 1.5
        # the file is written before the page hears back, so the status can lag the saved points
        wait_for(lambda: "saved (1)" in page.js("document.getElementById('status').textContent"), what="the page to report one saved point")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
