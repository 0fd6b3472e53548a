"""``crowdwatch web``: the live overlay (MJPEG per camera), a page and a JSON API.

Threads, and why each exists:

* **receiver**: the SUB socket (connected to infer's results PUB). Decodes with
  ``wire.decode_result`` through ``wire.LatestReceiver``; malformed or unknown
  messages are dropped, logged (rate-limited) and counted in
  ``crowd_frames_dropped_total{stage="web"}``. Only the latest result per
  configured camera is kept, so memory is bounded by the number of cameras.
* **renderer**: draws and JPEG-encodes a camera's overlay once per new result
  (capped at ``render_fps``), or once a second while the camera is stale (the
  age ticks), and only while someone watches it. The JPEG is shared by every
  viewer of that camera.
* **HTTP** (``crowdwatch.httpbase.GuardedServer``): one thread per connection, bounded, with the access check. An MJPEG
  client waits on its camera's feed and writes from its own thread, so a slow
  client blocks nobody; a client that stops reading is cut off by the socket
  timeout.

Endpoints: ``/`` (page), ``/stream/<camera>.mjpg``, ``/snapshot/<camera>.jpg``,
``/api/results``, ``/api/results/<camera>``, ``/healthz``, ``/metrics``,
``/static/*``. See docs/WEB.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import html
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import zmq
from prometheus_client.exposition import choose_encoder

from crowdwatch.config import CameraConfig, Config, InvalidCameraName, load_stage_config, validate_camera_name
from crowdwatch.handshake import REFUSED, RefusalWatch
from crowdwatch.httpbase import Access, GuardedHandler, GuardedServer, Limits
from crowdwatch.result import Figures, Result
from crowdwatch.wire import LatestReceiver, WireError, client_curve, decode_result, subscribe

from . import overlay
from .exporter import Metrics
from .heartbeat import EXIT_FATAL, Heartbeat
from .overlay import LIVE, NO_DATA, STALE, CameraView, Status
from .shutdown import stop_on_signals

log = logging.getLogger("crowdwatch.web")

STAGE = "web"
STATIC_DIR = Path(__file__).with_name("static")
BOUNDARY = "crowdwatchframe"
TILES_MARKER = "<!--TILES-->"
STREAM_SNDBUF = 256 * 1024  # bytes; about one or two overlay JPEGs
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
# The page loads nothing from elsewhere; say so to the browser too.
CSP = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    stream_fps: float = 10.0  # most frames per second sent to one client
    render_fps: float = 10.0  # most overlays rendered per second per camera
    keepalive_s: float = 5.0  # resend the current frame this often when nothing changes
    min_stale_s: float = 5.0  # a camera is stale after max(min_stale_s, stale_periods / fps)
    stale_periods: float = 3.0
    max_streams: int = 32  # concurrent MJPEG clients; more get 503 (bounds threads)
    request_timeout_s: float = 15.0  # a client that stops reading, or sends its request too slowly, is dropped after this
    max_connections: int = 256  # HTTP connections at once; more get 503 (crowdwatch/httpbase.py)
    access: Access | None = None  # None: from the bind and [server] auth_token_env at start()
    jpeg_quality: int = overlay.JPEG_QUALITY
    first_frame_wait_s: float = 2.0  # a new viewer waits this long for a fresh render

    def stale_after(self, camera: CameraConfig) -> float:
        return max(self.min_stale_s, self.stale_periods / camera.fps)


# --------------------------------------------------------------------------- latest results


@dataclass(frozen=True, eq=False)
class Latest:
    """A camera's newest result and when it arrived here."""

    result: Result
    received_mono: float  # time.monotonic(), for ages (immune to clock steps)
    received_wall: float  # time.time(), for display and latency
    serial: int  # increases with every stored result, any camera


class ResultStore:
    """Latest result per camera, shared by the receiver, renderer and HTTP threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Latest] = {}
        self._serial = 0

    def put(self, msg: Result, *, mono: float | None = None, wall: float | None = None) -> Latest:
        with self._lock:
            self._serial += 1
            entry = Latest(msg, time.monotonic() if mono is None else mono, time.time() if wall is None else wall, self._serial)
            self._latest[msg.camera] = entry
            return entry

    def get(self, camera: str) -> Latest | None:
        with self._lock:
            return self._latest.get(camera)

    @property
    def received(self) -> int:
        with self._lock:
            return self._serial


def camera_status(latest: Latest | None, now_mono: float, stale_after_s: float) -> Status:
    if latest is None:
        return Status(NO_DATA)
    age = max(0.0, now_mono - latest.received_mono)
    return Status(STALE if age > stale_after_s else LIVE, age)


FIGURES = tuple(f.name for f in msgspec.structs.fields(Figures) if f.name != "zones")  # flat in the JSON, zones beside them


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(float(v), digits)


def camera_summary(cam: CameraConfig, latest: Latest | None, now_mono: float, settings: WebSettings) -> dict[str, Any]:
    """The JSON of one camera: figures, timestamps, state; never an array."""
    status = camera_status(latest, now_mono, settings.stale_after(cam))
    th = cam.thresholds
    out: dict[str, Any] = {
        "camera": cam.name,
        "state": status.state,
        "age_s": _round(status.age_s, 2),
        "stale_after_s": settings.stale_after(cam),
        "thresholds": {
            "people": th.people, "uncertainty": th.uncertainty, "close_pairs": th.close_pairs,
            "density_per_m2": th.density_per_m2, "area_over_density_ratio": th.area_over_density_ratio,
        },  # fmt: skip
    }
    zones: dict[str, float | None] = {name: None for name in cam.zones}
    if latest is None:
        keys = ("seq", "received_at", "captured_at", "latency_s", *FIGURES, "model_version", "truth")
        return {**out, **dict.fromkeys(keys), "zones": zones, "timings": {}, "has_image": False}
    r = latest.result
    captured = r.capture_ns / 1e9
    figures = {k: getattr(r.figures, k) for k in FIGURES}
    figures = {k: _round(v, 4 if k == "area_over_density_ratio" else 3) if isinstance(v, float) else v for k, v in figures.items()}
    zones.update({k: _round(v) for k, v in r.figures.zones.items()})
    return {
        **out,
        **figures,
        "seq": r.seq,
        "received_at": round(latest.received_wall, 3),
        "captured_at": round(captured, 3),
        "latency_s": round(latest.received_wall - captured, 3),
        "zones": zones,
        "model_version": r.model_version,
        "truth": _round(r.truth),
        "timings": {k: _round(v, 4) for k, v in r.timings.items()},
        "has_image": r.image is not None,
    }


# --------------------------------------------------------------------------- drops


class DropCounter:
    """Counts drops by reason (for the API and metrics) and logs them without flooding."""

    LOG_EVERY_S = 30.0

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when, count then)

    def __call__(self, reason: str, camera: str | None) -> None:
        self.metrics.drop(STAGE, reason, camera)
        now = self.clock()
        with self._lock:
            n = self._counts[reason] = self._counts.get(reason, 0) + 1
            last = self._logged.get(reason)
            if last is not None and now - last[0] < self.LOG_EVERY_S:
                return
            self._logged[reason] = (now, n)
        if reason == "overflow":
            return  # keeping only the newest result per camera is the design, not a fault
        since = n - (last[1] if last else 0)
        log.warning("dropped %d result message(s) (%s, camera %s); %d in total for this reason", since, reason, camera or "?", n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _decode(parts: list[zmq.Frame]) -> Result:
    # A bug in decoding must cost one message, not the receiver thread.
    try:
        return decode_result(parts)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("unexpected error decoding a result message")
        raise WireError("bad_parts", f"decoder error: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- shared JPEG per camera


class Feed:
    """One camera's current overlay JPEG, shared by all its viewers.

    ``version`` increases with each published JPEG; viewers wait for a newer
    one on the condition without holding it while they write.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._version = 0
        self._viewers = 0
        self._closed = False
        # Renderer-only state: what the current JPEG shows, and when it was drawn.
        self.rendered_key: tuple[object, ...] | None = None
        self.rendered_at = -1e9

    def publish(self, jpeg: bytes) -> None:
        with self._cond:
            self._jpeg = jpeg
            self._version += 1
            self._cond.notify_all()

    def current(self) -> tuple[int, bytes | None]:
        with self._cond:
            return self._version, self._jpeg

    def wait_newer(self, version: int, timeout: float) -> tuple[int, bytes | None]:
        """The JPEG once its version exceeds ``version``, or the current one after ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > version or self._closed, timeout)
            return self._version, self._jpeg

    def close(self) -> None:
        """Release every waiting viewer at once (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def attach(self) -> int:
        """Count a viewer in; returns the version it should wait beyond.

        While others watch, the current JPEG is up to date: a new viewer starts
        with it. Otherwise it is old and the viewer waits for a fresh render.
        """
        with self._cond:
            current = self._viewers > 0 and self._jpeg is not None
            self._viewers += 1
            return self._version - 1 if current else self._version

    def detach(self) -> None:
        with self._cond:
            self._viewers -= 1

    @property
    def viewers(self) -> int:
        with self._cond:
            return self._viewers


# --------------------------------------------------------------------------- threads


def camera_view(cam: CameraConfig) -> CameraView:
    return CameraView(name=cam.name, input_size=cam.input_size, zones=cam.zones, people_threshold=cam.thresholds.people)


def render_camera(view: CameraView, latest: Latest | None, status: Status, quality: int) -> bytes:
    """The JPEG a camera's viewers get now."""
    if latest is None:
        return overlay.encode_jpeg(overlay.render_placeholder(view, status), quality)
    return overlay.encode_jpeg(overlay.render_result(view, status, latest.result), quality)


class Renderer:
    """Keeps each watched camera's Feed up to date (see the module docstring)."""

    TICK_S = 0.25  # stale ages and rate-capped results are picked up within this

    def __init__(self, config: Config, settings: WebSettings, store: ResultStore, feeds: Mapping[str, Feed],
                 stop: threading.Event) -> None:  # fmt: skip
        self.cameras = {name: (cam, camera_view(cam)) for name, cam in config.cameras.items()}
        self.settings, self.store, self.feeds, self.stop = settings, store, feeds, stop
        self._wake = threading.Event()
        self._errors_logged: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(self.TICK_S)
            self._wake.clear()
            for name in self.cameras:
                self.update(name, time.monotonic())

    def update(self, name: str, now: float) -> bool:
        """Render ``name`` if its picture changed and someone watches; True if it did."""
        cam, view = self.cameras[name]
        feed = self.feeds[name]
        if feed.viewers == 0:
            feed.rendered_key = None  # the next viewer gets a fresh picture, not an old one
            return False
        latest = self.store.get(name)
        status = camera_status(latest, now, self.settings.stale_after(cam))
        # What the picture shows: a new result, a state change, or (stale) the age in whole seconds.
        key = (latest.serial if latest else None, status.state, int(status.age_s or 0) if status.state == STALE else None)
        if key == feed.rendered_key:
            return False
        if feed.rendered_key is not None and now - feed.rendered_at < 1.0 / self.settings.render_fps:
            return False  # rate cap: the newest result is rendered on a later tick
        try:
            jpeg = render_camera(view, latest, status, self.settings.jpeg_quality)
        except Exception:  # noqa: BLE001 - one bad result must not stop the overlay
            if name not in self._errors_logged:
                self._errors_logged.add(name)
                log.exception("cannot render the overlay of %s; showing the placeholder", name)
            jpeg = render_camera(view, None, status, self.settings.jpeg_quality)
        feed.rendered_key, feed.rendered_at = key, now
        feed.publish(jpeg)
        return True


class Receiver:
    """Reads results into the store until ``stop``; never raises on bad input."""

    def __init__(self, sock: zmq.Socket, cameras: list[str], store: ResultStore, drops: DropCounter,
                 metrics: Metrics, on_result: Callable[[], None], stop: threading.Event,
                 watch: RefusalWatch | None = None) -> None:  # fmt: skip
        self.rx: LatestReceiver[Result] = LatestReceiver(sock, _decode, cameras=cameras, on_drop=drops)
        self.store, self.metrics, self.on_result, self.stop, self.watch = store, metrics, on_result, stop, watch
        self.last_mono: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.watch is not None:
                    self.watch.heal()  # this thread owns the socket
                self.rx.drain(timeout_ms=100)
                messages = self.rx.take()
            except zmq.ContextTerminated:
                return
            except zmq.ZMQError as exc:
                log.error("results socket error: %s", exc)
                self.stop.wait(0.5)
                continue
            for msg in messages:
                self.store.put(msg)
                self.metrics.frame(STAGE, msg.camera)
            if messages:
                self.last_mono = time.monotonic()
                self.on_result()


# --------------------------------------------------------------------------- page


def _read_static() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in STATIC_DIR.iterdir() if p.is_file()}


def tile_html(cam: CameraConfig) -> str:
    """One camera's tile; figures are filled in by static/app.js from /api/results."""
    name = html.escape(validate_camera_name(cam.name))
    w, h = overlay.display_size(*cam.input_size)
    zones = "".join(
        f'<li data-zone="{html.escape(z)}"><span class="zname">{html.escape(z)}</span><span class="zval">&ndash;</span></li>'
        for z in cam.zones
    )
    return f"""
<section class="tile nodata" data-camera="{name}">
  <div class="tile-head"><h2>{name}</h2><span class="state" data-f="state">no data</span></div>
  <div class="video"><img src="/stream/{name}.mjpg" data-src="/stream/{name}.mjpg" width="{w}" height="{h + overlay.HEADER_H}"
       alt="live overlay of camera {name}"></div>
  <div class="stats">
    <div class="stat"><span class="label">people</span>
      <span class="value"><b data-f="count">&ndash;</b><small data-f="uncertainty"></small></span></div>
    <div class="stat"><span class="label">close pairs</span>
      <span class="value" data-f="close_pairs">&ndash;</span></div>
    <div class="stat"><span class="label" data-f="density_label">peak density</span>
      <span class="value" data-f="density_peak">&ndash;</span></div>
    <div class="stat"><span class="label">last result</span>
      <span class="value" data-f="age">&ndash;</span></div>
  </div>
  <ul class="zones">{zones}</ul>
  <div class="meta" data-f="meta">waiting for the first result</div>
</section>"""


def page_html(config: Config, template: str) -> bytes:
    tiles = "".join(tile_html(cam) for cam in config.cameras.values())
    return template.replace(TILES_MARKER, tiles).encode()


# --------------------------------------------------------------------------- server


def settings_from_config(config: Config, host: str | None = None, port: int | None = None) -> WebSettings:
    """The stage's settings from ``[server]``; ``host``/``port`` override it (the command line)."""
    s = config.server
    return WebSettings(
        host=host or s.web_host, port=s.web_port if port is None else port, max_streams=s.max_streams,
        request_timeout_s=s.request_timeout_s, max_connections=s.max_connections,
    )  # fmt: skip


class WebServer:
    """The whole stage: SUB socket, renderer and HTTP server. ``start()``/``stop()``
    or a context manager; port 0 picks a free port (see ``.port``)."""

    def __init__(self, config: Config, settings: WebSettings | None = None, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.settings = settings or settings_from_config(config)
        self.metrics = metrics or Metrics()
        self.store = ResultStore()
        self.feeds = {name: Feed() for name in config.cameras}
        self.drops = DropCounter(self.metrics)
        self.stop_event = threading.Event()
        self.renderer = Renderer(config, self.settings, self.store, self.feeds, self.stop_event)
        self._streams = threading.BoundedSemaphore(self.settings.max_streams)
        static = _read_static()
        self._page = page_html(config, static["index.html"].decode())
        self._static = {k: v for k, v in static.items() if Path(k).suffix in STATIC_TYPES}
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._watch: RefusalWatch | None = None
        self._receiver: Receiver | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> WebServer:
        t = self.config.transport
        endpoints = self.config.results_endpoints()  # one per inference worker
        endpoint = ", ".join(endpoints)
        self._ctx = zmq.Context()
        curve = client_curve(t)
        if curve is not None:  # at 0 from the start, so increase() sees the first refusal
            for reason in REFUSED:
                self.metrics.transport_client_refused(STAGE, "results", reason, 0)
        self._watch = RefusalWatch(lambda socket, reason: self.metrics.transport_client_refused(STAGE, socket, reason), log=log)
        try:
            self._sock = subscribe(self._ctx, endpoints, hwm=t.hwm, curve=curve, watch=self._watch)
            s = self.settings
            access = s.access if s.access is not None else Access.for_bind(s.host, self.config.server.auth_token_env)
            self._httpd = GuardedServer((s.host, s.port), self._handler_class(), access=access,
                                        limits=Limits(s.max_connections, s.request_timeout_s), on_refuse=self._refused)  # fmt: skip
        except Exception:
            self._close_zmq()
            raise
        self._receiver = Receiver(self._sock, list(self.config.cameras), self.store, self.drops, self.metrics,
                                  self.renderer.wake, self.stop_event, self._watch)  # fmt: skip
        self._threads = [
            threading.Thread(target=self._receiver.run, name="web-receiver", daemon=True),
            threading.Thread(target=self.renderer.run, name="web-renderer", daemon=True),
            threading.Thread(target=self._httpd.serve_forever, args=(0.2,), name="web-http", daemon=True),
        ]
        for th in self._threads:
            th.start()
        log.info("web overlay on %s, results from %s, cameras: %s", self.url, endpoint, ", ".join(self.config.cameras))
        return self

    def _refused(self, reason: str) -> None:
        self.metrics.http_refused(STAGE, reason)

    def stop(self) -> None:
        self.stop_event.set()
        for feed in self.feeds.values():
            feed.close()  # streaming clients see the stop at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for th in self._threads:
            th.join(timeout=5)
        self._threads = []
        self._httpd = None
        self._close_zmq()

    def _close_zmq(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- content

    def camera(self, name: str) -> CameraConfig | None:
        """The configured camera, or None; the name is validated before any use."""
        try:
            validate_camera_name(name)
        except InvalidCameraName:
            return None
        return self.config.cameras.get(name)

    def results_json(self) -> dict[str, Any]:
        now = time.monotonic()
        last = self._receiver.last_mono if self._receiver else None
        return {
            "generated_at": round(time.time(), 3),
            "received": self.store.received,
            "last_result_age_s": None if last is None else round(now - last, 2),
            "dropped": self.drops.snapshot(),
            "cameras": [camera_summary(cam, self.store.get(n), now, self.settings) for n, cam in self.config.cameras.items()],
        }

    def camera_json(self, cam: CameraConfig) -> dict[str, Any]:
        return camera_summary(cam, self.store.get(cam.name), time.monotonic(), self.settings)

    def frames(self, camera: str) -> Iterator[bytes]:
        """JPEGs for one viewer: each new render, rate-limited, with keepalive repeats.

        The first is a fresh render (waited for up to ``first_frame_wait_s``).
        Ends when the server stops.
        """
        feed = self.feeds[camera]
        s = self.settings
        version = feed.attach()
        self.renderer.wake()
        try:
            v, jpeg = feed.wait_newer(version, s.first_frame_wait_s)
            min_gap = 1.0 / s.stream_fps
            while not self.stop_event.is_set():
                if jpeg is not None:
                    sent_at = time.monotonic()
                    yield jpeg
                    version = v
                    # Rate limit per client: at most stream_fps frames, whatever the result rate.
                    if self.stop_event.wait(max(0.0, min_gap - (time.monotonic() - sent_at))):
                        return
                v, jpeg = feed.wait_newer(version, s.keepalive_s)
        finally:
            feed.detach()

    def snapshot(self, camera: str) -> bytes | None:
        feed = self.feeds[camera]
        version = feed.attach()
        self.renderer.wake()
        try:
            return feed.wait_newer(version, self.settings.first_frame_wait_s)[1]
        finally:
            feed.detach()

    # ----------------------------------------------------------------- HTTP

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        web = self

        class Handler(GuardedHandler):  # access, request deadline and socket timeout: crowdwatch/httpbase.py
            server_version = "crowdwatch-web"
            sys_version = ""

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = urlsplit(self.path).path
                try:
                    self._route(path)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the client went away; nothing to answer

            def _route(self, path: str) -> None:
                if path in ("/", "/index.html"):
                    self._reply(200, web._page, "text/html; charset=utf-8")
                elif path.startswith("/static/"):
                    name = path[len("/static/"):]
                    body = web._static.get(name)
                    if body is None:
                        self._json(404, {"error": "not found"})
                    else:
                        self._reply(200, body, STATIC_TYPES[Path(name).suffix])
                elif path == "/healthz":
                    self._json(200, {"status": "ok", "received": web.store.received})
                elif path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(200, encoder(web.metrics.registry), content_type)
                elif path == "/api/results":
                    self._json(200, web.results_json())
                elif path.startswith("/api/results/"):
                    cam = web.camera(path[len("/api/results/"):])
                    self._json(*((200, web.camera_json(cam)) if cam else (404, {"error": "unknown camera"})))
                elif path.startswith("/stream/") and path.endswith(".mjpg"):
                    self._stream(path[len("/stream/"):-len(".mjpg")])
                elif path.startswith("/snapshot/") and path.endswith(".jpg"):
                    cam = web.camera(path[len("/snapshot/"):-len(".jpg")])
                    jpeg = web.snapshot(cam.name) if cam else None
                    if jpeg is None:
                        self._json(404 if cam is None else 503, {"error": "unknown camera" if cam is None else "no image yet"})
                    else:
                        self._reply(200, jpeg, "image/jpeg")
                else:
                    self._json(404, {"error": "not found"})

            def _stream(self, name: str) -> None:
                cam = web.camera(name)
                if cam is None:
                    self._json(404, {"error": "unknown camera"})
                    return
                if not web._streams.acquire(blocking=False):
                    web._refused("too_many_streams")
                    self.close_connection = True
                    self._json(503, {"error": "too many streams"}, {"Retry-After": "5", "Connection": "close"})
                    return
                try:
                    # A small send buffer: a slow client's frames cannot pile up seconds
                    # deep in the kernel, and a stuck one hits the timeout soon.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self._common_headers()
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    self.wfile.write(f"--{BOUNDARY}\r\n".encode())
                    with contextlib.closing(web.frames(cam.name)) as frames:
                        self._write_parts(frames)
                finally:
                    web._streams.release()

            def _write_parts(self, frames: Iterator[bytes]) -> None:
                for jpeg in frames:
                    # The next boundary goes right after the part, so the browser
                    # shows the frame now rather than when the next one arrives.
                    self.wfile.write(f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode())
                    self.wfile.write(jpeg)
                    self.wfile.write(f"\r\n--{BOUNDARY}\r\n".encode())

            def _common_headers(self) -> None:
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", CSP)
                self.send_header("Referrer-Policy", "no-referrer")

            def _reply(self, code: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self._common_headers()
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: object, headers: Mapping[str, str] | None = None) -> None:
                self._reply(code, json.dumps(obj, allow_nan=False).encode(), "application/json", headers)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("%s %s", self.address_string(), format % args)

        return Handler


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch web", description="Live overlay (MJPEG), camera page and JSON API.")
    p.add_argument("--config", default="config.toml", help="config file (default: %(default)s)")
    p.add_argument("--host", help="listen address (default: server.web_host from the config, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: server.web_port from the config; 0 picks one)")
    p.add_argument("--log-level", default=None, type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: $CROWDWATCH_LOG_LEVEL, else [log] level")
    p.add_argument("--log-format", default=None, choices=["auto", "json", "text"],
                   help="default: $CROWDWATCH_LOG_FORMAT, else [log] format (auto: json unless stdout is a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_stage_config("crowdwatch web", args.config, args.log_level, args.log_format)
    if config is None:
        return 2  # an invalid config (usage error): crowdwatch run does not restart it either
    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"crowdwatch web: --port must be in [0, 65535], found {args.port}", file=sys.stderr)
        return 2
    settings = settings_from_config(config, host=args.host, port=args.port)
    stop = threading.Event()

    previous = stop_on_signals(stop, lambda signum: log.info("%s received, shutting down", signal.Signals(signum).name))
    try:
        try:
            server = WebServer(config, settings).start()
        except (OSError, ValueError, zmq.ZMQError) as exc:
            print(f"crowdwatch web: cannot start on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
            # a port in use or an address that is not ours will not change by itself
            return EXIT_FATAL if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) else 1
        heartbeat = Heartbeat.from_env()  # crowdwatch run replaces a web stage that stops beating
        try:
            while not stop.wait(1.0):
                heartbeat.beat()
        finally:
            server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
