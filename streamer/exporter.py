"""Prometheus exporter: the ``crowd_*`` metrics of DESIGN.md and a tiny HTTP server.

Stages never touch metric objects: they call the :class:`Metrics` facade
(``observe``, ``drop``, ``camera_up``, ...). Each facade owns a dedicated
CollectorRegistry, so tests and several stages in one process do not collide.
:class:`MetricsServer` serves ``/metrics``, ``/healthz`` (the process is alive)
and ``/readyz`` (200 once the stage calls ``set_ready(True)``, else 503), bound
to 127.0.0.1 unless told otherwise.

Names, units and alert usage are documented in docs/METRICS.md.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from crowdwatch.config.names import validate_camera_name
from crowdwatch.handshake import REFUSED
from crowdwatch.httpbase import REFUSALS, Access, GuardedHandler, GuardedServer, Limits
from crowdwatch.result import Result
from crowdwatch.wire import ADAPTATION_RESULTS, IGNORED, AdaptationRun

_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _ThresholdSettings(Protocol):
    people: float
    density_per_m2: float
    close_pairs: float
    area_over_density_ratio: float
    uncertainty: float
    latency_p95_s: float
    stall_s: float


class _AdaptSettings(Protocol):
    enabled: bool
    max_age_s: float
    max_failures_per_day: int


class _CameraSettings(Protocol):
    name: str
    thresholds: _ThresholdSettings
    adapt: _AdaptSettings


def _label(value: str, what: str) -> str:
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise ValueError(f"{what} label must match {_LABEL_RE.pattern}, found {value!r}")
    return value


def _num(value: float | None) -> float:
    # None ("not available") is exported as NaN: alert comparisons with NaN are false
    # and no stale value lingers.
    return math.nan if value is None else float(value)


class Metrics:
    """Typed facade over every crowdwatch metric, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
        cam = ["camera"]

        # Crowd figures, per camera.
        self.people = Gauge("crowd_people", "Estimated number of people in view", cam, registry=r)
        self.people_truth = Gauge("crowd_people_truth", "True number of people (synthetic cameras only)", cam, registry=r)
        self.zone_people = Gauge("crowd_zone_people", "Estimated number of people in a zone", cam + ["zone"], registry=r)
        self.uncertainty = Gauge("crowd_count_uncertainty", "Std of the count across the ensemble masks (people)", cam, registry=r)
        self.density_peak = Gauge(
            "crowd_density_peak_per_m2", "Peak local density, people per m^2 (per px^2 when uncalibrated)", cam, registry=r
        )
        self.close_pairs = Gauge(
            "crowd_close_pairs", "Expected pairs of people closer than the distancing distance", cam, registry=r
        )
        self.area_ratio = Gauge(
            "crowd_area_over_density_ratio", "Fraction of the ground area above the density threshold", cam, registry=r
        )
        self.calibrated = Gauge("crowd_calibrated", "1 if the camera has a ground-plane calibration", cam, registry=r)
        self.last_frame = Gauge(
            "crowd_last_frame_timestamp_seconds", "Unix time of the last frame with metrics", cam, registry=r
        )

        # Thresholds as gauges, so alert rules join on(camera) instead of hard-coding numbers.
        self.th_people = Gauge("crowd_people_threshold", "Configured people threshold", cam, registry=r)
        self.th_density = Gauge("crowd_density_threshold_per_m2", "Configured density threshold", cam, registry=r)
        self.th_pairs = Gauge("crowd_close_pairs_threshold", "Configured close-pairs threshold", cam, registry=r)
        self.th_area = Gauge(
            "crowd_area_over_density_ratio_threshold", "Configured area-over-density ratio threshold", cam, registry=r
        )
        self.th_uncertainty = Gauge("crowd_uncertainty_threshold", "Configured count-uncertainty threshold", cam, registry=r)
        self.th_latency = Gauge(
            "crowd_frame_latency_threshold_seconds", "Configured p95 frame latency threshold", cam, registry=r
        )
        self.th_stall = Gauge(
            "crowd_camera_stall_threshold_seconds", "Seconds without a frame before a camera counts as stalled", cam, registry=r
        )
        self.th_adapt_age = Gauge(
            "crowd_adaptation_max_age_seconds", "Maximum age of the last successful adaptation", cam, registry=r
        )
        self.th_adapt_failures = Gauge(
            "crowd_adaptation_failures_threshold", "Failed adaptation runs per day tolerated before alerting", cam, registry=r
        )

        # Pipeline.
        self.frames = Counter("crowd_frames", "Frames handled", cam + ["stage"], registry=r)
        self.dropped = Counter("crowd_frames_dropped", "Frames dropped", cam + ["stage", "reason"], registry=r)
        self.up = Gauge("crowd_camera_up", "1 while the camera source delivers frames", cam, registry=r)
        self.reconnects = Counter("crowd_camera_reconnects", "Camera source reconnects", cam, registry=r)
        self.http_refusals = Counter(
            "crowd_http_refused", "HTTP requests or connections refused (crowdwatch/httpbase.py)", ["stage", "reason"], registry=r
        )
        self.transport_refusals = Counter(
            "crowd_transport_refused", "ZeroMQ connections a CURVE server refused (crowdwatch.handshake.REFUSED)", ["stage", "socket", "reason"], registry=r
        )
        self.client_refusals = Counter(
            "crowd_transport_client_refused", "This stage's ZeroMQ connections that the CURVE server refused (crowdwatch.handshake.REFUSED)",
            ["stage", "socket", "reason"], registry=r,
        )
        self.ignored = Counter(
            "crowd_wire_ignored", "Parts of received messages discarded while the message was kept", cam + ["stage", "what"], registry=r
        )
        self.inference = Histogram(
            "crowd_inference_seconds", "Model run time per batch", registry=r, buckets=INFERENCE_BUCKETS
        )
        self.batch = Histogram("crowd_batch_size", "Frames per inference batch", registry=r, buckets=BATCH_BUCKETS)
        self.latency = Histogram(
            "crowd_frame_latency_seconds", "Capture to metrics latency", cam, registry=r, buckets=LATENCY_BUCKETS
        )
        self.model = Gauge("crowd_model_info", "Model version serving the camera (value 1)", cam + ["version"], registry=r)
        self.model_load_failures = Counter(
            "crowd_model_load_failures", "Failed loads of a model version for the camera", cam, registry=r
        )
        self.model_fallback = Gauge(
            "crowd_model_fallback", "1 while the camera is served by a fallback (last good or base) instead of its current version", cam, registry=r
        )
        self._versions: dict[str, str] = {}

        # Adaptation.
        self.adapt_runs = Counter("crowd_adaptation_runs", "Adaptation runs by result", cam + ["result"], registry=r)
        self.adapt_success = Gauge(
            "crowd_adaptation_last_success_timestamp_seconds", "Unix time of the last successful adaptation", cam, registry=r
        )
        self.buffer = Gauge("crowd_buffer_frames", "Frames in the adaptation buffer", cam, registry=r)
        self.buffer_failures = Counter(
            "crowd_buffer_write_failures", "Frames the adaptation buffer could not store (disk full, write error)", cam + ["reason"], registry=r
        )
        self._lock = threading.Lock()
        # Per-camera crowd figures: exported only while the camera is up (see camera_up).
        self._crowd = (self.people, self.people_truth, self.uncertainty, self.density_peak, self.close_pairs, self.area_ratio)
        self._zones: dict[str, set[str]] = {}

    # ----------------------------------------------------------------- per camera setup

    def configure_camera(self, camera: _CameraSettings, *, stages: Iterable[str] = ()) -> None:
        """Export a camera's thresholds and create its counters at 0.

        Counters must exist before their first increment, or ``increase()`` in
        the alert rules misses it. Call from one stage only (the infer stage):
        the rules tolerate duplicates, but one source of truth is clearer.
        """
        name = validate_camera_name(camera.name)
        th = camera.thresholds
        self.th_people.labels(name).set(th.people)
        self.th_density.labels(name).set(th.density_per_m2)
        self.th_pairs.labels(name).set(th.close_pairs)
        self.th_area.labels(name).set(th.area_over_density_ratio)
        self.th_uncertainty.labels(name).set(th.uncertainty)
        self.th_latency.labels(name).set(th.latency_p95_s)
        self.th_stall.labels(name).set(th.stall_s)
        if camera.adapt.enabled:
            self.th_adapt_age.labels(name).set(camera.adapt.max_age_s)
            self.th_adapt_failures.labels(name).set(camera.adapt.max_failures_per_day)
            for result in ADAPTATION_RESULTS:
                self.adapt_runs.labels(name, result)
        else:
            # No schedule, no staleness or failure alerts for this camera.
            for gauge in (self.th_adapt_age, self.th_adapt_failures):
                try:
                    gauge.remove(name)
                except KeyError:
                    pass
        self.reconnects.labels(name)
        for stage in stages:
            self.frames.labels(name, _label(stage, "stage"))
            for what in IGNORED:
                self.ignored.labels(name, stage, what)

    # ----------------------------------------------------------------- crowd figures

    def observe(self, result: Result, *, now: float | None = None) -> None:
        """Publish one frame's figures and its latency (capture to now)."""
        name = validate_camera_name(result.camera)
        m = result.figures
        now = time.time() if now is None else now
        self.people.labels(name).set(m.count)
        with self._lock:
            self._zones.setdefault(name, set()).update(m.zones)
        for zone, value in m.zones.items():
            self.zone_people.labels(name, zone).set(value)
        self.uncertainty.labels(name).set(_num(m.uncertainty))
        self.density_peak.labels(name).set(m.density_peak_per_m2)
        self.close_pairs.labels(name).set(m.close_pairs)
        self.area_ratio.labels(name).set(m.area_over_density_ratio)
        self.calibrated.labels(name).set(1 if m.calibrated else 0)
        if result.truth is not None:
            self.people_truth.labels(name).set(result.truth)
        self.latency.labels(name).observe(max(0.0, now - result.capture_ns / 1e9))
        self.last_frame.labels(name).set(now)

    # ----------------------------------------------------------------- pipeline

    def frame(self, stage: str, camera: str, n: int = 1) -> None:
        self.frames.labels(validate_camera_name(camera), _label(stage, "stage")).inc(n)

    def drop(self, stage: str, reason: str, camera: str | None = None, n: int = 1) -> None:
        """Count a dropped frame; ``camera`` None (unknown or invalid) exports an empty label."""
        cam = "" if camera is None else validate_camera_name(camera)
        self.dropped.labels(cam, _label(stage, "stage"), _label(reason, "reason")).inc(n)

    def camera_up(self, camera: str, up: bool) -> None:
        """The camera delivers frames (1) or is down or stale (0).

        Going down also removes the camera's crowd figures (``forget_crowd``):
        a down camera exports no count, so no crowd alert can fire on its last
        value; the next ``observe`` brings them back.
        """
        name = validate_camera_name(camera)
        self.up.labels(name).set(1 if up else 0)
        if not up:
            self.forget_crowd(name)

    def forget_crowd(self, camera: str) -> None:
        """Remove the camera's crowd figures (people, truth, zones, uncertainty, density, pairs, area).

        ``crowd_calibrated``, ``crowd_last_frame_timestamp_seconds`` (the
        staleness rule needs it), thresholds and counters stay.
        """
        name = validate_camera_name(camera)
        with self._lock:
            zones = self._zones.pop(name, set())
            for gauge in self._crowd:
                try:
                    gauge.remove(name)
                except KeyError:
                    pass
            for zone in zones:
                try:
                    self.zone_people.remove(name, zone)
                except KeyError:
                    pass

    def camera_reconnect(self, camera: str, n: int = 1) -> None:
        self.reconnects.labels(validate_camera_name(camera)).inc(n)

    def http_refused(self, stage: str, reason: str) -> None:
        """Count a refused HTTP request or connection (``crowdwatch.httpbase.REFUSALS``)."""
        if reason not in REFUSALS:
            raise ValueError(f"reason must be one of {REFUSALS}, found {reason!r}")
        self.http_refusals.labels(_label(stage, "stage"), reason).inc()

    def transport_refused(self, stage: str, socket: str, reason: str, n: int = 1) -> None:
        """Count a connection refused by a CURVE server (``crowdwatch.handshake.REFUSED``); n=0 creates the series."""
        self._refusal(self.transport_refusals, stage, socket, reason, n)

    def transport_client_refused(self, stage: str, socket: str, reason: str, n: int = 1) -> None:
        """Count a connection of this stage (a CURVE client) that its server refused; n=0 creates the series."""
        self._refusal(self.client_refusals, stage, socket, reason, n)

    @staticmethod
    def _refusal(counter: Counter, stage: str, socket: str, reason: str, n: int) -> None:
        if reason not in REFUSED:
            raise ValueError(f"reason must be one of {REFUSED}, found {reason!r}")
        counter.labels(_label(stage, "stage"), _label(socket, "socket"), reason).inc(n)

    def wire_ignored(self, stage: str, what: str, camera: str) -> None:
        """Count a discarded part of a kept message (``crowdwatch.wire.IGNORED``: unknown or clamped stats, truth)."""
        if what not in IGNORED:
            raise ValueError(f"what must be one of {IGNORED}, found {what!r}")
        self.ignored.labels(validate_camera_name(camera), _label(stage, "stage"), what).inc()

    def observe_inference(self, seconds: float, batch_size: int) -> None:
        self.inference.observe(seconds)
        self.batch.observe(batch_size)

    def observe_latency(self, camera: str, seconds: float) -> None:
        self.latency.labels(validate_camera_name(camera)).observe(max(0.0, seconds))

    def model_version(self, camera: str, version: str) -> None:
        """The camera is now served by ``version`` (the previous version's series goes)."""
        name = validate_camera_name(camera)
        if not isinstance(version, str) or not version or len(version) > 128:
            raise ValueError(f"bad model version {version!r}")
        with self._lock:
            old = self._versions.get(name)
            if old is not None and old != version:
                self.model.remove(name, old)
            self._versions[name] = version
            self.model.labels(name, version).set(1)

    def model_load_failure(self, camera: str) -> None:
        """One failed load of a model version for ``camera``."""
        self.model_load_failures.labels(validate_camera_name(camera)).inc()

    def model_fallback_state(self, camera: str, fallback: bool) -> None:
        """Whether ``camera`` is served by a fallback model instead of its ``current`` one."""
        name = validate_camera_name(camera)
        self.model_load_failures.labels(name)  # starts at 0, so increase() sees the first failure
        self.model_fallback.labels(name).set(1 if fallback else 0)

    # ----------------------------------------------------------------- adaptation

    def adaptation_run(self, run: AdaptationRun) -> None:
        """Count a finished adaptation run; ``succeeded`` also stamps the last success."""
        name = validate_camera_name(run.camera)
        if run.result not in ADAPTATION_RESULTS:
            raise ValueError(f"adaptation result must be one of {ADAPTATION_RESULTS}, found {run.result!r}")
        self.adapt_runs.labels(name, run.result).inc()
        if run.result == "succeeded":
            self.adapt_success.labels(name).set(run.time)

    def buffer_frames(self, camera: str, n: int) -> None:
        self.buffer.labels(validate_camera_name(camera)).set(n)

    def buffer_write_failure(self, camera: str, reason: str, n: int = 1) -> None:
        """Count frames the buffer could not store (``adapt.store.buffer.WRITE_FAILURES``); n=0 creates the series."""
        self.buffer_failures.labels(validate_camera_name(camera), _label(reason, "reason")).inc(n)


# --------------------------------------------------------------------------- HTTP server


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one small threaded HTTP server.

    Port 0 picks a free port (see ``.port``). Use as a context manager or call
    ``start()``/``stop()``.

    Liveness: once a worker loop calls :meth:`beat`, ``/healthz`` answers 503
    when no beat came for ``liveness_timeout_s``, so an orchestrator restarts a
    process whose HTTP thread is fine but whose loop is stuck (a hung decoder or
    provider call). Before the first beat (model loading) it answers 200.
    """

    def __init__(self, registry: Metrics | CollectorRegistry, host: str = "127.0.0.1", port: int = 9108,
                 liveness_timeout_s: float | None = None, *, access: Access | None = None, limits: Limits | None = None,
                 stage: str = "infer") -> None:  # fmt: skip
        self.registry = registry.registry if isinstance(registry, Metrics) else registry
        self._metrics = registry if isinstance(registry, Metrics) else None
        self.access = access if access is not None else Access.for_bind(host)
        self.limits = limits or Limits()
        self.stage = stage
        self.host, self._port = host, port
        self.liveness_timeout_s = liveness_timeout_s
        self._last_beat: float | None = None
        self._ready = threading.Event()
        self._httpd: GuardedServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set_ready(self, ready: bool = True) -> None:
        (self._ready.set if ready else self._ready.clear)()

    def beat(self) -> None:
        """The worker loop finished a cycle."""
        self._last_beat = time.monotonic()

    def stalled_for(self) -> float | None:
        """Seconds since the last beat when that exceeds the liveness timeout, else None."""
        if self._last_beat is None or self.liveness_timeout_s is None:
            return None
        age = time.monotonic() - self._last_beat
        return age if age > self.liveness_timeout_s else None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        if self._httpd is not None:
            return self
        server = self

        class Handler(GuardedHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(200, encoder(server.registry), content_type)
                elif path == "/healthz":
                    stalled = server.stalled_for()
                    if stalled is None:
                        self._reply(200, b"ok\n")
                    else:
                        self._reply(503, f"stalled: no loop progress for {stalled:.0f} s\n".encode())
                elif path == "/readyz":
                    ok = server.ready
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # scrapes every 15 s would flood the logs

        metrics = self._metrics
        on_refuse = (lambda reason: metrics.http_refused(self.stage, reason)) if metrics is not None else None
        httpd = GuardedServer((self.host, self._port), Handler, access=self.access, limits=self.limits, on_refuse=on_refuse)
        self._httpd = httpd
        # A short poll interval keeps stop() quick.
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
