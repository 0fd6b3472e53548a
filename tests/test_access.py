"""Access control and limits of the three HTTP servers (crowdwatch/httpbase.py): exporter, web stage, labelling tool.

Bound beyond localhost (0.0.0.0, reached here through 127.0.0.1) every server
answers 401 without the token and 200 with it; streams beyond the limit get a
prompt 503; a slowloris client is dropped; a burst of clients is answered.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_labelling import write_frames
from test_web import write_config

from adapt.selfsup.labelling import LabelSet, serve
from crowdwatch.httpbase import Access, AccessError, Limits
from streamer import supervisor
from streamer.exporter import Metrics, MetricsServer
from streamer.web import WebServer, WebSettings

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token_for-tests"
ENV = "CROWDWATCH_TOKEN"


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None):
    """(status, headers, first bytes of the body) of one request to 127.0.0.1."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read(64 if path.endswith(".mjpg") else -1)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}


def refused(metrics: Metrics, stage: str, reason: str) -> float:
    return metrics.registry.get_sample_value("crowd_http_refused_total", {"stage": stage, "reason": reason}) or 0.0


def test_a_bind_beyond_localhost_needs_the_secret_and_names_its_variable() -> None:
    assert Access.for_bind("127.0.0.1", ENV, environ={}).required is False
    assert Access.for_bind("::1", ENV, environ={}).required is False
    assert Access.for_bind("localhost", ENV, environ={}).required is False
    for host in ("0.0.0.0", "::", "10.0.0.5", "cam-host"):
        with pytest.raises(AccessError, match="MY_TOKEN"):
            Access.for_bind(host, "MY_TOKEN", environ={})
        assert Access.for_bind(host, "MY_TOKEN", environ={"MY_TOKEN": TOKEN}).token == TOKEN


def test_run_refuses_to_start_beyond_localhost_without_the_secret(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("GATE_TOKEN", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nweb_host = "0.0.0.0"\nauth_token_env = "GATE_TOKEN"\n[log]\nfiles = false\n'
                   f'[model]\nregistry = "{REPO / "models"}"\n[cameras.a]\nurl = "synthetic://"\n')  # fmt: skip
    assert supervisor.main(["--config", str(cfg), "--no-adapt"]) == 2
    assert "GATE_TOKEN" in capsys.readouterr().err


def test_exporter_beyond_localhost_needs_the_token(monkeypatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    metrics = Metrics()
    with MetricsServer(metrics, "0.0.0.0", 0, access=Access.for_bind("0.0.0.0", ENV)) as srv:
        status, headers, _ = get(srv.port, "/metrics")
        assert status == 401 and "Basic" in " ".join(headers.get_all("WWW-Authenticate") or [])
        assert get(srv.port, "/metrics", bearer("wrong"))[0] == 401
        assert get(srv.port, "/metrics", basic("wrong"))[0] == 401
        assert get(srv.port, "/metrics", bearer())[0] == 200
        assert get(srv.port, "/metrics", basic())[0] == 200
        assert get(srv.port, f"/metrics?token={TOKEN}")[0] == 200
        assert get(srv.port, "/healthz")[0] == 200 and get(srv.port, "/readyz")[0] == 503  # probes stay open
        assert refused(metrics, "infer", "unauthorized") == 3
    with MetricsServer(Metrics(), "127.0.0.1", 0) as local:  # localhost stays open, as before
        assert get(local.port, "/metrics")[0] == 200


def test_web_stage_beyond_localhost_needs_the_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    config = write_config(tmp_path)
    with WebServer(config, WebSettings(host="0.0.0.0", port=0)) as srv:
        for path in ("/", "/api/results", "/api/results/plaza", "/metrics", "/snapshot/plaza.jpg", "/stream/plaza.mjpg", "/static/app.js"):
            assert get(srv.port, path)[0] == 401, path
        assert get(srv.port, "/api/results", bearer())[0] == 200
        assert get(srv.port, "/metrics", basic())[0] == 200
        status, headers, _ = get(srv.port, "/stream/plaza.mjpg", bearer())
        assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace")
        # ?token= on the page sets a cookie that the page's own requests (img, fetch) then carry
        status, headers, body = get(srv.port, f"/?token={TOKEN}")
        assert status == 200 and b"plaza" in body
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert get(srv.port, "/api/results", {"Cookie": cookie})[0] == 200
        assert get(srv.port, "/api/results", {"Cookie": "crowdwatch_token=nope"})[0] == 401
        assert get(srv.port, "/healthz")[0] == 200
        assert refused(srv.metrics, "web", "unauthorized") >= 8


def test_labelling_tool_beyond_localhost_needs_the_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    labels = LabelSet(tmp_path / "labels")
    labels.add(write_frames(tmp_path / "frames", 2))
    stem = next(iter(labels.frames))
    with pytest.raises(AccessError, match=ENV):
        serve(labels, "0.0.0.0", 0, Access.for_bind("0.0.0.0", ENV, environ={}))
    server = serve(labels, "0.0.0.0", 0)
    import threading

    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    port = server.server_address[1]
    try:
        put = json.dumps({"points": [[10, 10]]}).encode()
        assert get(port, "/")[0] == 401
        assert get(port, "/api/frames")[0] == 401
        assert get(port, f"/api/labels/{stem}", {"Content-Type": "application/json"}, "PUT", put)[0] == 401
        assert not (labels.labels / f"{stem}.json").exists()  # nothing written without the token
        assert get(port, "/api/frames", bearer())[0] == 200
        assert get(port, f"/api/labels/{stem}", {**basic(), "Content-Type": "application/json"}, "PUT", put)[0] == 200
        assert labels.points(stem) == [[10.0, 10.0]]
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- limits


def open_stream(port: int, camera: str = "plaza") -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /stream/{camera}.mjpg HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s, s.recv(64)


def test_streams_beyond_the_limit_get_a_prompt_503(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with WebServer(config, WebSettings(port=0, max_streams=2)) as srv:
        held = [open_stream(srv.port) for _ in range(2)]
        try:
            assert all(first.startswith(b"HTTP/1.0 200") for _, first in held), [f for _, f in held]
            t0 = time.monotonic()
            status, headers, body = get(srv.port, "/stream/plaza.mjpg")
            assert status == 503 and json.loads(body) == {"error": "too many streams"} and headers["Retry-After"]
            assert time.monotonic() - t0 < 1.0
            assert refused(srv.metrics, "web", "too_many_streams") == 1
            assert get(srv.port, "/api/results")[0] == 200  # other requests are still served
        finally:
            for s, _ in held:
                s.close()


def test_a_burst_of_viewers_is_answered_not_left_hanging(tmp_path: Path) -> None:
    """The issue's 100 viewers: each gets its stream or a clean 503, none a refusal or a time-out."""
    config = write_config(tmp_path)
    with WebServer(config, WebSettings(port=0, max_streams=8)) as srv:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            results = list(pool.map(lambda _: open_stream(srv.port), range(100)))
        try:
            codes = [first[:12] for _, first in results]
            assert codes.count(b"HTTP/1.0 200") == 8, codes
            assert codes.count(b"HTTP/1.0 503") == 92, codes
        finally:
            for s, _ in results:
                s.close()


def test_a_slow_client_is_dropped_and_counted() -> None:
    metrics = Metrics()
    with MetricsServer(metrics, "127.0.0.1", 0, limits=Limits(request_timeout_s=1.0)) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        t0 = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        closed = False
        try:
            while time.monotonic() - t0 < 4:  # one header byte every 0.2 s: each read is quick, the head never ends
                s.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            closed = True
        if not closed:
            s.settimeout(1)
            closed = s.recv(100) == b""
        assert closed and time.monotonic() - t0 < 3.5
        assert refused(metrics, "infer", "slow_client") == 1
        s.close()
        assert get(srv.port, "/metrics")[0] == 200


def test_connections_beyond_the_limit_get_a_503_at_once() -> None:
    metrics = Metrics()
    with MetricsServer(metrics, "127.0.0.1", 0, limits=Limits(max_connections=4, request_timeout_s=10)) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        try:
            deadline = time.monotonic() + 5
            while srv._httpd.active < 4 and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.05)
            t0 = time.monotonic()
            assert get(srv.port, "/metrics")[0] == 503
            assert time.monotonic() - t0 < 1.0
            assert refused(metrics, "infer", "too_many_connections") == 1
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 5
        while get(srv.port, "/metrics")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(srv.port, "/metrics")[0] == 200
