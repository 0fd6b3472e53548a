"""Scene kinds: which place a render shows, with a camera chosen so that the place holds the crowd.

- ``street``: the elevated street, plaza and hall views of ``sample_scene``
  (ShanghaiTech B, fixed pedestrian cameras), and a share seen from head
  height at a row of shop fronts (TUD-Stadtmitte); a camera is redrawn until
  its countable ground holds the crowd with room to spare.
- ``packed``: a crowd packed edge to edge seen from a high camera: a rally
  square outdoors, a concourse or station hall indoors. The camera height is
  solved so that the countable ground holds the crowd at a drawn density of
  1.8-3.8 people per m^2: small crowds are seen close, thousands far away,
  their heads down to ``DENSE_MIN_HEAD_PX``.
- ``tribune``: spectators in the seats of a stadium stand seen across the
  pitch; the distance is solved so that the seats in view hold the crowd at a
  drawn occupancy.

``max_people`` is the largest crowd a kind promises at an image size, so a
dataset can refuse an impossible count before rendering anything.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np

from .buildings import make_facade
from .camera import Camera, sample_camera
from .effects import sample_effects
from .ground import GroundLayout
from .scene import Region, Scene, build_scene, finish_scene
from .styles import Style, get_style, sample_look
from .textures import sample_ground_material
from .tribune import SEATED_HEAD_M, Stand, sample_stand
from .view import HEX_DENSITY, capacity, in_view, view_area

KINDS = ("street", "packed", "tribune")
DENSE_MIN_HEAD_PX = 2.0  # the far heads of packed crowds and stands: the smallest ShanghaiTech A marks
SHOPFRONT_SHARE = 0.15  # outdoor street views from head height at a row of shop fronts
STREET_FILL = 0.5  # random placement jams at about half of hexagonal packing: street views keep that much room
_TRIES = 30  # camera draws before a kind gives up on a crowd size (max_people keeps this out of reach)
_PACKED_ELEVATION_DEG = 10.0  # the crowd ends where the view grazes it lower than this: behind, heads hide heads
_PACKED_RHO = (1.8, 3.8)  # mean people per m^2 of a packed crowd (denser knots, thinner lanes around it)
_OCCUPANCY = (0.55, 1.0)  # share of the seats in view that are taken
# the share of a dense crowd's heads that stay labelled behind the people in front (a first guess: the crowd is
# then topped up or thinned to the count, render.dense_crowd)
VISIBLE_GUESS = {"street": 1.0, "packed": 0.75, "tribune": 0.97}
LIMIT_RULES = {  # what bounds each kind's crowd, for refusals
    "street": "half of hexagonal packing at 0.5 m spacing on the ground where heads are at least 1 px",
    "packed": "up to 3.8 people per m^2 on the ground where heads are at least 2 px",
    "tribune": "the seats in view where heads are at least 2 px, at the drawn occupancy",
}


def scene_size(kind: str, n: int) -> int:
    """How many heads a scene must hold for n of them to be labelled."""
    return math.ceil(n / VISIBLE_GUESS[kind])


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; known: {', '.join(KINDS)}")
    return kind


def sample_kind_scene(rng: np.random.Generator, width: int, height: int, style: str | Style, kind: str, n: int) -> Scene:
    """A scene of `kind` whose view holds n people; ValueError when no camera of the kind does."""
    style = get_style(style)
    check_kind(kind)
    for _ in range(_TRIES):
        if kind == "street":
            scene = _street(rng, width, height, style, n)
        elif kind == "packed":
            scene = _packed(rng, width, height, style, n)
        else:
            scene = _tribune(rng, width, height, style, n)
        if scene is not None:
            return scene
    raise ValueError(f"no {kind} camera at {width}x{height} holds {n} people after {_TRIES} draws; "
                     f"the most it promises is {max_people(kind, width, height, style.outdoor)}")


# -- street -----------------------------------------------------------------------------


def _street(rng: np.random.Generator, width: int, height: int, style: Style, n: int) -> Scene | None:
    shops = None
    if style.outdoor and rng.random() < SHOPFRONT_SHARE:
        cam, shops = _shopfront_camera(rng, width, height), float(rng.uniform(8.0, 25.0))
    else:
        cam = sample_camera(rng, width, height)
    if n > STREET_FILL * HEX_DENSITY * view_area(cam, 1.0):
        return None
    scene = build_scene(rng, cam, style, shops_at_m=shops)
    return scene if n <= STREET_FILL * capacity(scene) else None


def _shopfront_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    """A camera at about head height looking along a shopping street at the shop fronts (TUD-Stadtmitte)."""
    focal = (width / 2.0) / math.tan(math.radians(rng.uniform(45.0, 75.0)) / 2.0)
    return Camera(width, height, float(rng.uniform(1.8, 3.5)), float(rng.uniform(2.0, 12.0)), focal,
                  float(np.clip(rng.normal(0.0, 1.0), -3.0, 3.0)))


# -- packed -------------------------------------------------------------------------------


def _packed_optics(rng: np.random.Generator, width: int, indoor: bool) -> tuple[float, float, float]:
    """(tilt, focal length, roll) of a high camera over a packed crowd."""
    # mostly oblique, as crowd photographs are; now and then nearly straight down
    tilt = float(10.0 + (35.0 if indoor else 45.0) * rng.random() ** 2)
    focal = (width / 2.0) / math.tan(math.radians(rng.uniform(40.0, 80.0)) / 2.0)
    return tilt, focal, float(np.clip(rng.normal(0.0, 1.0), -3.0, 3.0))


def _packed_heights(indoor: bool) -> tuple[float, float]:
    return 3.0, (25.0 if indoor else 120.0)


def _packed_reach(cam_h: float) -> float:
    """Metres out to which a camera this high sees the crowd from at least _PACKED_ELEVATION_DEG above."""
    return (cam_h - 1.6) / math.tan(math.radians(_PACKED_ELEVATION_DEG))


def _packed_area(cam: Camera) -> float:
    return view_area(cam, DENSE_MIN_HEAD_PX, max_ground_m=_packed_reach(cam.height_m))


def _packed_camera(optics: tuple[float, float, float], width: int, height: int, need_m2: float, indoor: bool) -> Camera | None:
    """The camera height at which the countable ground covers need_m2 (within a few per cent), or None."""
    tilt, focal, roll = optics
    h_lo, h_hi = _packed_heights(indoor)
    h = 10.0
    for _ in range(8):
        area = _packed_area(Camera(width, height, h, tilt, focal, roll))
        if area <= 0:
            h = max(h_lo, h * 0.5)
            continue
        # the view's ground grows with the square of the camera's height above the heads
        nxt = float(np.clip(1.6 + (h - 1.6) * math.sqrt(need_m2 / area), h_lo, h_hi))
        if abs(nxt - h) < 0.01 * h:
            break
        h = nxt
    cam = Camera(width, height, h, tilt, focal, roll)
    return cam if _packed_area(cam) >= 0.97 * need_m2 else None


def _packed(rng: np.random.Generator, width: int, height: int, style: Style, n: int) -> Scene | None:
    rho = float(rng.uniform(*_PACKED_RHO))
    need = max(n, 1) / rho
    for _ in range(3):
        cam = _packed_camera(_packed_optics(rng, width, not style.outdoor), width, height, need, not style.outdoor)
        if cam is None:
            return None
        scene = build_scene(rng, cam, style, min_head_px=DENSE_MIN_HEAD_PX, thin_out=False, kind="packed", walls_behind=True,
                            max_ground_m=_packed_reach(cam.height_m))
        got = capacity(scene) / HEX_DENSITY
        if n <= rho * got * 1.03:
            return scene
        need *= need / max(got, 1e-3)  # walls and objects took ground: ask for that much more
    return None


# -- tribune ------------------------------------------------------------------------------


def _stand_at(st: Stand, distance: float, aim: float, hfov: float) -> Stand:
    """The stand moved so its front edge is `distance` ahead and its aimed row (u = 0) straight ahead;
    its seats cover the view's width with a margin."""
    b, a = st.back, st.along
    lat = -b[0] * (distance + aim * st.depth) / a[0]
    half = (distance + st.depth) * math.tan(hfov / 2) * 1.3 + 10.0
    return dataclasses.replace(st, origin=b * distance + a * lat, u0=-half, u1=half)


def _seats_in_view(cam: Camera, st: Stand) -> int:
    """About how many seats show a countable head: every seat of a row, or a sample of ~100 times as many."""
    stride = max(1, int((st.u1 - st.u0) / st.seat_w / 100))
    x, y, z = st.seats(stride)
    head_in, _ = in_view(cam, DENSE_MIN_HEAD_PX, x, y, np.full(len(x), 1.7), z, True)
    return int(head_in.sum()) * stride


_DISTANCES = np.geomspace(6.0, 400.0, 14)  # metres from the camera to the stand's front edge


def _tribune_rig(rng: np.random.Generator, width: int, height: int):
    """A drawn stand and camera optics; returns setup(distance, zoom) -> (camera, stand) aimed across the pitch."""
    yaw = float(np.clip(rng.normal(0.0, 0.2), -0.45, 0.45))
    st0 = sample_stand(rng, 20.0, yaw, 0.0)
    hfov = math.radians(rng.uniform(25.0, 75.0))
    focal = (width / 2.0) / math.tan(hfov / 2.0)
    roll = float(np.clip(rng.normal(0.0, 0.8), -3.0, 3.0))
    cam_h = float(rng.uniform(0.15, 1.5) * st0.top_z + 2.0)
    aim = float(rng.uniform(0.25, 0.75))

    def setup(dist: float, zoom: float = 1.0) -> tuple[Camera, Stand]:
        st = _stand_at(st0, dist, aim, hfov / zoom)
        x, y = st.to_world(np.array([0.0]), np.array([aim * st.depth]))
        tz = float(st.floor_z(aim * st.depth)) + SEATED_HEAD_M
        tilt = math.degrees(math.atan2(cam_h - tz, float(np.hypot(x[0], y[0]))))
        return Camera(width, height, cam_h, tilt, focal * zoom, roll), st

    return setup


def _tribune_camera(rng: np.random.Generator, width: int, height: int, need: float) -> tuple[Camera, Stand] | None:
    """The nearest distance whose view shows `need` countable seats (heads as large as the crowd allows);
    a small crowd that the nearest view already outnumbers is framed tighter with a longer lens instead."""
    setup = _tribune_rig(rng, width, height)
    zoom = 1.0
    for _ in range(4):
        near = _seats_in_view(*setup(float(_DISTANCES[0]), zoom))
        if near <= 1.3 * need:
            break
        zoom *= min(4.0, math.sqrt(near / need))
    lo = None
    for d in _DISTANCES:
        if _seats_in_view(*setup(float(d), zoom)) >= need:
            hi = float(d)
            break
        lo = float(d)
    else:
        return None
    if lo is not None:
        for _ in range(8):
            mid = math.sqrt(lo * hi)
            if _seats_in_view(*setup(mid, zoom)) >= need:
                hi = mid
            else:
                lo = mid
    return setup(hi, zoom)


def _tribune(rng: np.random.Generator, width: int, height: int, style: Style, n: int) -> Scene | None:
    occupancy = float(rng.uniform(*_OCCUPANCY))
    found = _tribune_camera(rng, width, height, max(n, 1) / occupancy)
    if found is None:
        return None
    cam, st = found
    x, y, z = st.seats()
    if in_view(cam, DENSE_MIN_HEAD_PX, x, y, np.full(len(x), 1.7), z, True)[0].sum() < n:
        return None  # the solve counts a sample of the seats; all of them must hold the crowd
    look = sample_look(rng, style)
    pitch = sample_ground_material(rng, "grass" if style.outdoor else "tiles")
    layout = GroundLayout("pitch", st.yaw, pitch)
    far = float(np.hypot(*st.to_world(np.array([0.0]), np.array([st.depth]))).max())
    facades, ceiling = [], None
    if not style.outdoor:
        ceiling = max(cam.height_m, st.top_z + st.back_h) + float(rng.uniform(3.0, 10.0))
    elif rng.random() < 0.4:
        # the city behind the stadium, where the view clears the stand
        centre = st.back * (far + rng.uniform(80.0, 300.0))
        facades.append(make_facade(rng, centre, st.yaw, 900.0, (15.0, 70.0), (15.0, 50.0), 0.0))
    min_fog = 0.5 * math.hypot(far, cam.height_m)
    if look.fog_distance_m < min_fog:
        look = dataclasses.replace(look, fog_distance_m=min_fog * float(rng.uniform(1.0, 1.5)))
    x, y, _ = st.seats()
    region = Region(float(x.min()), float(x.max()), float(max(0.3, y.min())), float(y.max()))
    scene = Scene(cam, style, look, layout, facades, [], np.zeros((cam.height, cam.width, 3), np.uint8),
                  np.zeros((cam.height, cam.width), np.float32), [], sample_effects(rng, style, cam.width, cam.height),
                  region, ceiling, stands=[st], kind="tribune", min_head_px=DENSE_MIN_HEAD_PX)
    return finish_scene(rng, scene)


# -- limits -------------------------------------------------------------------------------


@cache
def max_people(kind: str, width: int, height: int, outdoor: bool = True) -> int:
    """The largest labelled crowd a kind promises at this image size: the 25th percentile, over 24 fixed
    draws of the kind's camera, of the most each draw can hold, times the share expected to stay visible.
    A crowd this large fits a random draw about three times in four, so _TRIES draws practically never
    all fail."""
    check_kind(kind)
    rng = np.random.default_rng(12345)
    best = []
    for _ in range(24):
        if kind == "street":
            best.append(STREET_FILL * HEX_DENSITY * view_area(sample_camera(rng, width, height), 1.0))
        elif kind == "packed":
            rho = rng.uniform(*_PACKED_RHO)
            tilt, focal, roll = _packed_optics(rng, width, not outdoor)
            best.append(rho * max(_packed_area(Camera(width, height, h, tilt, focal, roll))
                                  for h in np.geomspace(*_packed_heights(not outdoor), 24)))
        else:
            occ = rng.uniform(*_OCCUPANCY)
            setup = _tribune_rig(rng, width, height)
            best.append(occ * max(_seats_in_view(*setup(float(d))) for d in _DISTANCES))
    return int(np.percentile(best, 25) * VISIBLE_GUESS[kind])
