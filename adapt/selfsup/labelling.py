"""Label a few frames of one camera by clicking heads, for the gate's MAE check.

    crowdwatch label --camera NAME [--frames DIR|VIDEO] [--out labels/NAME] [--n 8]
                     [--buffer var/buffer] [--host 127.0.0.1] [--port 8090]

Without labels the gate can only ask that a new model move the count a
little and be surer (docs/ADAPTATION.md); with a handful of labelled frames
of the camera, MAE on them decides. This command picks N frames spread over
the camera's buffer (or a folder, or a video decoded into the buffer),
copies them to ``OUT/images/`` and serves a page on which each click marks a
head; every change is saved at once to ``OUT/labels/<stem>.json`` in the
``json`` dataset layout that ``crowdwatch adapt --labels OUT`` and the
camera's ``adapt.labels`` setting read. Run it again to go on: frames and
points already in OUT are kept.

The page is served on 127.0.0.1 unless told otherwise. Bound beyond
localhost it needs the access token of ``[server] auth_token_env`` (default
``$CROWDWATCH_TOKEN``), like the other servers (crowdwatch/httpbase.py): the
frames show people and the page writes files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from adapt.data.datasets import DatasetError, check_points, list_images
from adapt.data.images import load_image
from adapt.store.atomic import atomic_write
from crowdwatch.httpbase import Access, GuardedHandler, GuardedServer, Limits

MAX_POINTS = 20000          # more heads than any frame of a camera holds
MAX_BODY = 1 << 20


class LabelError(ValueError):
    pass


def spread(paths: list[Path], n: int) -> list[Path]:
    """N paths evenly spaced over the list (the buffer is in capture order)."""
    if n <= 0:
        raise LabelError(f"--n must be at least 1, found {n}")
    if len(paths) <= n:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


@dataclass(frozen=True)
class Frame:
    stem: str
    image: Path
    width: int
    height: int


class LabelSet:
    """The frames and head points of one labelling folder (``json`` dataset layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        self.labels = root / "labels"
        self.frames: dict[str, Frame] = {}
        self._scan()

    def _scan(self) -> None:
        for path in list_images(self.images):
            h, w = load_image(path).shape[:2]
            self.frames[path.stem] = Frame(path.stem, path, w, h)

    def add(self, sources: list[Path]) -> int:
        """Copy new frames in (same file, same name); returns how many were new."""
        self.images.mkdir(parents=True, exist_ok=True)
        self.labels.mkdir(parents=True, exist_ok=True)
        added = 0
        for src in sources:
            if src.stem in self.frames:
                continue
            h, w = load_image(src).shape[:2]  # unreadable frames fail here, before the copy
            dst = self.images / src.name
            atomic_write(dst, src.read_bytes())
            self.frames[src.stem] = Frame(src.stem, dst, w, h)
            added += 1
        return added

    def frame(self, stem: str) -> Frame:
        if stem not in self.frames:
            raise LabelError(f"no frame {stem!r} in {self.images}")
        return self.frames[stem]

    def points(self, stem: str) -> list[list[float]]:
        path = self.labels / f"{self.frame(stem).stem}.json"
        if not path.is_file():
            return []
        return check_points(json.loads(path.read_text()).get("points", []), str(path)).astype(np.float64).round(2).tolist()

    def save(self, stem: str, raw: object) -> int:
        """Validate and write one frame's points atomically; returns the count."""
        frame = self.frame(stem)
        try:
            pts = check_points(raw)
        except DatasetError as exc:
            raise LabelError(str(exc)) from None
        if len(pts) > MAX_POINTS:
            raise LabelError(f"{len(pts)} points; at most {MAX_POINTS}")
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < frame.width) & (pts[:, 1] >= 0) & (pts[:, 1] < frame.height)
        if not inside.all():
            raise LabelError(f"point {pts[~inside][0].tolist()} is outside the {frame.width}x{frame.height} frame")
        doc = {"image": frame.image.name, "width": frame.width, "height": frame.height, "points": pts.astype(np.float64).round(2).tolist()}
        atomic_write(self.labels / f"{stem}.json", json.dumps(doc).encode())
        return len(pts)

    def summary(self) -> list[dict]:
        return [{"name": f.stem, "width": f.width, "height": f.height, "points": self.points(f.stem)} for f in self.frames.values()]


def make_handler(labels: LabelSet, page: bytes):
    class Handler(GuardedHandler):  # access, limits and timeouts: crowdwatch/httpbase.py
        server_version = "crowdwatch-label"

        def log_message(self, fmt: str, *args) -> None:  # quiet: one line per click is noise
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: object) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _stem(self, prefix: str) -> str | None:
            stem = unquote(urlsplit(self.path).path[len(prefix):])
            return stem if stem in labels.frames else None

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/":
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/api/frames":
                self._json(200, labels.summary())
            elif path.startswith("/image/") and (stem := self._stem("/image/")):
                f = labels.frame(stem)
                ctype = "image/png" if f.image.suffix.lower() == ".png" else "image/jpeg"
                self._send(200, f.image.read_bytes(), ctype)
            else:
                self._json(404, {"error": f"not found: {path}"})

        def do_PUT(self) -> None:
            stem = self._stem("/api/labels/") if urlsplit(self.path).path.startswith("/api/labels/") else None
            if stem is None:
                self._json(404, {"error": f"no such frame: {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._json(413 if length else 400, {"error": f"body must be 1 to {MAX_BODY} bytes of JSON"})
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict) or "points" not in body:
                    raise LabelError('expected {"points": [[x, y], ...]}')
                count = labels.save(stem, body["points"])
            except (ValueError, LabelError) as exc:  # JSONDecodeError is a ValueError
                self._json(400, {"error": str(exc)})
                return
            self._json(200, {"name": stem, "count": count})

    return Handler


def read_page() -> bytes:
    return resources.files("adapt").joinpath("static/label.html").read_bytes()


def serve(labels: LabelSet, host: str, port: int, access: Access | None = None, limits: Limits | None = None) -> GuardedServer:
    """The labelling server, not yet serving; ``access`` defaults to what the bind needs (AccessError without the token)."""
    access = access if access is not None else Access.for_bind(host)
    return GuardedServer((host, port), make_handler(labels, read_page()), access=access, limits=limits)
