"""The options of a ``synthetic://`` camera, checked once: at load (camera.py) and by the renderer's source.

    synthetic://?people=60&style=day
    synthetic://?style=indoor&ramp=0:200:600     # 0 -> 200 people over 600 s, then hold
    options: people, style, ramp=START:END:SECONDS, seed, size=WxH

``streamer/synthetic_camera.py`` renders with :class:`SyntheticOptions`; a bad
option is a load-time error naming it, not a crash loop of the camera's ingest.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qsl

# The renderer's styles (adapt.synth.STYLES; the config imports nothing from adapt, a test keeps the two equal).
STYLE_NAMES = ("day", "overcast", "dusk", "night_ir", "fog", "indoor")
OPTIONS = ("people", "ramp", "seed", "size", "style")
MAX_PEOPLE = 2000
MIN_SIDE, MAX_SIDE = 64, 4096


class SyntheticOptionError(ValueError):
    """One bad option: ``expected`` and ``found`` as the config errors word them."""

    def __init__(self, expected: str, found: str) -> None:
        self.expected, self.found = expected, found
        super().__init__(f"expected {expected}, found {found}")


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


def _people(text: str, expected: str, found: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_PEOPLE:
        raise SyntheticOptionError(expected, found)
    return n


def _ramp(text: str) -> tuple[int, int, float]:
    expected, found = f"ramp=START:END:SECONDS (people in 0..{MAX_PEOPLE}, seconds >= 0)", f"ramp={text}"
    try:
        a, b, span = text.split(":")
        seconds = float(span)
    except ValueError:
        raise SyntheticOptionError(expected, found) from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SyntheticOptionError(expected, found)
    return _people(a, expected, found), _people(b, expected, found), seconds


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise SyntheticOptionError(f"size=WxH, each side in {MIN_SIDE}..{MAX_SIDE}", f"size={text}")
    return w, h


def parse_synthetic(query: str, camera: str = "") -> SyntheticOptions:
    """The options in a synthetic:// URL's query; SyntheticOptionError names the first bad one."""
    given = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise SyntheticOptionError(f"options from {', '.join(OPTIONS)}", f"unknown option {unknown[0]!r}")
    style = given.get("style", "day")
    if style not in STYLE_NAMES:
        raise SyntheticOptionError(f"a style from {', '.join(STYLE_NAMES)}", f"style={style}")
    seed = zlib.crc32(camera.encode()) & 0xFFFF  # per camera, so two cameras do not show the same scene
    if "seed" in given:
        try:
            seed = int(given["seed"])
        except ValueError:
            raise SyntheticOptionError("an integer seed", f"seed={given['seed']}") from None
    return SyntheticOptions(
        people=_people(given["people"], f"people in 0..{MAX_PEOPLE}", f"people={given['people']}") if "people" in given else SyntheticOptions.people,
        style=style,
        ramp=_ramp(given["ramp"]) if "ramp" in given else None,
        seed=seed,
        size=_size(given["size"]) if "size" in given else None,
    )
