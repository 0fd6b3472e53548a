"""A synthetic place seen by one fixed camera: ground layout, buildings, sky,
static objects, lighting and camera effects, with the static part cached.

The background is ray cast per pixel against the ground plane, vertical
building facades and (indoors) a ceiling, and each hit is textured
procedurally in surface metres. That makes ground textures perspective
correct by construction, with detail faded by each pixel's footprint.
Distractor shadows are baked in and distractors are pre-drawn as sprites, so
rendering a frame only has to draw the people.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

from . import distractors as dx
from . import furniture as fu
from .buildings import Facade, facade_hits, make_facade, sample_walls
from .camera import Camera, sample_camera
from .effects import EffectParams, sample_effects
from .facades import shade_facade
from .ground import GroundLayout, sample_layout
from .styles import Look, Style, get_style, sample_look
from .textures import noise, noise_texture, shade_ceiling, sky_color
from .tribune import Stand, shade_stand, stand_hits, stand_normal

MIN_HEAD_PX = 1.0  # a head smaller than a pixel is no countable person: never placed, never labelled

# -- the scene ------------------------------------------------------------------------


@dataclass(eq=False)
class Region:
    """Ground box (metres) in which people are placed; walkability is checked separately."""

    x0: float
    x1: float
    y0: float
    y1: float


@dataclass(eq=False)
class Scene:
    """Everything static about one place and camera; `render` draws people over it frame after frame."""

    camera: Camera
    style: Style
    look: Look
    layout: GroundLayout
    facades: list[Facade]
    distractors: list[dx.Distractor]
    background: np.ndarray  # (H, W, 3) uint8 RGB, static layer incl. object shadows, without objects
    ground_mask: np.ndarray  # (H, W) float32, 1 where the visible surface is the ground
    sprites: list[dx.Sprite]
    effects: EffectParams
    region: Region
    ceiling_m: float | None = None  # indoors: height of the ceiling
    offscreen_shade: float = 0.0  # fraction of the ground in the shade of things outside the frame
    stands: list[Stand] = dataclasses.field(default_factory=list)  # tribunes people sit on
    kind: str = "street"  # the scene kind that built it (kinds.KINDS)
    min_head_px: float = MIN_HEAD_PX  # nobody whose head would be smaller is placed

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height

    def walkable(self, x: np.ndarray, y: np.ndarray, margin: float = 0.25) -> np.ndarray:
        """True where a person may stand: in front of every wall and clear of every object."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        ok = (y > 0.3) & np.isfinite(x) & np.isfinite(y)
        for f in self.facades:
            ok &= f.signed_distance(x, y) > 0.6
        for o in self.distractors:
            ok &= ~o.blocks(x, y, margin)
        return ok

    def crowd_weight(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Relative chance that someone stands here (0 where not walkable)."""
        return self.layout.crowd_weight(np.asarray(x, np.float64), np.asarray(y, np.float64)) * self.walkable(x, y)


def _visible_region(cam: Camera, min_head_px: float = MIN_HEAD_PX) -> Region:
    """Ground box that holds everyone whose head can be in the frame and at least min_head_px wide."""
    W, H = cam.width, cam.height
    # rows from 60 % below the frame (feet out, head in) up to the top row
    rows = np.linspace(H * 1.6, 0, 48)
    cols = np.linspace(-0.15 * W, 1.15 * W, 9)
    uu, vv = np.meshgrid(cols, rows)
    g = cam.pixel_to_ground(np.column_stack([uu.ravel(), vv.ravel()]))
    ok = np.isfinite(g).all(1) & (g[:, 1] > 0.3)
    g = g[ok]
    # heads under min_head_px are no countable people (and under ~1.2 % of the frame height they are
    # crowd texture, not figures): keep the crowd nearer than that
    min_px = max(min_head_px * 1.7 / 0.22, 0.012 * H)
    hpx = cam.person_height_px(g)
    g = g[hpx >= min_px]
    if len(g) == 0:
        return Region(-1.0, 1.0, 0.5, 2.0)
    y1 = float(g[:, 1].max())
    y0 = float(max(0.3, g[:, 1].min()))
    x0, x1 = float(g[:, 0].min()), float(g[:, 0].max())
    return Region(x0, x1, y0, min(y1, 400.0))


def sample_scene(rng: np.random.Generator, width: int, height: int, style: str | Style) -> Scene:
    """A random place, camera and lighting in the given style, with its background rendered."""
    style = get_style(style)
    cam = sample_camera(rng, width, height)
    return build_scene(rng, cam, style)


def build_scene(rng: np.random.Generator, camera: Camera, style: str | Style, with_distractors: bool = True,
                with_buildings: bool = True, min_head_px: float = MIN_HEAD_PX, thin_out: bool = True,
                kind: str = "street", walls_behind: bool = False, shops_at_m: float | None = None,
                max_ground_m: float = 400.0) -> Scene:
    """A scene for a given camera (used by tests and by callers with a known calibration).

    ``thin_out`` lets the crowd region sometimes end before the far end of the view (street scenes);
    packed crowds fill the view to the smallest countable head instead, with any walls behind them
    (``walls_behind``) and no farther than ``max_ground_m``. ``shops_at_m`` puts a row of shop fronts that
    far ahead, facing the camera."""
    style = get_style(style)
    look = sample_look(rng, style)
    region = _visible_region(camera, min_head_px)
    region.y1 = max(region.y0 + 1.0, min(region.y1, max_ground_m))
    mid = camera.pixel_to_ground(np.array([[camera.cx, camera.cy]]))[0]
    if not np.isfinite(mid).all():
        mid = np.array([0.0, (region.y0 + region.y1) / 2])
    angle = float(rng.uniform(0, math.pi))
    layout = sample_layout(rng, style, centre_c=float(-mid[0] * math.sin(angle) + mid[1] * math.cos(angle)), angle=angle)

    facades: list[Facade] = []
    ceiling = None
    if shops_at_m is not None:
        lit = float(rng.uniform(0.2, 0.6)) if look.lamps_on else 0.0
        facades = [make_facade(rng, np.array([0.0, shops_at_m]), float(rng.normal(0.0, 0.2)), 300.0, (8.0, 25.0), (5.0, 16.0), lit)]
    elif with_buildings:
        near, far = (region.y1, region.y1 + 0.1 * (region.y1 - region.y0)) if walls_behind else (region.y0, region.y1)
        facades, ceiling = sample_walls(rng, camera, style, look, near, far, max(abs(region.x0), abs(region.x1)), angle)
    # the crowd stays in front of the walls
    for f in facades:
        far = f.signed_distance(np.array([0.0]), np.array([region.y1]))[0]
        if far < 0:
            region.y1 = max(region.y0 + 1.0, region.y1 + far)
    # sometimes the crowd thins out before the far end of the view
    if thin_out and rng.random() < 0.3:
        region.y1 = region.y0 + (region.y1 - region.y0) * rng.uniform(0.5, 1.0)
    # fog thins out the far crowd but must not erase it: labelled heads stay discernible (transmittance >= ~0.15)
    min_fog = 0.5 * math.hypot(region.y1, camera.height_m)
    if look.fog_distance_m < min_fog:
        look = dataclasses.replace(look, fog_distance_m=min_fog * float(rng.uniform(1.0, 1.5)))

    scene = Scene(camera, style, look, layout, facades, [], np.zeros((camera.height, camera.width, 3), np.uint8),
                  np.zeros((camera.height, camera.width), np.float32), [], sample_effects(rng, style, camera.width, camera.height),
                  region, ceiling, kind=kind, min_head_px=min_head_px)
    if with_distractors:
        # objects right in front of the lens (a canopy filling the frame) are dropped
        kept = [(o, dx.make_sprite(o, camera, look)) for o in _place_distractors(rng, scene)]
        scene.distractors = [o for o, s in kept if s is not None]
        scene.sprites = [s for _, s in kept if s is not None]
    return finish_scene(rng, scene)


def finish_scene(rng: np.random.Generator, scene: Scene) -> Scene:
    """Light and ray cast a scene whose camera, surfaces and objects are set: its cached static layer."""
    if scene.style.outdoor and scene.look.shadow_strength > 0.1 and rng.random() < 0.5:
        scene.offscreen_shade = float(rng.uniform(0.1, 0.45))
    scene.background, scene.ground_mask = render_background(scene, int(rng.integers(0, 1 << 30)))
    _bake_object_shadows(scene)
    return scene


# -- background ray casting -----------------------------------------------------------


BG_SCALE = 0.5  # the background is ray cast at half resolution, then upsampled with pixel-scale detail


def _scaled_camera(cam: Camera, s: float) -> Camera:
    w, h = max(8, int(round(cam.width * s))), max(8, int(round(cam.height * s)))
    sx, sy = w / cam.width, h / cam.height
    return Camera(w, h, cam.height_m, cam.tilt_deg, cam.focal_px * sx, cam.roll_deg,
                  (cam.cx + 0.5) * sx - 0.5, (cam.cy + 0.5) * sy - 0.5)


def render_background(scene: Scene, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 static layer, float32 ground mask) for the scene's camera."""
    cam = scene.camera
    low = _scaled_camera(cam, BG_SCALE) if BG_SCALE < 1 else cam
    col, ground, amp = _cast(scene, low, seed)
    col = scene.look.grade(col)  # pointwise, so it commutes (nearly) with the upsampling; 4x cheaper here
    size = (cam.width, cam.height)
    if low is not cam:
        col = cv2.resize(col, size, interpolation=cv2.INTER_LINEAR)
        ground = cv2.resize(ground, size, interpolation=cv2.INTER_LINEAR)
        amp = cv2.resize(amp, size, interpolation=cv2.INTER_LINEAR)
    tile = noise_texture(0.6, 7)  # fixed fine noise: pixel-scale surface detail
    ts = tile.shape[0]
    reps = (-(-cam.height // ts) + 1, -(-cam.width // ts) + 1)
    oy, ox = seed % ts, (seed // ts) % ts
    detail = np.tile(tile, reps)[oy:oy + cam.height, ox:ox + cam.width]
    col = col * (1.0 + amp * detail)[..., None]
    img = (np.clip(col, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return img, ground


def _cast(scene: Scene, cam: Camera, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast the static surfaces for `cam`: (linear colour (H, W, 3), ground mask, detail amplitude)."""
    look = scene.look
    W, H = cam.width, cam.height
    vv, uu = np.mgrid[0:H, 0:W]
    d = cam.rays(uu.ravel(), vv.ravel())
    n = len(d)
    C = cam.center
    f = cam.focal_px
    with np.errstate(divide="ignore", invalid="ignore"):
        t_best = np.where(d[:, 2] < -1e-6, C[2] / -d[:, 2], np.inf)
    # 0 ground, -1 sky, -2 ceiling, k > 0 facade k - 1, STAND - k stand k
    surf = np.where(np.isfinite(t_best), 0, -1).astype(np.int32)
    hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k, fac in enumerate(scene.facades):
        t, hit, inside = facade_hits(fac, C, d, t_best)
        t_best = np.where(inside, t, t_best)
        surf[inside] = k + 1
        hits.append(hit)
    stand_hit = []
    for k, st in enumerate(scene.stands):
        t, hit, inside = stand_hits(st, C, d, t_best)
        t_best = np.where(inside, t, t_best)
        surf[inside] = _STAND - k
        stand_hit.append(hit)
    if scene.ceiling_m is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = np.where(d[:, 2] > 1e-6, (scene.ceiling_m - C[2]) / d[:, 2], np.inf)
        ceil = tc < t_best
        t_best = np.where(ceil, tc, t_best)
        surf[ceil] = -2

    col = np.zeros((n, 3), np.float32)
    thermal = look.style.thermal
    # ground
    g = surf == 0
    g_amp = np.zeros(0, np.float32)
    if g.any():
        t = t_best[g]
        gx, gy = C[0] + t * d[g, 0], C[1] + t * d[g, 1]
        fp = (t / (f * np.sqrt(np.maximum(-d[g, 2], 1e-3)))).astype(np.float32)
        alb = scene.layout.albedo(gx, gy, fp)
        # pixel-scale roughness: strong on near asphalt and grass, fading with distance
        grain = np.array([m.grain for m in scene.layout.materials()], np.float32)[scene.layout.material_index(gx, gy)]
        g_amp = 0.7 * grain * np.sqrt(np.clip(0.012 / np.maximum(fp * BG_SCALE, 1e-6), 0.0, 1.0)).astype(np.float32)
        up = np.array([0.0, 0.0, 1.0])
        sun_part = (look.light(up) - look.ambient_rgb).astype(np.float32)
        c = alb * look.ambient_rgb.astype(np.float32)
        if scene.offscreen_shade > 0:
            # shade cast by buildings and trees outside the frame: soft blobs without sun
            thr = NormalDist().inv_cdf(1.0 - scene.offscreen_shade)
            nz = noise(gx, gy, fp, 7.0, seed + 11, 3.0) + 0.35 * noise(gx, gy, fp, 2.0, seed + 12, 2.0)
            lit = 1.0 - np.clip((nz - thr) / 0.3 + 0.5, 0.0, 1.0) * min(1.0, look.shadow_strength * 1.6)
            c = c + alb * sun_part * lit[:, None]
        else:
            c = c + alb * sun_part
        pools = _lamp_pools(scene, gx, gy)
        if pools is not None:
            c = c + alb * pools
        col[g] = _thermal(alb, 0.16, 0.22) if thermal else c
    # facades
    for k, fac in enumerate(scene.facades):
        m = surf == k + 1
        if not m.any():
            continue
        s, hz, blk = hits[k]
        t = t_best[m]
        nd = np.abs(d[m, 0] * fac.normal[0] + d[m, 1] * fac.normal[1])
        fp = (t / (f * np.sqrt(np.maximum(nd, 1e-3)))).astype(np.float32)
        sky_ref = look.sky_horizon * 0.6 + look.sky_zenith * 0.4
        alb, emis = shade_facade(fac.blocks, blk[m], s[m], hz[m], fp, sky_ref)
        normal3 = np.array([fac.normal[0], fac.normal[1], 0.0])
        if thermal:
            col[m] = _thermal(alb, 0.2, 0.2) + emis * 0.15
        else:
            col[m] = alb * look.light(normal3).astype(np.float32) + emis
    for k, st in enumerate(scene.stands):
        m = surf == _STAND - k
        if m.any():
            col[m] = _shade_stand(scene, st, stand_hit[k], m, d[m], t_best[m], f)
    # ceiling
    m = surf == -2
    if m.any():
        t = t_best[m]
        cx, cy = C[0] + t * d[m, 0], C[1] + t * d[m, 1]
        fp = (t / (f * np.sqrt(np.maximum(d[m, 2], 1e-3)))).astype(np.float32)
        alb, emis = shade_ceiling(cx, cy, fp, float(3.0 + (seed % 3)), seed)
        col[m] = (_thermal(alb, 0.15, 0.1) if thermal else alb * look.ambient_rgb.astype(np.float32) * 0.8) + emis * (0.2 if thermal else 1.0)
    # sky
    m = surf == -1
    if m.any():
        col[m] = sky_color(d[m], look.sky_zenith, look.sky_horizon, look.cloudiness, seed)
    # aerial perspective / fog on everything but the sky
    solid = surf != -1
    tr = np.exp(-t_best[solid] / look.fog_distance_m).astype(np.float32)[:, None]
    col[solid] = col[solid] * tr + look.fog_rgb.astype(np.float32) * (1 - tr)
    if look.fog_distance_m < 80:
        col[~solid] = col[~solid] * 0.3 + look.fog_rgb.astype(np.float32) * 0.7
    amp = np.zeros(n, np.float32)
    amp[g] = g_amp
    amp[(surf > 0) | (surf <= _STAND)] = 0.04
    amp[surf == -2] = 0.02
    amp[solid] *= tr[:, 0]
    return col.reshape(H, W, 3), (surf == 0).astype(np.float32).reshape(H, W), amp.reshape(H, W)


_STAND = -10  # surface code of the first stand in _cast


def _shade_stand(scene: Scene, st: Stand, hit, m: np.ndarray, d: np.ndarray, t: np.ndarray, f: float) -> np.ndarray:
    """Lit colour of the stand points m (rays d at distances t)."""
    u, c, sf = (h[m] for h in hit)
    normals = np.stack([stand_normal(st, k) for k in range(3)])[sf]
    nd = np.abs((d * normals).sum(1))
    fp = (t / (f * np.sqrt(np.maximum(nd, 1e-3)))).astype(np.float32)
    alb = shade_stand(st, u, c, sf, fp)
    if scene.look.style.thermal:
        return _thermal(alb, 0.2, 0.2)
    out = np.empty_like(alb)
    for k in range(3):
        sel = sf == k
        if sel.any():
            out[sel] = alb[sel] * scene.look.light(stand_normal(st, k)).astype(np.float32)
    return out


def _thermal(alb: np.ndarray, base: float, gain: float) -> np.ndarray:
    """Cold surfaces in a thermal image: dim, low contrast grey driven weakly by albedo."""
    lum = alb @ np.array([0.3, 0.5, 0.2], np.float32)
    v = base + gain * lum
    return np.repeat(v[:, None], 3, 1).astype(np.float32)


def _lamp_pools(scene: Scene, gx: np.ndarray, gy: np.ndarray) -> np.ndarray | None:
    look = scene.look
    lamps = [o for o in scene.distractors if o.lamp]
    if not look.lamps_on or not lamps or look.lamp_intensity <= 0 or look.style.thermal:
        return None
    acc = np.zeros(len(gx), np.float32)
    for o in lamps:
        top = max(p.b[2] for p in o.parts if p.kind == "pole")
        end = o.parts[-1].a
        sig = 0.55 * top
        r2 = (gx - end[0]) ** 2 + (gy - end[1]) ** 2
        acc += np.exp(-r2 / (2 * sig * sig)).astype(np.float32)
    warm = np.array([1.0, 0.8, 0.5], np.float32) * look.lamp_intensity
    return acc[:, None] * warm


def _bake_object_shadows(scene: Scene) -> None:
    look = scene.look
    if look.shadow_strength <= 0.01 or not scene.distractors:
        return
    cam = scene.camera
    mask = np.zeros((cam.height, cam.width), np.uint8)
    for o in scene.distractors:
        for poly in dx.shadow_polygons(o, look.sun_dir):
            uv, dep = cam.project(np.column_stack([poly, np.zeros(len(poly))]))
            if (dep <= 0.3).any():
                continue
            q = np.round(uv * 16).astype(np.int32)
            cv2.fillConvexPoly(mask, cv2.convexHull(q), 255, cv2.LINE_AA, 4)
    apply_shadow_mask(scene.background, mask, scene.ground_mask, look.shadow_strength, blur=1.2)


def apply_shadow_mask(img: np.ndarray, mask: np.ndarray, ground: np.ndarray, strength: float, blur: float) -> None:
    """Darken img in place where mask (uint8 coverage) falls on visible ground."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    pad = int(3 * blur) + 2
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, img.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, img.shape[1])
    m = mask[y0:y1, x0:x1]
    if blur > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    k = 1.0 - (strength / 255.0) * m.astype(np.float32) * ground[y0:y1, x0:x1]
    reg = img[y0:y1, x0:x1]
    reg[...] = (reg.astype(np.float32) * k[..., None]).astype(np.uint8)


# -- distractor placement -------------------------------------------------------------


def sample_ground_in_view(rng: np.random.Generator, scene: Scene, k: int, margin_px: float = 0.0,
                          height_m: float = 0.0, box: Region | None = None) -> np.ndarray:
    """Up to k ground points (k, 2), uniform in metres, whose point at height_m projects into the frame."""
    cam = scene.camera
    b = box or scene.region
    out = []
    got = 0
    for _ in range(30):
        m = max(64, 4 * (k - got))
        x = rng.uniform(b.x0, b.x1, m)
        y = rng.uniform(b.y0, b.y1, m)
        uv, dep = cam.project(np.column_stack([x, y, np.full(m, height_m)]))
        ok = (dep > 0.5) & (uv[:, 0] >= -margin_px) & (uv[:, 0] < cam.width + margin_px) \
            & (uv[:, 1] >= -margin_px) & (uv[:, 1] < cam.height + margin_px)
        pts = np.column_stack([x, y])[ok]
        out.append(pts)
        got += len(pts)
        if got >= k:
            break
    pts = np.concatenate(out)[:k] if out else np.zeros((0, 2))
    return pts


def sample_ground_by_pixel(rng: np.random.Generator, scene: Scene, k: int, height_m: float = 1.6) -> np.ndarray:
    """Up to k walkable ground points (k, 2) inside the crowd region whose point at height_m falls on a
    uniformly drawn pixel: spreads group centres evenly over the image instead of over the (far-heavy) ground."""
    cam, r = scene.camera, scene.region
    if cam.height_m <= height_m + 0.2:
        return sample_ground_in_view(rng, scene, k, 0.0, height_m)
    out = []
    got = 0
    for _ in range(20):
        m = max(32, 3 * (k - got))
        d = cam.rays(rng.uniform(0, cam.width - 1, m), rng.uniform(0, cam.height - 1, m))
        down = d[:, 2] < -1e-6
        t = np.where(down, (cam.height_m - height_m) / np.where(down, -d[:, 2], 1.0), np.nan)
        x, y = t * d[:, 0], t * d[:, 1]
        ok = down & (x >= r.x0) & (x <= r.x1) & (y >= r.y0) & (y <= r.y1)
        ok &= scene.walkable(np.nan_to_num(x), np.nan_to_num(y))
        pts = np.column_stack([x, y])[ok]
        out.append(pts)
        got += len(pts)
        if got >= k:
            break
    return np.concatenate(out)[:k] if out else np.zeros((0, 2))


def _place_furniture(rng: np.random.Generator, scene: Scene, yaw: float, scatter, row, near_wall) -> None:
    """Bikes in racks, café tables, boards and shrubs by the shops, hedges and cones (furniture.py)."""
    kind = scene.layout.kind
    near_wall(int(rng.integers(0, 4)), lambda x, y: fu.make_aframe(rng, x, y, yaw + rng.uniform(-1.0, 1.0)))
    near_wall(int(rng.integers(0, 3)), lambda x, y: fu.make_topiary(rng, x, y))
    if rng.random() < 0.15:
        scatter(int(rng.integers(2, 7)), lambda x, y: fu.make_cone(rng, x, y))
    if not scene.style.outdoor:
        return
    if rng.random() < 0.35:
        scatter(int(rng.integers(1, 3)), lambda x, y: fu.make_bike_rack(rng, x, y, yaw, int(rng.integers(3, 11))))
    if kind in ("plaza", "pedestrian") and rng.random() < 0.3:
        sp = rng.uniform(2.8, 3.6)
        c_line = float(rng.uniform(-10, 10))
        for k in range(int(rng.integers(1, 3))):
            row(c_line + k * sp, sp, lambda x, y: fu.make_parasol(rng, x, y, yaw), 0.1)
    if kind in ("park", "plaza") and rng.random() < 0.4:
        row(float(rng.uniform(-12, 12)), rng.uniform(6.0, 12.0), lambda x, y: fu.make_hedge(rng, x, y, yaw), 0.5)


def _place_distractors(rng: np.random.Generator, scene: Scene) -> list[dx.Distractor]:
    cam, look, lay = scene.camera, scene.look, scene.layout
    r = scene.region
    margin = 0.1 * cam.width
    box = Region(r.x0, r.x1, max(0.3, r.y0), r.y1 + 0.2 * (r.y1 - r.y0))
    placed: list[dx.Distractor] = []
    ca, sa = math.cos(lay.angle), math.sin(lay.angle)

    def free(o: dx.Distractor) -> bool:
        # not inside or against a building
        if any(f.signed_distance(np.array([o.x]), np.array([o.y]))[0] < max(o.footprint) + 0.3 for f in scene.facades):
            return False
        for p in placed:
            if np.hypot(p.x - o.x, p.y - o.y) < max(p.footprint) + max(o.footprint) + 0.4:
                return False
        return True

    def add(o: dx.Distractor) -> None:
        if free(o):
            placed.append(o)

    def scatter(n: int, make) -> None:
        for x, y in sample_ground_in_view(rng, scene, n, margin, 0.0, box):
            add(make(float(x), float(y)))

    def row(c_line: float, spacing: float, make, jitter: float = 0.3) -> None:
        # objects every `spacing` metres along the street axis at cross position c_line
        pts = sample_ground_in_view(rng, scene, 1, margin, 0.0, box)
        if not len(pts):
            return
        a_mid = pts[0, 0] * ca + pts[0, 1] * sa
        for k in range(-30, 31):
            a = a_mid + k * spacing + rng.normal(0, jitter)
            x, y = a * ca - c_line * sa, a * sa + c_line * ca
            uv, dep = cam.project(np.array([[x, y, 0.0]]))
            if dep[0] > 0.5 and -margin <= uv[0, 0] < cam.width + margin and -margin <= uv[0, 1] < cam.height + margin:
                add(make(float(x), float(y)))

    def near_wall(n: int, make) -> None:
        # in front of a building, where shops put their boards and shrubs
        pts = sample_ground_in_view(rng, scene, 40 * n, margin, 0.0, box)
        for f in scene.facades:
            if not len(pts):
                return
            d = f.signed_distance(pts[:, 0], pts[:, 1])
            for x, y in pts[(d > 1.0) & (d < 3.5)][:n]:
                add(make(float(x), float(y)))

    yaw_street = lay.angle
    _place_furniture(rng, scene, yaw_street, scatter, row, near_wall)
    if not scene.style.outdoor:
        if rng.random() < 0.6:
            sp = rng.uniform(6.0, 11.0)
            top = scene.ceiling_m if scene.ceiling_m is not None else 12.0
            for c_line in (rng.uniform(-8, 8), rng.uniform(-8, 8) + sp):
                row(c_line, sp, lambda x, y: dx.make_pillar(rng, x, y, top), 0.0)
        scatter(int(rng.integers(0, 3)), lambda x, y: dx.make_kiosk(rng, x, y, yaw_street))
        scatter(int(rng.integers(0, 4)), lambda x, y: dx.make_planter(rng, x, y, yaw_street))
        scatter(int(rng.integers(0, 4)), lambda x, y: dx.make_bench(rng, x, y, yaw_street + rng.choice([0, math.pi])))
        scatter(int(rng.integers(0, 3)), lambda x, y: dx.make_bin(rng, x, y))
        return placed

    road = [b for b in lay.bands if b.material.kind == "asphalt" and lay.kind == "street"]
    if road:
        b = road[0]
        for _ in range(int(rng.integers(0, 6))):
            c_line = rng.uniform(b.lo + 1.2, b.hi - 1.2)
            pts = sample_ground_in_view(rng, scene, 1, margin, 0.0, box)
            if len(pts):
                a = pts[0, 0] * ca + pts[0, 1] * sa
                x, y = a * ca - c_line * sa, a * sa + c_line * ca
                add(dx.make_car(rng, float(x), float(y), yaw_street + rng.choice([0.0, math.pi])))
        kerb = b.lo - 0.5 if rng.random() < 0.5 else b.hi + 0.5
        if rng.random() < 0.7:
            row(kerb, rng.uniform(12, 30), lambda x, y: dx.make_lamp(rng, x, y, yaw_street + math.pi / 2, look))
        if rng.random() < 0.6:
            far_edge = (b.lo - rng.uniform(2, 6)) if kerb > b.hi else (b.hi + rng.uniform(2, 6))
            row(far_edge, rng.uniform(6, 12), lambda x, y: dx.make_tree(rng, x, y), 0.5)
        if rng.random() < 0.3:
            row(kerb + (0.4 if kerb > b.hi else -0.4), rng.uniform(1.5, 3.0), lambda x, y: dx.make_bollard(rng, x, y), 0.05)
    else:
        if rng.random() < 0.25:
            scatter(int(rng.integers(1, 3)), lambda x, y: dx.make_car(rng, x, y, yaw_street + rng.choice([0, math.pi / 2])))
        if rng.random() < 0.5:
            c0 = float(rng.uniform(-15, 15))
            row(c0, rng.uniform(8, 25), lambda x, y: dx.make_lamp(rng, x, y, yaw_street + math.pi / 2, look))
        n_trees = int(rng.integers(0, 12 if lay.kind == "park" else 6))
        if lay.kind != "park" and rng.random() < 0.4:
            row(float(rng.uniform(-15, 15)), rng.uniform(5, 10), lambda x, y: dx.make_tree(rng, x, y), 0.4)
        else:
            scatter(n_trees, lambda x, y: dx.make_tree(rng, x, y))
        scatter(int(rng.integers(0, 4)), lambda x, y: dx.make_planter(rng, x, y, yaw_street + rng.choice([0, math.pi / 2])))
        if rng.random() < 0.25:
            row(float(rng.uniform(-10, 10)), rng.uniform(1.5, 3.0), lambda x, y: dx.make_bollard(rng, x, y), 0.05)
    scatter(int(rng.integers(0, 4)), lambda x, y: dx.make_bench(rng, x, y, yaw_street + rng.choice([0, math.pi / 2, math.pi])))
    scatter(int(rng.integers(0, 3)), lambda x, y: dx.make_bin(rng, x, y))
    scatter(int(rng.integers(0, 3)), lambda x, y: dx.make_sign(rng, x, y, yaw_street + rng.uniform(-0.3, 0.3)))
    return placed
