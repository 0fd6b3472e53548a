"""The ingest stage (``crowdwatch ingest --camera NAME``): one camera's frames onto the wire.

    Source (PyAV or synthetic://) ─▶ FrameMessage (fitted to the model box, + its Fit, truth, counters) ─▶ PUSH

One process per camera, so a camera that hangs or crashes its decoder never
touches the others. Frames are pushed without blocking: when the inference
stage is behind, the newest frame replaces what cannot be queued, and the drop
is counted (``hwm``) and reported in-band with the source's other counters.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

import zmq

from crowdwatch.config import CameraConfig, load_stage_config
from crowdwatch.handshake import RefusalWatch
from crowdwatch.wire import FrameMessage, client_curve, encode_frame, open_socket, send_parts
from streamer.heartbeat import Heartbeat
from streamer.shutdown import stop_on_signals
from streamer.sources import Source, SourceConfig, SourceError, SourceStats

log = logging.getLogger("crowdwatch.ingest")

URL_RETRY_INITIAL_S = 5.0
URL_RETRY_MAX_S = 300.0


def source_config(cam: CameraConfig) -> SourceConfig:
    url = str(cam.file_path) if cam.source_kind == "file" and cam.file_path else cam.url
    # synthetic frames are rendered on their own clock and must be paced like a live camera
    realtime = cam.realtime or cam.source_kind == "synthetic"
    stall = max(15.0, 3.0 / cam.fps)
    return SourceConfig(camera=cam.name, url=url, fps=cam.fps, width=cam.width, height=cam.height, loop=cam.loop, realtime=realtime, stall_timeout_s=stall)


def counters(stats: SourceStats, hwm_drops: int) -> dict[str, int]:
    """Cumulative counters for the frame header (the infer stage turns them into metrics)."""
    out = {"reconnects": stats.reconnects, "dropped_hwm": hwm_drops}
    out.update({f"dropped_{k}": v for k, v in stats.dropped.items()})
    return out


def run_ingest(cam: CameraConfig, endpoint: str, hwm: int, jpeg_quality: int | None, stop: threading.Event, curve=None, ctx: zmq.Context | None = None) -> None:
    from streamer.synthetic_camera import register

    register()
    stats = SourceStats()
    source = Source(source_config(cam), stats)  # SourceError (a URL that cannot work) before any socket
    ctx = ctx or zmq.Context.instance()
    # ingest has no /metrics of its own (its counters travel in its frames): a refusal is its log line
    with RefusalWatch(log=log) as watch:
        sock = open_socket(ctx, "push", endpoint, bind=False, hwm=hwm, curve=curve, watch=watch)
        stop_watcher = threading.Thread(target=lambda: (stop.wait(), source.close()), daemon=True)
        stop_watcher.start()
        hwm_drops = 0
        try:
            for frame in source.frames():
                msg = FrameMessage(
                    camera=cam.name, seq=frame.seq, capture_ns=frame.capture_ns, image=frame.image, fit=frame.fit,
                    truth=frame.meta.get("truth"), stats=counters(stats, hwm_drops),
                )
                watch.heal()  # a key refused before is tried again, in time
                if not send_parts(sock, encode_frame(msg, jpeg_quality)):
                    hwm_drops += 1
                if stop.is_set():
                    break
        finally:
            source.close()
            sock.close(linger=0)


def print_calibration(cam: CameraConfig) -> int:
    from streamer.synthetic_camera import calibration

    if cam.source_kind != "synthetic":
        print(f"crowdwatch ingest: {cam.name} is not a synthetic camera; calibrate it from four ground points you know", file=sys.stderr)
        return 2
    try:
        image, ground = calibration(cam.url, cam.name, cam.width, cam.height)
    except SourceError as exc:
        print(f"crowdwatch ingest: {exc}", file=sys.stderr)
        return 2
    print(f"[cameras.{cam.name}.calibration]\nimage = {image}\nground = {ground}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch ingest", description="Decode one camera and publish its frames.")
    p.add_argument("--camera", required=True)
    p.add_argument("--config", type=Path, default=Path("config.toml"))
    p.add_argument("--log-level", default=None, type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: $CROWDWATCH_LOG_LEVEL, else [log] level")
    p.add_argument("--log-format", default=None, choices=["auto", "json", "text"],
                   help="default: $CROWDWATCH_LOG_FORMAT, else [log] format (auto: json unless stdout is a terminal)")
    p.add_argument("--print-calibration", action="store_true", help="synthetic cameras: print the renderer camera's calibration as TOML and exit")
    args = p.parse_args(argv)
    config = load_stage_config("crowdwatch ingest", args.config, args.log_level, args.log_format, camera=args.camera)
    if config is None:
        return 2  # an invalid config (usage error): crowdwatch run does not restart it either
    cam = config.cameras.get(args.camera)
    if cam is None:
        print(f"crowdwatch ingest: no camera {args.camera!r} in {args.config} (have {sorted(config.cameras)})", file=sys.stderr)
        return 2
    if args.print_calibration:
        return print_calibration(cam)
    t = config.transport
    quality = t.jpeg_quality if t.frame_encoding == "jpeg" else None
    curve = client_curve(t)
    stop = threading.Event()
    stop_on_signals(stop)
    frames = config.endpoint("frames", config.shard_of(cam.name))  # its inference worker's
    log.info("ingest %s from %s -> %s", cam.name, cam.redacted_url(), frames)
    # The frame loop blocks inside the source while it reconnects; a hung decoder is
    # the source's own watchdog's (stall_timeout). The heartbeat thread stops with
    # the process (SIGSTOP, a deadlock of the interpreter), which crowdwatch run sees.
    Heartbeat.from_env().run_thread(stop)
    retry_s = URL_RETRY_INITIAL_S
    while not stop.is_set():
        try:
            run_ingest(cam, frames, t.hwm, quality, stop, curve)
            break
        except SourceError as exc:
            # a URL that cannot work (a missing file, a bad plugin): the camera stays down
            # (crowd_camera_up 0 in infer) and is retried here, never a crash loop
            log.error("%s: camera down: %s; retrying in %.0f s", cam.name, exc, retry_s)
            stop.wait(retry_s)
            retry_s = min(retry_s * 2, URL_RETRY_MAX_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
