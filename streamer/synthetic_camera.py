"""``synthetic://`` cameras: a moving crowd from the project's renderer, with its true count.

    synthetic://?people=60&style=day
    synthetic://?style=indoor&ramp=0:200:600     # 0 -> 200 people over 600 s, then hold
    options: people, style, ramp=START:END:SECONDS, seed, size=WxH (crowdwatch/config/synthetic.py)

One scene (camera, background, objects) is sampled per camera and kept; people
walk on the ground plane between frames. Each frame carries ``truth``, the
number of visible labelled heads, so end-to-end tests and dashboards can
compare the estimate with the truth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np

from crowdwatch.config.synthetic import SyntheticOptions, parse_synthetic
from streamer.sources import RawFrame, SourceConfig, SourceError, register_scheme


def parse_options(url: str, camera: str = "") -> SyntheticOptions:
    """Parse and check a synthetic:// URL (``crowdwatch.config.synthetic``); SourceError names the bad option."""
    try:
        return parse_synthetic(urlsplit(url).query, camera)
    except ValueError as exc:
        raise SourceError(f"{url}: {exc}") from None


class SyntheticStream:
    """One connection: frames at the camera's fps on its own clock (the Source paces them)."""

    def __init__(self, cfg: SourceConfig):
        from adapt.synth import capacity, sample_crowd

        self.opts = parse_options(cfg.url, cfg.camera)
        self.fps = cfg.fps
        self.scene = synthetic_scene(cfg.url, cfg.camera, cfg.width or 640, cfg.height or 480)
        # people get their own stream of randomness, independent of the scene's
        self.rng = np.random.default_rng((self.opts.seed, 1))
        # as many as the view holds (the renderer refuses more); `truth` counts who is shown
        self.people = sample_crowd(self.rng, self.scene, min(self.opts.max_people, capacity(self.scene)), "mixed")
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
