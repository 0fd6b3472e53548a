"""``synthetic://`` cameras: a moving crowd from the project's renderer, with its true count.

    synthetic://?people=60&style=day
    synthetic://?style=indoor&ramp=0:200:600     # 0 -> 200 people over 600 s, then hold
    options: people, style, ramp=START:END:SECONDS, seed, size=WxH

One scene (camera, background, objects) is sampled per camera and kept; people
walk on the ground plane between frames. Each frame carries ``truth``, the
number of visible labelled heads, so end-to-end tests and dashboards can
compare the estimate with the truth.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from streamer.sources import RawFrame, SourceConfig, SourceError, register_scheme

MAX_PEOPLE = 2000


@dataclass(frozen=True)
class SyntheticOptions:
    people: int = 50
    style: str = "day"
    ramp: tuple[int, int, float] | None = None
    seed: int = 0
    size: tuple[int, int] | None = None      # (w, h) rendered; default: the camera's model box

    def people_at(self, t: float) -> int:
        if self.ramp is None:
            return self.people
        a, b, span = self.ramp
        f = min(max(t / span, 0.0), 1.0) if span > 0 else 1.0
        return int(round(a + (b - a) * f))

    @property
    def max_people(self) -> int:
        return max([self.people, *(self.ramp[:2] if self.ramp else ())])


def parse_options(url: str, camera: str = "") -> SyntheticOptions:
    """Parse and check a synthetic:// URL; SourceError names the bad option."""
    from adapt.synth import STYLES

    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    known = {"people", "style", "ramp", "seed", "size"}
    unknown = set(query) - known
    if unknown:
        raise SourceError(f"{url}: unknown synthetic option(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        people = int(query.get("people", 50))
        seed = int(query.get("seed", zlib.crc32(camera.encode()) & 0xFFFF))
        ramp = None
        if "ramp" in query:
            a, b, span = query["ramp"].split(":")
            ramp = (int(a), int(b), float(span))
        size = None
        if "size" in query:
            w, h = query["size"].lower().split("x")
            size = (int(w), int(h))
    except ValueError:
        raise SourceError(f"{url}: people/seed must be integers, ramp START:END:SECONDS, size WxH") from None
    style = query.get("style", "day")
    if style not in STYLES:
        raise SourceError(f"{url}: unknown style {style!r}; choose from {sorted(STYLES)}")
    counts = [people] + (list(ramp[:2]) if ramp else [])
    if not all(0 <= c <= MAX_PEOPLE for c in counts):
        raise SourceError(f"{url}: people must be in 0..{MAX_PEOPLE}")
    if size is not None and not (64 <= size[0] <= 4096 and 64 <= size[1] <= 4096):
        raise SourceError(f"{url}: size must be between 64x64 and 4096x4096")
    return SyntheticOptions(people, style, ramp, seed, size)


class SyntheticStream:
    """One connection: frames at the camera's fps on its own clock (the Source paces them)."""

    def __init__(self, cfg: SourceConfig):
        from adapt.synth import sample_crowd

        self.opts = parse_options(cfg.url, cfg.camera)
        self.fps = cfg.fps
        self.scene = synthetic_scene(cfg.url, cfg.camera, cfg.width or 640, cfg.height or 480)
        # people get their own stream of randomness, independent of the scene's
        self.rng = np.random.default_rng((self.opts.seed, 1))
        self.people = sample_crowd(self.rng, self.scene, self.opts.max_people, "mixed")
        self.t0 = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator[RawFrame]:
        from adapt.synth import render, walk

        dt = 1.0 / self.fps
        k = 0
        while not self.closed:
            t = k * dt
            shown = self.people[: self.opts.people_at(t)]
            r = render(self.scene, shown, self.rng)
            yield RawFrame(r.image, time=t, pts=t, meta={"truth": float(len(r.points))})
            self.people = walk(self.scene, self.people, dt, self.rng)
            k += 1

    def close(self) -> None:
        self.closed = True


def synthetic_scene(url: str, camera: str, width: int, height: int):
    """The scene a synthetic camera renders: the same seed, so the same camera and background."""
    from adapt.synth import sample_scene

    opts = parse_options(url, camera)
    w, h = opts.size or (width, height)
    return sample_scene(np.random.default_rng(opts.seed), w, h, opts.style)


def calibration(url: str, camera: str, width: int, height: int) -> tuple[list[list[float]], list[list[float]]]:
    """Ground-plane calibration of a synthetic camera: four image points and their metres.

    Taken from the renderer's own camera, so per-m² figures of synthetic
    cameras are exact. Points are the corners of the lowest band of the
    image that lies on the ground (below the horizon).
    """
    cam = synthetic_scene(url, camera, width, height).camera
    w, h = cam.width, cam.height
    for top in np.linspace(0.3, 0.9, 13):
        image = np.array([[0, h - 1], [w - 1, h - 1], [w - 1, top * h], [0, top * h]], dtype=float)
        ground = cam.pixel_to_ground(image)
        if np.all(np.isfinite(ground)):
            return np.round(image, 1).tolist(), np.round(ground, 3).tolist()
    raise SourceError(f"{url}: the synthetic camera sees no ground")


def register() -> None:
    register_scheme("synthetic", SyntheticStream, validate=lambda url: parse_options(url) and None)
