"""A real RTSP server for tests: GStreamer's GstRtspServer on 127.0.0.1, in a subprocess.

The server side runs under the system python3, which has ``gi`` (Debian:
python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,bad},
gstreamer1.0-rtsp); the venv that runs pytest cannot import ``gi``, so the test
side here uses only the standard library. As a script:

    /usr/bin/python3 tests/rtsp_server.py serve --media clip.mp4 --port 0 --path /cam
        prints "READY <port>" once listening, then serves until killed or its parent dies
    /usr/bin/python3 tests/rtsp_server.py check
        exit 0 if everything above is installed, else prints what is missing

The media is an H.264 file (mp4/mov, avi, mkv), sent without re-encoding at its
own rate over RTP. Every client gets its own pipeline from the start of the file.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = os.environ.get("CROWDWATCH_GI_PYTHON", "/usr/bin/python3")
ELEMENTS = ("filesrc", "qtdemux", "avidemux", "matroskademux", "h264parse", "rtph264pay")
DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".avi": "avidemux", ".mkv": "matroskademux"}


# ---- test side (any python) ------------------------------------------------------------


def unavailable_reason(python: str = SYSTEM_PYTHON, timeout_s: float = 30.0) -> str | None:
    """None when a GStreamer RTSP server can run here, else why not (for pytest.skip)."""
    if not Path(python).exists():
        return f"{python} not found (it must be the python that has gi / PyGObject)"
    try:
        done = subprocess.run(
            [python, __file__, "check"], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"{python} {__file__} check timed out"
    if done.returncode != 0:
        return (done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr).strip() else (
            f"check failed with exit code {done.returncode}"
        )
    return None


class RtspServer:
    """One GstRtspServer subprocess; start() again after kill() to come back on the same port."""

    def __init__(self, media: Path, path: str = "/cam", python: str = SYSTEM_PYTHON) -> None:
        self.media = Path(media)
        self.path = path
        self.python = python
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._log = tempfile.TemporaryFile(mode="w+")

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, port: int | None = None, timeout_s: float = 15.0) -> int:
        """Start listening (port None: the last port, else a free one); return the port."""
        if self.running:
            raise RuntimeError("already running")
        port = self.port if port is None and self.port is not None else (port or 0)
        cmd = [self.python, __file__, "serve", "--media", str(self.media), "--path", self.path, "--port", str(port)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        deadline = time.monotonic() + timeout_s
        line = ""
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            # Binding can lag the kill of a previous server for a moment: the script retries.
            while not line.startswith("READY"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"RTSP server did not start within {timeout_s} s: {self.stderr_tail()}")
                if sel.select(timeout=remaining):
                    line = self._proc.stdout.readline()
        self.port = int(line.split()[1])
        return self.port

    def kill(self) -> None:
        """SIGKILL: the server vanishes the way a crashed camera does, without an RTSP TEARDOWN."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def stderr_tail(self, chars: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read()[-chars:]

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._log.close()


# ---- server side (system python3 with gi) ---------------------------------------------


def _launch_line(media: Path) -> str:
    demux = DEMUXERS.get(media.suffix.lower())
    if demux is None:
        raise SystemExit(f"unsupported media type {media.suffix!r}; expected one of {sorted(DEMUXERS)}")
    location = str(media.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    # config-interval=-1: SPS/PPS before every keyframe, so a client that joins mid-stream can decode.
    return (
        f'( filesrc location="{location}" ! {demux} name=d d.video_0 ! queue ! h264parse '
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def _check() -> int:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as exc:
        print(f"GStreamer RTSP server bindings missing ({exc}); install python3-gi gir1.2-gst-rtsp-server-1.0")
        return 1
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"GStreamer elements missing: {', '.join(missing)}; install gstreamer1.0-plugins-good/-bad")
        return 1
    return 0


def _serve(media: Path, port: int, path: str) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    if not media.is_file():
        raise SystemExit(f"media not found: {media}")
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch_line(media))
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(path, factory)
    # A restart right after a kill may find the port briefly unavailable; retry for a while.
    # (attach() returns 0 and logs a warning when it cannot listen.)
    deadline = time.monotonic() + 10.0
    while not server.attach(None):
        if time.monotonic() > deadline:
            raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
        time.sleep(0.2)
    print(f"READY {server.get_bound_port()}", flush=True)

    loop = GLib.MainLoop()
    parent = os.getppid()

    def parent_alive() -> bool:
        if os.getppid() != parent:  # orphaned: the test process died; do not linger
            loop.quit()
            return False
        return True

    GLib.timeout_add(500, parent_alive)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)
    loop.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="exit 0 if GstRtspServer and the needed elements are installed")
    serve = sub.add_parser("serve", help="serve one H.264 file over RTSP until killed")
    serve.add_argument("--media", type=Path, required=True)
    serve.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    serve.add_argument("--path", default="/cam")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check()
    return _serve(args.media, args.port, args.path)


if __name__ == "__main__":
    sys.exit(main())
