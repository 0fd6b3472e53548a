"""The inference stage (``crowdwatch infer``).

    frames PULL ─▶ newest per camera ─▶ dynamic batches ─▶ backend (per-camera model)
      ─▶ crowd metrics ─▶ Prometheus ─▶ results PUB (web overlay, scheduler) ─▶ frame tap (adapter buffer)

The same PULL socket receives the finished adaptation runs (``crowdwatch.wire.AdaptationRun``,
sent by whoever records one: ``crowdwatch adapt --record`` or the scheduler), which
become ``crowd_adaptation_runs_total``; the runs recorded before the stage started
are read from ``runs.jsonl`` once, at start.

Batching follows Triton's ``max_queue_delay``: once a frame is pending, wait at
most ``max_wait_ms`` for more (up to ``max_batch``), then run. Frames of one
model and one size share a batch. Models come from the registry and are
hot-swapped when a camera's ``current`` pointer changes: the new model loads
beside the old one, which keeps serving until the switch, so no frame is lost.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import zmq

from crowdwatch import logs
from crowdwatch.config import CameraConfig, Config, load_stage_config
from crowdwatch.fit import Fit
from crowdwatch.geometry import point_outside
from crowdwatch.handshake import REFUSED
from crowdwatch.httpbase import Access, AccessError, Limits
from crowdwatch.result import Result
from crowdwatch.wire import (
    AdaptationRun,
    CurveServer,
    FrameMessage,
    LatestReceiver,
    bounded_stats,
    decode_inbound,
    encode_result,
    open_socket,
    send_parts,
    server_curve,
)
from streamer.backends import Backend, load_backend
from streamer.crowd_metrics import CameraGeometry, compute_metrics
from streamer.exporter import Metrics, MetricsServer
from streamer.heartbeat import EXIT_FATAL, Heartbeat
from streamer.shutdown import stop_on_signals

log = logging.getLogger("crowdwatch.infer")


STAGE = "infer"
RETRY_INITIAL_S = 2.0    # a failed model load is retried after this long, doubling ...
RETRY_MAX_S = 300.0      # ... up to this


# --------------------------------------------------------------------------- models


@dataclass
class _Loaded:
    key: str                 # registry path of the version: cameras on the same version share it
    backend: Backend


class ModelUnavailable(RuntimeError):
    """No model at all can serve a camera (not its current, not its last good, not base)."""


class ModelPool:
    """Per-camera models from the registry, hot-swapped on pointer changes.

    At start, a camera whose ``current`` cannot be resolved or loaded is served
    by its last good version (its serving record, ``adapt/store/serving.py``),
    else by the base model, with a log line, ``on_failure(camera)`` and
    ``fallback[camera] = True``; every other camera is unaffected. Only a camera
    that nothing can serve raises (``ModelUnavailable``, or ``RegistryError``
    when there is no base model at all).
    """

    def __init__(self, registry_root: Path, cameras: list[str], backend: str, providers, torch_device: str, poll_s: float = 2.0,
                 var: Path | None = None, on_failure=lambda camera: None):
        from adapt.store.registry import Registry

        self.registry = Registry(registry_root)
        self.kind, self.providers, self.torch_device, self.poll_s = backend, providers, torch_device, poll_s
        self.cameras = cameras
        self.var, self.on_failure = var, on_failure
        self._by_key: dict[str, Backend] = {}
        self._camera_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_poll = 0.0
        self.swaps = 0
        self.fallback: dict[str, bool] = {}
        self._retry: dict[str, tuple[str, float, float]] = {}  # camera -> (failed target, next try, delay)
        self.errors: dict[str, str | None] = {}
        for cam in cameras:
            self._start(cam)

    def _start(self, camera: str) -> None:
        """Serve ``camera`` by its current version, else its last good one, else base."""
        from adapt.store.registry import BASE, ModelVersion, RegistryError
        from adapt.store.serving import read_serving

        target = None
        try:
            mv = self.registry.resolve(camera)
            target = str(mv.path)
            self._assign(camera, self._load(mv.path), mv)
            return
        except Exception as exc:  # a corrupt pointer or model of one camera must not stop the others
            error = f"{type(exc).__name__}: {exc}"
            self.on_failure(camera)
            # refresh() retries this target after a backoff, not on its first poll
            self._retry[camera] = (target or f"unresolved: {exc}", time.monotonic() + RETRY_INITIAL_S, RETRY_INITIAL_S)
        candidates: list[ModelVersion] = []
        rec = read_serving(self.var, camera) if self.var is not None else None
        if rec is not None:
            candidates.append(ModelVersion(str(rec.get("model") or camera), rec["version"], Path(rec["path"])))
        try:
            candidates.append(self.registry.resolve(BASE))
        except RegistryError as exc:
            if not candidates:
                raise RegistryError(str(exc) if str(exc) in error else f"{camera}: {error}; and {exc}") from None
        for mv in candidates:
            try:
                loaded = self._load(mv.path)
            except Exception as exc:
                log.error("%s: fallback %s/%s failed to load too: %s", camera, mv.camera, mv.version, exc)
                self.on_failure(camera)
                continue
            logs.event(log, "model_swap_failed", "%s: its current model cannot be used (%s); serving %s/%s instead",
                       camera, error, mv.camera, mv.version, camera=camera, level=logging.ERROR)
            self._assign(camera, loaded, mv, fallback=True, error=error)
            return
        raise ModelUnavailable(f"{camera}: no model can serve it: {error}")

    def _load(self, version_dir: Path) -> _Loaded:
        key = str(version_dir)
        with self._lock:
            if key in self._by_key:
                return _Loaded(key, self._by_key[key])
        backend = load_backend(self.kind, version_dir, self.providers, self.torch_device)
        with self._lock:
            self._by_key.setdefault(key, backend)
        return _Loaded(key, self._by_key[key])

    def _assign(self, camera: str, loaded: _Loaded, mv=None, fallback: bool = False, error: str | None = None) -> None:
        with self._lock:
            old = self._camera_key.get(camera)
            self._camera_key[camera] = loaded.key
            if old is not None and old != loaded.key:
                self.swaps += 1
                logs.event(log, "model_swap", "%s: now served by %s (was %s)", camera, loaded.key, old, camera=camera)
            # drop backends nobody uses any more
            used = set(self._camera_key.values())
            for k in [k for k in self._by_key if k not in used]:
                del self._by_key[k]
        self.fallback[camera], self.errors[camera] = fallback, error
        self._record(camera, loaded.key, mv, fallback, error)

    def _record(self, camera: str, key: str, mv, fallback: bool, error: str | None) -> None:
        """Write the camera's serving record (what ``models list`` shows; the last good version after a restart)."""
        if self.var is None:
            return
        from adapt.store.serving import write_serving

        path = Path(key)
        model, version = (mv.camera, mv.version) if mv is not None else (path.parent.name, path.name)
        try:
            write_serving(self.var, camera, model, version, path, fallback=fallback, error=error)
        except OSError as exc:
            log.warning("%s: cannot write its serving record: %s", camera, exc)

    def backend(self, camera: str) -> tuple[str, Backend]:
        with self._lock:
            key = self._camera_key[camera]
            return key, self._by_key[key]

    def refresh(self, now: float | None = None) -> list[str]:
        """Re-resolve every camera (cheap: a few stat/read calls); load what changed.

        A model that fails to load is logged and skipped: the camera keeps its
        working model. The same failing target is retried with an exponential
        backoff (``poll_s`` doubling to ``RETRY_MAX_S``), one log line and one
        ``on_failure`` per try; a new target is tried at once. Returns the
        cameras that switched.
        """
        now = time.monotonic() if now is None else now
        if now - self._last_poll < self.poll_s:
            return []
        self._last_poll = now
        switched = []
        for cam in self.cameras:
            try:
                mv = self.registry.resolve(cam)
                target = str(mv.path)
            except Exception as exc:  # a dangling or corrupt pointer
                mv, target, error = None, f"unresolved: {exc}", exc
            else:
                error = None
            if error is None and target == self._camera_key.get(cam):
                self._retry.pop(cam, None)
                if self.fallback.get(cam):  # back on its own pointer's version
                    self._assign(cam, _Loaded(target, self.backend(cam)[1]), mv)
                    switched.append(cam)
                continue
            failed = self._retry.get(cam)
            if failed is not None and failed[0] == target and now < failed[1]:
                continue  # backing off this target
            try:
                if error is not None:
                    raise error
                self._assign(cam, self._load(Path(target)), mv)
                self._retry.pop(cam, None)
                switched.append(cam)
            except Exception as exc:  # a bad new version must never take the stage down
                delay = min(failed[2] * 2, RETRY_MAX_S) if failed is not None and failed[0] == target else max(self.poll_s, RETRY_INITIAL_S)
                self._retry[cam] = (target, now + delay, delay)
                self.on_failure(cam)
                logs.event(log, "model_swap_failed", "%s: keeping the current model; the new one failed to load (next try in %.0f s): %s",
                           cam, delay, exc, camera=cam, level=logging.ERROR)
        return switched


# --------------------------------------------------------------------------- batching


def group_batches(frames: list[FrameMessage], model_key, max_batch: int) -> list[list[FrameMessage]]:
    """Split frames into batches of one model and one image size, at most ``max_batch`` each."""
    groups: dict[tuple, list[FrameMessage]] = {}
    for f in frames:
        groups.setdefault((model_key(f.camera), f.image.shape), []).append(f)
    out = []
    for g in groups.values():
        out += [g[i : i + max_batch] for i in range(0, len(g), max_batch)]
    return out


def collect(receiver: LatestReceiver, max_batch: int, max_wait_s: float, idle_timeout_ms: int = 200) -> list[FrameMessage]:
    """Wait for a first frame, then up to ``max_wait_s`` more to fill a batch."""
    receiver.drain(timeout_ms=idle_timeout_ms)
    if not len(receiver):
        return []
    deadline = time.monotonic() + max_wait_s
    while len(receiver) < max_batch:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        receiver.drain(timeout_ms=max(1, int(left * 1000)))
    return receiver.take()


# --------------------------------------------------------------------------- the stage


@dataclass
class CameraState:
    geometry: dict[Fit, CameraGeometry] = field(default_factory=dict)
    last_frame: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)   # last cumulative source counters seen
    up: bool = False
    counting: bool = False  # a result since it came up (the first_result line is said once per up)


class InferStage:
    def __init__(self, config: Config, metrics: Metrics, ctx: zmq.Context | None = None, shard: int = 0):
        self.config, self.metrics = config, metrics
        self.ctx = ctx or zmq.Context.instance()
        self.cameras = config.shard_cameras(shard)  # this worker's cameras (docs/DEPLOY.md, Scale-out)
        m = config.model
        self.pool = ModelPool(Path(m.registry), self.cameras, m.backend, m.providers, m.torch_device,
                              var=config.paths.var, on_failure=metrics.model_load_failure)
        self.state = {c: CameraState() for c in self.cameras}
        t = config.transport
        # CURVE (the default for tcp://): a ZAP handler admits the allow-listed client keys only, started before
        # the sockets bind; every refused connection counts in crowd_transport_refused_total
        server = server_curve(t)
        curve, self.auth = (server[0], self._curve_server(server[1])) if server is not None else (None, None)
        try:
            self.frames = open_socket(self.ctx, "pull", config.endpoint("frames_bind", shard), bind=True,
                                      hwm=t.hwm * max(1, len(self.cameras)), curve=curve)
            self.results = open_socket(self.ctx, "pub", config.endpoint("results_bind", shard), bind=True, hwm=t.hwm * 4, curve=curve)
        except Exception:
            if self.auth is not None:
                self.auth.stop()
            raise
        if self.auth is not None:
            self.auth.watch(self.frames, "frames")
            self.auth.watch(self.results, "results")
            self.auth.start()
        # a frame bigger than its camera's model box is dropped before it is decoded
        boxes = {name: (cam.width, cam.height) for name, cam in config.cameras.items()}
        self.receiver = LatestReceiver(
            self.frames, lambda parts: decode_inbound(parts, max_size=boxes.get),
            cameras=self.cameras, max_age_s=t.max_frame_age_s, on_drop=self._dropped, on_event=self._adaptation_run,
        )
        self.buffers = self._open_buffers()
        for cam in self.cameras:
            metrics.configure_camera(config.cameras[cam], stages=(STAGE,))
            metrics.camera_up(cam, False)
            metrics.model_version(cam, self.pool.backend(cam)[1].version)
            metrics.model_fallback_state(cam, self.pool.fallback.get(cam, False))
        self._adapt_seen: dict[str, float] = {}  # camera -> time of the newest run exported
        self._restore_adaptation_runs()
        self.stop_event = threading.Event()

    def _curve_server(self, allowed: frozenset[bytes]) -> CurveServer:
        for socket in ("frames", "results"):
            for reason in REFUSED:  # at 0 from the start, so increase() sees the first refusal
                self.metrics.transport_refused(STAGE, socket, reason, 0)
        return CurveServer(self.ctx, allowed, lambda socket, reason: self.metrics.transport_refused(STAGE, socket, reason), log=log)

    def _restore_adaptation_runs(self) -> None:
        """Export the runs recorded before this start (var/adapt/<camera>/runs.jsonl), once."""
        from adapt.store.runs import read_runs

        for cam in self.cameras:
            for rec in read_runs(self.config.paths.var, cam):
                try:
                    run = msgspec.convert({"camera": cam, "time": rec["time"], "result": rec["result"]}, AdaptationRun)
                except msgspec.ValidationError as exc:
                    log.warning("%s: an adaptation record is not exported: %s", cam, exc)
                    continue
                self.metrics.adaptation_run(run)
                self._adapt_seen[cam] = max(run.time, self._adapt_seen.get(cam, run.time))

    def _adaptation_run(self, run: AdaptationRun) -> None:
        """A run finished (an event on the frames socket): counted once, even if it was read at start too."""
        if run.time <= self._adapt_seen.get(run.camera, -1.0):
            return  # announced while this stage was starting, after it had read the record
        self._adapt_seen[run.camera] = run.time
        self.metrics.adaptation_run(run)

    def _open_buffers(self) -> dict:
        from adapt.store.buffer import WRITE_FAILURES, FrameBuffer

        for name in self.cameras:
            for reason in WRITE_FAILURES:  # at 0 from the start, so increase() sees the first failure
                self.metrics.buffer_write_failure(name, reason, 0)
        # only this worker's cameras: another worker owns the others' buffers
        return {name: FrameBuffer(self.config.paths.var / "buffer", name, self.config.cameras[name].buffer) for name in self.cameras}

    def _dropped(self, reason: str, camera: str | None) -> None:
        self.metrics.drop(STAGE, reason, camera)

    def _geometry(self, camera: str, fit: Fit) -> CameraGeometry:
        st = self.state[camera]
        if fit not in st.geometry:
            cam = self.config.cameras[camera]
            st.geometry[fit] = CameraGeometry.for_camera(cam, fit)
            self._check_zones(cam, (fit.src_w, fit.src_h))
        return st.geometry[fit]

    @staticmethod
    def _check_zones(cam: CameraConfig, size: tuple[int, int]) -> None:
        """A zone beyond the frame counts only its inside part: say so once per frame size (the config
        checks zones at load only where it knows the size, synthetic cameras)."""
        for zone, pts in cam.zones.items():
            i = point_outside(pts, size)
            if i is not None:
                logs.event(log, "zone_outside_frame", "%s: zone %s has point %s outside the camera's %dx%d frame; "
                           "only its part inside is counted", cam.name, zone, list(pts[i]), *size, camera=cam.name, level=logging.WARNING)  # fmt: skip

    def _source_stats(self, msg: FrameMessage) -> FrameMessage:
        """Export the frame's in-band counters; returns the frame as it may be used.

        The wire keeps only the known counters, clamped (``wire.STATS_LIMITS``), so
        the ``reason`` labels below are a fixed set; what it discarded is counted.
        ``truth`` is believed from synthetic cameras only: any other camera's is
        dropped and counted.
        """
        st = self.state[msg.camera]
        if not st.up:
            st.up = True
            self.metrics.camera_up(msg.camera, True)
            logs.event(log, "camera_up", "%s: frames are arriving", msg.camera, camera=msg.camera)
        stats, ignored = bounded_stats(msg.stats)
        for what in ignored:
            self.metrics.wire_ignored(STAGE, what, msg.camera)
        for key, value in (stats or {}).items():
            delta = value - st.stats.get(key, 0)
            if delta < 0:  # ingest restarted: counters start again from zero
                delta = value
            if delta:
                if key == "reconnects":
                    self.metrics.camera_reconnect(msg.camera, delta)
                elif key.startswith("dropped_"):
                    self.metrics.drop("ingest", key[len("dropped_"):], msg.camera, n=delta)
            st.stats[key] = value
        if msg.truth is not None and self.config.cameras[msg.camera].source_kind != "synthetic":
            self.metrics.wire_ignored(STAGE, "truth", msg.camera)
            msg = msgspec.structs.replace(msg, truth=None)
        if msg.fit is None:  # the sender's image is the model input
            h, w = msg.image.shape[:2]
            msg = msgspec.structs.replace(msg, fit=Fit.identity(w, h))
        return msg

    def _mark_stalled(self, now: float) -> None:
        for cam, st in self.state.items():
            stall = self.config.cameras[cam].thresholds.stall_s
            limit = min(stall, max(5.0, 3.0 / self.config.cameras[cam].fps))
            if st.up and now - st.last_frame > limit:
                st.up = st.counting = False
                self.metrics.camera_up(cam, False)
                logs.event(log, "camera_down", "%s: no frame for %.0f s", cam, now - st.last_frame, camera=cam, level=logging.WARNING)

    def process(self, batch: list[FrameMessage]) -> None:
        key, backend = self.pool.backend(batch[0].camera)
        images = np.stack([f.image for f in batch])
        t0 = time.perf_counter()
        try:
            pred = backend.infer(images)
        except Exception as exc:  # BackendError or anything else: one bad batch must not stop the stage
            log.error("inference failed on a batch of %d from %s: %s", len(batch), sorted({f.camera for f in batch}), exc)
            for f in batch:
                self.metrics.drop(STAGE, "inference_error", f.camera)
            return
        infer_s = time.perf_counter() - t0
        self.metrics.observe_inference(infer_s, len(batch))
        quality = self.config.transport.jpeg_quality if self.config.transport.frame_encoding == "jpeg" else None
        now = time.time()
        for i, f in enumerate(batch):
            cam = self.config.cameras[f.camera]
            try:
                figures = compute_metrics(pred.density[i, 0], pred.uncertainty[i, 0], self._geometry(f.camera, f.fit), cam.thresholds,
                                          mask_counts=pred.mask_counts[i] if pred.mask_counts.shape[1] > 1 else None)
            except ValueError as exc:
                log.warning("%s: metrics failed: %s", f.camera, exc)
                self.metrics.drop(STAGE, "bad_output", f.camera)
                continue
            result = Result(
                camera=f.camera, seq=f.seq, capture_ns=f.capture_ns, model_version=backend.version, figures=figures, fit=f.fit,
                timings={"infer": infer_s / len(batch), "latency": max(0.0, now - f.capture_ns / 1e9)}, truth=f.truth,
                density=pred.density[i, 0], uncertainty_map=pred.uncertainty[i, 0], image=f.image,
            )  # fmt: skip
            self.metrics.observe(result, now=now)
            self.metrics.frame(STAGE, f.camera)
            st = self.state[f.camera]
            st.last_frame = time.monotonic()
            if not st.counting:  # camera_up says frames arrive; this, that they are counted
                st.counting = True
                logs.event(log, "first_result", "%s: counting, %.1f people (model %s)", f.camera, figures.count, backend.version,
                           camera=f.camera)  # fmt: skip
            if not send_parts(self.results, encode_result(result, quality)):
                self.metrics.drop(STAGE, "results_hwm", f.camera)
            self._tap(f)

    def _tap(self, f: FrameMessage) -> None:
        from adapt.store.buffer import WRITE_FAILURES

        buf = self.buffers[f.camera]
        reason = buf.offer(f.image, f.capture_ns)  # never raises: disk trouble comes back as the skip reason
        if reason in WRITE_FAILURES:
            self.metrics.buffer_write_failure(f.camera, reason)
        self.metrics.buffer_frames(f.camera, buf.stats().frames)

    def step(self) -> int:
        """One collect-and-infer cycle; returns frames processed."""
        for cam in self.pool.refresh():
            self.metrics.model_version(cam, self.pool.backend(cam)[1].version)
            self.metrics.model_fallback_state(cam, self.pool.fallback.get(cam, False))
        m = self.config.model
        frames = collect(self.receiver, m.max_batch, m.max_wait_ms / 1000.0)
        frames = [self._source_stats(f) for f in frames]
        for batch in group_batches(frames, lambda cam: self.pool.backend(cam)[0], m.max_batch):
            self.process(batch)
        self._mark_stalled(time.monotonic())
        return len(frames)

    def run(self, ready=lambda: None, beat=lambda: None) -> None:
        ready()
        while not self.stop_event.is_set():
            self.step()
            beat()  # a step returns within max_wait_ms plus one batch, frames or not

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()  # stops watching the sockets first
        self.frames.close(linger=0)
        self.results.close(linger=0)


def not_transient(exc: BaseException) -> bool:
    """A start-up error that a restart will not fix: no registry or model, a socket address in use or invalid."""
    from adapt.store.registry import RegistryError

    if isinstance(exc, (RegistryError, ModelUnavailable)):
        return True
    if isinstance(exc, zmq.ZMQError):
        return exc.errno in (zmq.EADDRINUSE, zmq.EADDRNOTAVAIL, errno.EINVAL, errno.ENOENT, errno.EACCES, zmq.EPROTONOSUPPORT)
    if isinstance(exc, OSError):
        return exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return False


def shard_arg(text: str) -> int:
    """A worker number, or a StatefulSet pod name ending in its ordinal (crowdwatch-infer-2)."""
    m = re.fullmatch(r"(?:.*-)?(\d+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a worker number or a pod name ending in -N, found {text!r}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch infer", description="Density inference stage with Prometheus metrics.")
    p.add_argument("--config", type=Path, default=Path("config.toml"))
    p.add_argument("--shard", type=shard_arg, default=0,
                   help="serve this worker's cameras (0 to [server] infer_workers - 1; or a StatefulSet pod name ending in -N)")
    p.add_argument("--metrics-port", type=int, default=None, help="override server.metrics_port (0: any free port)")
    p.add_argument("--log-level", default=None, type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: $CROWDWATCH_LOG_LEVEL, else [log] level")
    p.add_argument("--log-format", default=None, choices=["auto", "json", "text"],
                   help="default: $CROWDWATCH_LOG_FORMAT, else [log] format (auto: json unless stdout is a terminal)")
    args = p.parse_args(argv)
    config = load_stage_config("crowdwatch infer", args.config, args.log_level, args.log_format,
                               instance=str(args.shard) if args.shard else None)
    if config is None:
        return 2  # an invalid config, or no registry/model/GPU for it: crowdwatch run does not restart it either
    if args.shard >= config.server.infer_workers:
        print(f"crowdwatch infer: --shard: expected a worker in 0..{config.server.infer_workers - 1} "
              f"([server] infer_workers), found {args.shard}", file=sys.stderr)
        return 2
    metrics = Metrics()
    srv = config.server
    port = args.metrics_port if args.metrics_port is not None else srv.metrics_port
    try:
        access = Access.for_bind(srv.metrics_host, srv.auth_token_env)
        server = MetricsServer(metrics, srv.metrics_host, port, srv.liveness_timeout_s, access=access,
                               limits=Limits(srv.max_connections, srv.request_timeout_s)).start()  # fmt: skip
    except AccessError as exc:  # a bind beyond localhost without its token: a configuration error
        print(f"crowdwatch infer: cannot start: metrics on {srv.metrics_host}:{port}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crowdwatch infer: cannot start: metrics on {srv.metrics_host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FATAL if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) else 1
    try:
        stage = InferStage(config, metrics, shard=args.shard)
    except Exception as exc:
        server.stop()
        print(f"crowdwatch infer: cannot start: {exc}", file=sys.stderr)
        return EXIT_FATAL if not_transient(exc) else 1
    stop_on_signals(stage.stop_event, lambda signum: log.info("signal %s: stopping", signum))
    log.info("infer worker %d of %d: metrics on %s, cameras %s, backend %s", args.shard, config.server.infer_workers, server.url,
             ", ".join(stage.cameras) or "none", config.model.backend)
    heartbeat = Heartbeat.from_env()  # for crowdwatch run's stall detection; /healthz has server.beat

    def beat() -> None:
        server.beat()
        heartbeat.beat()

    try:
        stage.run(ready=server.set_ready, beat=beat)
    finally:
        stage.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
