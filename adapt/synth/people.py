"""Articulated pedestrians: appearance, walking skeleton, projected figure parts.

A person is a handful of 3D parts (head, hair or cap, neck, torso box, pelvis
or skirt, two-segment arms and legs, shoes, an optional bag) posed by a
walking gait phase and turned to its heading. Skeletons of all people are
built, projected and shaded in one vectorised pass (FigureBatch); each figure
then becomes a short depth-sorted list of anti-aliased cv2 drawing operations,
lit by the scene's sun and ambient light, plus a silhouette in the id buffer
that decides which heads are visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .camera import Camera
from .draw import BOX_FACES, SHIFT
from .styles import Look

# -- appearance ---------------------------------------------------------------------

_CLOTHES = np.array([
    (0.07, 0.07, 0.08), (0.9, 0.9, 0.88), (0.45, 0.45, 0.46), (0.1, 0.13, 0.28), (0.25, 0.35, 0.55),
    (0.75, 0.12, 0.12), (0.95, 0.55, 0.65), (0.95, 0.8, 0.2), (0.2, 0.42, 0.25), (0.75, 0.68, 0.5),
    (0.4, 0.27, 0.18), (0.95, 0.45, 0.12), (0.6, 0.75, 0.9), (0.45, 0.25, 0.55), (0.2, 0.2, 0.2),
], dtype=np.float64)
# street crowds are mostly black, white, grey and denim; bright colours are the exception
_CLOTHES_W = np.array([26, 22, 11, 8, 6, 3, 2.5, 1.5, 1.5, 4, 3, 1, 4, 1, 9], dtype=np.float64)
_BOTTOMS = np.array([
    (0.2, 0.28, 0.45), (0.08, 0.08, 0.09), (0.12, 0.14, 0.25), (0.42, 0.42, 0.43), (0.66, 0.6, 0.45),
    (0.88, 0.88, 0.86), (0.32, 0.4, 0.58), (0.3, 0.22, 0.16),
], dtype=np.float64)
_BOTTOMS_W = np.array([25, 25, 10, 10, 8, 5, 12, 5], dtype=np.float64)
_SKIN_LIGHT = np.array([0.96, 0.8, 0.68])
_SKIN_DARK = np.array([0.36, 0.24, 0.17])
_HAIR = np.array([(0.05, 0.04, 0.04), (0.16, 0.1, 0.07), (0.32, 0.22, 0.13), (0.72, 0.6, 0.38), (0.6, 0.6, 0.58)])
_HAIR_W = np.array([55, 25, 10, 5, 5], dtype=np.float64)

# colour table rows
SKIN, HAIR, TOP, TOP2, BOTTOM, SHOES, BAG, HAT = range(8)


@dataclass(frozen=True, eq=False)
class Appearance:
    colors: np.ndarray  # (8, 3) albedo per material row (SKIN, HAIR, TOP, TOP2, BOTTOM, SHOES, BAG, HAT)
    heat: np.ndarray  # (8,) thermal brightness per material (night_ir)
    hair_style: int  # 0 short, 1 long, 2 cropped, 3 cap
    top_pattern: int  # 0 plain, 1 stripes, 2 chest print, 3 open jacket
    long_sleeves: bool
    bottom_kind: int  # 0 trousers, 1 shorts, 2 skirt
    bag: int  # 0 none, 1 backpack, 2 hand bag, 3 shoulder bag
    build: float  # width factor


def _cum(w) -> np.ndarray:
    c = np.cumsum(np.asarray(w, dtype=np.float64))
    return c / c[-1]


_SHOE_ROWS = np.array([0, 0, 14, 1, 2, 10])
# per material row: (palette, cumulative weights, colour jitter)
_MATERIAL_PALETTES = [
    (None, None, 0.0),  # skin: interpolated below
    (_HAIR, _cum(_HAIR_W), 0.02),
    (_CLOTHES, _cum(_CLOTHES_W), 0.06),
    (_CLOTHES, _cum(_CLOTHES_W), 0.06),
    (_BOTTOMS, _cum(_BOTTOMS_W), 0.06),
    (_CLOTHES[_SHOE_ROWS], _cum(np.ones(len(_SHOE_ROWS))), 0.03),
    (_CLOTHES * 0.8, _cum(_CLOTHES_W), 0.06),
    (_CLOTHES, _cum(_CLOTHES_W), 0.06),
]
_HAIR_STYLE_CUM = _cum((0.52, 0.25, 0.1, 0.13))
_PATTERN_CUM = _cum((0.6, 0.15, 0.12, 0.13))
_BOTTOM_KIND_CUM = _cum((0.72, 0.14, 0.14))
_BAG_CUM = _cum((0.55, 0.2, 0.13, 0.12))
_HEAT = np.array([0.97, 0.72, 0.72, 0.72, 0.66, 0.5, 0.3, 0.6])


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def sample_appearance(rng: np.random.Generator, child: bool = False) -> Appearance:
    """Clothing, skin, hair and accessories of one person (street crowds draw them one by one)."""
    return sample_appearances(rng, np.array([child]))[0]


def sample_appearances(rng: np.random.Generator, child: np.ndarray) -> list[Appearance]:
    """Appearances of len(child) people from one block of random numbers: thousands at the cost of a few."""
    n = len(child)
    u = rng.random((n, 28))
    z = rng.standard_normal((n, 8, 3))
    cols = np.empty((n, 8, 3))
    # skin tones skewed towards the lighter end (the target cameras are in East Asia and Europe)
    cols[:, 0] = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * (u[:, :1] ** 1.8)
    for k in range(1, 8):
        table, cum, jit = _MATERIAL_PALETTES[k]
        c = table[_draw(cum, u[:, k])]
        # brightness varies freely, hue only a little (random per-channel shifts turn crowds pastel)
        cols[:, k] = c * (0.8 + 0.35 * u[:, 8 + k, None]) + z[:, k] * jit * 0.4 * (0.3 + c)
    cols[:, 1:] = np.clip(cols[:, 1:], 0.02, 0.98)
    heat = _HEAT * (0.85 + 0.15 * u[:, 16, None])
    heat[:, 2:6] *= 0.85 + 0.25 * u[:, 17:21]
    heat = np.clip(heat, 0, 1)
    hair, pattern = _draw(_HAIR_STYLE_CUM, u[:, 21]).tolist(), _draw(_PATTERN_CUM, u[:, 22]).tolist()
    bottom, bag = _draw(_BOTTOM_KIND_CUM, u[:, 24]).tolist(), np.where(child, 0, _draw(_BAG_CUM, u[:, 25])).tolist()
    sleeves = (u[:, 23] < 0.45).tolist()
    build = ((0.88 + 0.27 * u[:, 26]) * np.where(child, 0.9, 1.0)).tolist()
    return [Appearance(colors=cols[i], heat=heat[i], hair_style=hair[i], top_pattern=pattern[i], long_sleeves=sleeves[i],
                       bottom_kind=bottom[i], bag=bag[i], build=build[i]) for i in range(n)]


# -- person -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Person:
    x: float  # ground position, metres
    y: float
    height_m: float
    heading: float  # walking direction, radians from +X towards +Y
    phase: float  # gait phase, radians
    appearance: Appearance
    speed: float = 1.3  # m/s; 0 means standing
    pose: int = 0  # POSE_WALK, POSE_PHONE, POSE_SEATED or POSE_CHEER
    child: bool = False
    group: int = -1  # id of the group the person walks with (-1: alone)
    z: float = 0.0  # height of the floor the person stands or sits on (a tribune step), metres


# poses: walking or standing; one forearm raised to a phone; seated (tribunes); both arms up (rallies, stands)
POSE_WALK, POSE_PHONE, POSE_SEATED, POSE_CHEER = range(4)
SEAT_FRAC = 0.26  # seat height as a fraction of standing height (0.44 m for 1.7 m)


def sample_heights(rng: np.random.Generator, n: int, child_prob: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Standing heights (n,) in metres and child flags: adults 1.5-1.95 m, a few children 0.95-1.45 m."""
    kids = rng.random(n) < child_prob
    h = np.where(kids, rng.uniform(0.95, 1.45, n), np.clip(rng.normal(1.7, 0.085, n), 1.5, 1.95))
    return h, kids


def sample_height(rng: np.random.Generator, child_prob: float = 0.06) -> tuple[float, bool]:
    if rng.random() < child_prob:
        return float(rng.uniform(0.95, 1.45)), True
    return float(np.clip(rng.normal(1.7, 0.085), 1.5, 1.95)), False


def make_person(rng: np.random.Generator, x: float, y: float, *, height_m: float | None = None,
                heading: float | None = None, speed: float | None = None, child: bool | None = None,
                group: int = -1, pose: int | None = None, z: float = 0.0) -> Person:
    """A person at ground (x, y) with random appearance; unspecified attributes are sampled."""
    if height_m is None:
        h, c = sample_height(rng, 0.06 if child is None else float(child))
    else:
        h, c = float(height_m), (height_m < 1.45 if child is None else bool(child))
    if speed is None:
        speed = 0.0 if rng.random() < 0.25 else float(np.clip(rng.normal(1.25, 0.25), 0.5, 2.0))
    return Person(
        x=float(x), y=float(y), height_m=h,
        heading=float(rng.uniform(-math.pi, math.pi)) if heading is None else float(heading),
        phase=float(rng.uniform(0, 2 * math.pi)),
        appearance=sample_appearance(rng, c),
        speed=float(speed),
        pose=int(rng.random() < (0.1 if speed == 0 else 0.04)) if pose is None else int(pose),
        child=c, group=group, z=float(z),
    )


def make_people(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, height_m: np.ndarray, child: np.ndarray,
                heading: np.ndarray, speed: np.ndarray, pose: np.ndarray, z: np.ndarray | float = 0.0) -> list[Person]:
    """People at ground points (x, y) with everything but appearance and gait phase given, in one batch."""
    n = len(x)
    phase = rng.uniform(0, 2 * math.pi, n).tolist()
    apps = sample_appearances(rng, np.asarray(child, bool))
    cols = [np.asarray(a, np.float64).tolist() for a in (x, y, height_m, heading, speed)]
    zs = np.broadcast_to(np.asarray(z, np.float64), (n,)).tolist()
    kids, poses = np.asarray(child, bool).tolist(), np.asarray(pose, np.int64).tolist()
    return [Person(x=cols[0][i], y=cols[1][i], height_m=cols[2][i], heading=cols[3][i], phase=phase[i], appearance=apps[i],
                   speed=cols[4][i], pose=poses[i], child=kids[i], z=zs[i]) for i in range(n)]


def head_radius_m(height_m: np.ndarray | float) -> np.ndarray | float:
    """Head (sphere) radius including hair: about 0.11 m for adults, relatively larger for children."""
    return 0.04 * np.asarray(height_m) + 0.042


# -- skeleton -----------------------------------------------------------------------

# joint slots
(HEAD, HAIR_C, NECK, SH_L, SH_R, EL_L, EL_R, WR_L, WR_R, HIP_L, HIP_R, KN_L, KN_R, AN_L, AN_R, TO_L, TO_R,
 CAP, BRIM0, BRIM1, LH0, LH1, HEAD_HI, FEET) = range(24)
TORSO = 24  # 8 corners
PELVIS = 32  # 8 corners (pelvis or skirt)
BAGBOX = 40  # 8 corners
SHC_L, SHC_R, TORSO_HI = 48, 49, 50  # shoulder capsule ends; a point towards the light
N_JOINTS = 51
_BOX_SIGNS = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)


def _box_local(a, b_bot, b_top, d_bot, d_top, z0, z1, n: int) -> np.ndarray:
    """(N, 8, 3) local (forward, left, up) corners of a tapered box on the body axis (BOX_FACES order)."""
    out = np.zeros((n, 8, 3))
    for k, (sa, sb) in enumerate(_BOX_SIGNS):
        out[:, k] = np.stack(np.broadcast_arrays(a + sa * d_bot, sb * b_bot, z0), -1)
        out[:, k + 4] = np.stack(np.broadcast_arrays(a + sa * d_top, sb * b_top, z1), -1)
    return out


def skeletons(people: list[Person], sun_dir: np.ndarray) -> np.ndarray:
    """World joint positions (N, N_JOINTS, 3) for people posed by their gait phase."""
    n = len(people)
    H = np.array([p.height_m for p in people])
    ph = np.array([p.phase for p in people])
    hd = np.array([p.heading for p in people])
    amp = np.clip(np.array([p.speed for p in people]) / 1.4, 0.0, 1.25)
    build = np.array([p.appearance.build for p in people])
    pose = np.array([p.pose for p in people])
    phone = pose == POSE_PHONE
    seated = pose == POSE_SEATED
    cheer = pose == POSE_CHEER
    skirt = np.array([p.appearance.bottom_kind == 2 for p in people])
    bag = np.array([p.appearance.bag for p in people])
    rh = head_radius_m(H)

    L = np.zeros((n, N_JOINTS, 3))  # local (forward, left, up)
    zero = np.zeros(n)
    sh_z = H - 2 * rh - 0.045 * H
    hip_z = 0.52 * H
    ankle_z = 0.045 * H
    seg = (hip_z - ankle_z) / 2
    sw = 0.115 * H * build
    hw = 0.085 * H * build
    td = 0.062 * H * build
    leg_b = 0.052 * H * build

    # legs: hip swing theta, knee flex kappa (flexed while the leg swings forward)
    A = 0.42 * amp
    for hip, knee, ankle, toe, sgn, off in ((HIP_L, KN_L, AN_L, TO_L, 1.0, 0.0), (HIP_R, KN_R, AN_R, TO_R, -1.0, math.pi)):
        th = A * np.sin(ph + off)
        kap = amp * (0.12 + 0.85 * np.maximum(0.0, np.cos(ph + off)) ** 2)
        L[:, hip] = np.stack([zero, sgn * leg_b, hip_z], -1)
        L[:, knee] = L[:, hip] + np.stack([seg * np.sin(th), zero, -seg * np.cos(th)], -1)
        L[:, ankle] = L[:, knee] + np.stack([seg * np.sin(th - kap), zero, -seg * np.cos(th - kap)], -1)
        L[:, toe] = L[:, ankle] + np.stack([0.075 * H, zero, -0.025 * H], -1)
    # a swinging leg is vertically shorter: drop the body so the lower ankle stays on the ground
    drop = np.minimum(L[:, AN_L, 2], L[:, AN_R, 2]) - ankle_z
    L[:, :TO_R + 1, 2] -= drop[:, None]
    top_z = sh_z - drop

    # arms swing against the legs
    ua = 0.175 * H
    fa = 0.16 * H
    for sh, el, wr, sgn, off in ((SH_L, EL_L, WR_L, 1.0, math.pi), (SH_R, EL_R, WR_R, -1.0, 0.0)):
        psi = 0.75 * A * np.sin(ph + off)
        eps = 0.2 + 0.7 * np.maximum(0.0, psi) + 0.15 * amp
        if sgn < 0:
            eps = np.where(phone, 1.9, eps)
            psi = np.where(phone, 0.25, psi)
        # seated hands rest in the lap; cheering arms point up, a little apart
        eps = np.where(seated, 1.1, np.where(cheer, 0.15, eps))
        psi = np.where(seated, 0.35, np.where(cheer, 2.75 + 0.2 * np.sin(ph + off), psi))
        L[:, sh] = np.stack([zero, sgn * (sw - 0.01 * H), top_z - 0.015 * H], -1)
        L[:, el] = L[:, sh] + np.stack([ua * np.sin(psi), sgn * 0.03 * H, -ua * np.cos(psi)], -1)
        L[:, wr] = L[:, el] + np.stack([fa * np.sin(psi + eps), sgn * 0.01 * H, -fa * np.cos(psi + eps)], -1)

    head_z = H - rh - drop
    L[:, HEAD] = np.stack([zero, zero, head_z], -1)
    L[:, NECK] = np.stack([zero, zero, top_z + 0.01 * H], -1)
    L[:, HAIR_C] = np.stack([-0.3 * rh, zero, head_z + 0.22 * rh], -1)
    L[:, CAP] = np.stack([0.02 * rh, zero, head_z + 0.42 * rh], -1)
    L[:, BRIM0] = np.stack([0.6 * rh, zero, head_z + 0.3 * rh], -1)
    L[:, BRIM1] = np.stack([1.35 * rh, zero, head_z + 0.22 * rh], -1)
    L[:, LH0] = np.stack([-0.55 * rh, zero, head_z], -1)
    L[:, LH1] = np.stack([-0.75 * rh, zero, head_z - 2.3 * rh], -1)
    L[:, SHC_L] = np.stack([zero, sw - td * 0.8, top_z - 0.012 * H], -1)
    L[:, SHC_R] = np.stack([zero, -(sw - td * 0.8), top_z - 0.012 * H], -1)

    hip_top = hip_z - drop
    L[:, TORSO:TORSO + 8] = _box_local(0.0, hw, sw, td * 0.92, td, hip_top - 0.02 * H, top_z - 0.01 * H, n)
    knee_z = np.minimum(L[:, KN_L, 2], L[:, KN_R, 2])
    pel = _box_local(0.0, hw * 1.02, hw * 1.02, td * 0.95, td * 0.95, hip_top - 0.085 * H, hip_top + 0.02 * H, n)
    sk = _box_local(0.0, hw * 1.55, hw * 1.05, td * 1.5, td * 0.95, knee_z + 0.03 * H, hip_top + 0.02 * H, n)
    L[:, PELVIS:PELVIS + 8] = np.where(skirt[:, None, None], sk, pel)
    # bags: backpack on the back, hand bag under the right hand, shoulder bag at the left hip
    bp = _box_local(-(td + 0.045 * H), 0.085 * H, 0.09 * H, 0.04 * H, 0.045 * H, top_z - 0.24 * H, top_z - 0.03 * H, n)
    hb_c = L[:, WR_R] + np.array([0.0, 0.0, -0.06]) * H[:, None]
    hb = _box_local(0.0, 0.03 * H, 0.03 * H, 0.07 * H, 0.06 * H, hb_c[:, 2] - 0.07 * H, hb_c[:, 2] + 0.02 * H, n)
    hb[:, :, 0] += hb_c[:, 0, None]
    hb[:, :, 1] += hb_c[:, 1, None] - 0.02 * H[:, None]
    sb = _box_local(0.0, 0.035 * H, 0.035 * H, 0.07 * H, 0.065 * H, hip_top - 0.03 * H, hip_top + 0.1 * H, n)
    sb[:, :, 1] += (sw + 0.045 * H)[:, None]
    L[:, BAGBOX:BAGBOX + 8] = np.where((bag == 1)[:, None, None], bp, np.where((bag == 2)[:, None, None], hb, sb))
    if seated.any():
        _sit(L, np.nonzero(seated)[0], H, hip_z - drop, ankle_z)

    # local -> world
    c, s = np.cos(hd)[:, None], np.sin(hd)[:, None]
    W = np.empty_like(L)
    W[..., 0] = np.array([p.x for p in people])[:, None] + c * L[..., 0] - s * L[..., 1]
    W[..., 1] = np.array([p.y for p in people])[:, None] + s * L[..., 0] + c * L[..., 1]
    W[..., 2] = L[..., 2] + np.array([p.z for p in people])[:, None]
    # points towards the light, for highlights
    W[:, HEAD_HI] = W[:, HEAD] + 0.4 * rh[:, None] * sun_dir[None, :]
    W[:, TORSO_HI] = W[:, NECK] + 0.2 * sun_dir[None, :]
    return W


def _sit(L: np.ndarray, s: np.ndarray, H: np.ndarray, hip_z: np.ndarray, ankle_z: np.ndarray) -> None:
    """Seat people `s` of local skeletons L: the body drops onto a seat, thighs forward, shins down to the floor."""
    h = H[s]
    lower = hip_z[s] - SEAT_FRAC * h
    L[s, :, 2] -= lower[:, None]
    L[s, FEET, 2] = 0.0  # the floor stays where it is
    for hip, knee, ankle, toe in ((HIP_L, KN_L, AN_L, TO_L), (HIP_R, KN_R, AN_R, TO_R)):
        L[s, knee] = L[s, hip] + np.stack([0.245 * h, np.zeros(len(s)), np.zeros(len(s))], -1)
        L[s, ankle] = L[s, knee] + np.stack([0.03 * h, np.zeros(len(s)), ankle_z[s] - L[s, knee, 2]], -1)
        L[s, toe] = L[s, ankle] + np.stack([0.075 * h, np.zeros(len(s)), -0.025 * h], -1)
    # a seated pelvis is the lap: as deep as the thighs, not as tall
    pel = L[s, PELVIS:PELVIS + 8]
    pel[:, :, 0] = np.where(pel[:, :, 0] > 0, 0.2 * h[:, None], pel[:, :, 0])
    pel[:, :4, 2] = (SEAT_FRAC * h - 0.02 * h)[:, None]
    L[s, PELVIS:PELVIS + 8] = pel


# -- batch of projected, shaded figures -----------------------------------------------

# limbs: (joint a, joint b, width as a fraction of height (scaled by build), or None for head-relative widths)
_LIMBS = [
    (HIP_L, KN_L, 0.095), (HIP_R, KN_R, 0.095), (KN_L, AN_L, 0.07), (KN_R, AN_R, 0.07),
    (AN_L, TO_L, 0.05), (AN_R, TO_R, 0.05), (SH_L, EL_L, 0.058), (SH_R, EL_R, 0.058),
    (EL_L, WR_L, 0.045), (EL_R, WR_R, 0.045), (NECK, HEAD, 0.065), (SHC_L, SHC_R, 0.118),
    (LH0, LH1, None), (BRIM0, BRIM1, None), (HIP_L, AN_L, 0.075), (HIP_R, AN_R, 0.075),
    (SH_L, WR_L, 0.05), (SH_R, WR_R, 0.05),
]
(THIGH_L, THIGH_R, SHIN_L, SHIN_R, SHOE_L, SHOE_R, UARM_L, UARM_R, FARM_L, FARM_R, NECK_L, SHOULDERS,
 LONG_HAIR, BRIM, LEG_L, LEG_R, ARM_L, ARM_R) = range(len(_LIMBS))
_LA = np.array([a for a, _, _ in _LIMBS])
_LB = np.array([b for _, b, _ in _LIMBS])
_LA_L, _LB_L = _LA.tolist(), _LB.tolist()
# discs: (joint, radius as a multiple of the head radius)
_DISCS = [(HEAD, 1.0), (HEAD_HI, 0.55), (HAIR_C, 0.97), (HAIR_C, 0.87), (CAP, 0.92), (WR_L, 0.42), (WR_R, 0.42), (HEAD, 0.93)]
D_HEAD, D_HEAD_HI, D_HAIR, D_CROP, D_CAP, D_HAND_L, D_HAND_R, D_HEAD_BACK = range(len(_DISCS))
_DJ = np.array([j for j, _ in _DISCS])
_DR = np.array([r for _, r in _DISCS])
_DJ_L = _DJ.tolist()
# light levels in the colour table
LV_BASE, LV_HI, LV_HEAD, LV_HEAD_HI = 0, 1, 2, 3  # then 4..9: bag box faces (BOX_FACES order)
_ONE = float(1 << SHIFT)
LOD_TINY_PX = 16.0  # people shorter than this are drawn as a few blobs
LOD_SMALL_PX = 40.0  # and shorter than this as straight limbs, a torso and a head: a packed crowd's people


def _box_visible(corners_w: np.ndarray, normals: np.ndarray, cam_c: np.ndarray) -> np.ndarray:
    """(N, 6) which faces of per-person boxes (N, 8, 3) face the camera."""
    fc = corners_w[:, BOX_FACES].mean(2)  # (N, 6, 3)
    return np.einsum("nfk,nfk->nf", normals, cam_c[None, None, :] - fc) > 0


class FigureBatch:
    """Every person of one frame, posed, projected and shaded, ready to draw one at a time.

    All geometry and colour maths is vectorised over the batch here; drawing a
    person is then a short loop of cv2 calls on plain Python numbers.
    """

    def __init__(self, cam: Camera, look: Look, people: list[Person], ids_only: bool = False):
        """ids_only: just what draw_ids needs (a label count without pixels), not colours or drawing ops."""
        self.cam, self.look, self.people = cam, look, people
        n = self.n = len(people)
        if n == 0:
            self.world = np.zeros((0, N_JOINTS, 3))
            self.uv = np.zeros((0, N_JOINTS, 2))
            self.depth = np.zeros((0, N_JOINTS))
            self.head_radius = self.head_diam_px = self.height_px = np.zeros(0)
            return
        f = cam.focal_px
        W = self.world = skeletons(people, look.sun_dir)
        uv, d = cam.project(W.reshape(-1, 3))
        self.uv = uv.reshape(n, N_JOINTS, 2)
        self.depth = d.reshape(n, N_JOINTS)
        dpos = np.maximum(self.depth, 1e-3)
        H = np.array([p.height_m for p in people])
        build = np.array([p.appearance.build for p in people])
        rh = self.head_radius = head_radius_m(H)
        self.head_diam_px = 2 * rh * f / dpos[:, HEAD]
        top = W[:, FEET].copy()
        top[:, 2] += H
        uv_top, _ = cam.project(top)
        self.height_px = np.linalg.norm(uv_top - self.uv[:, FEET], axis=1)

        # limb widths (px) and depths
        wm = np.array([[(w if w is not None else 0.0) for _, _, w in _LIMBS]]) * (H * build)[:, None]
        wm[:, LONG_HAIR] = 1.7 * rh
        wm[:, BRIM] = 0.7 * rh
        wm[:, NECK_L] = 0.065 * H
        ld = 0.5 * (dpos[:, _LA] + dpos[:, _LB])
        self.limb_px = wm * f / ld
        self.q = np.round(self.uv * _ONE).astype(np.int32)
        self.lw = np.maximum(1, np.rint(self.limb_px)).astype(int).tolist()
        if ids_only:
            return
        self.limb_depth = np.minimum(self.depth[:, _LA], self.depth[:, _LB])
        self.disc_px = rh[:, None] * _DR[None, :] * f / dpos[:, _DJ]
        self.disc_px[:, [D_HAND_L, D_HAND_R]] = (0.045 * H)[:, None] * f / dpos[:, [WR_L, WR_R]]

        # light direction in the image (for highlights), per person
        sun_uv = self.uv[:, TORSO_HI] - self.uv[:, NECK]
        self.sun_img = sun_uv / np.maximum(np.linalg.norm(sun_uv, axis=1, keepdims=True), 1e-6)
        # who faces away from the camera (hair instead of face)
        fwd = W[:, BRIM1, :2] - W[:, HEAD, :2]
        to_cam = cam.center[None, :2] - W[:, HEAD, :2]
        self.away = (fwd * to_cam).sum(1) < -0.2 * np.linalg.norm(fwd, axis=1) * np.linalg.norm(to_cam, axis=1)

        # box faces of the torso frame (bags share the body's orientation)
        hd = np.array([p.heading for p in people])
        fw = np.stack([np.cos(hd), np.sin(hd), np.zeros(n)], 1)
        lf = np.stack([-np.sin(hd), np.cos(hd), np.zeros(n)], 1)
        up = np.tile([0.0, 0.0, 1.0], (n, 1))
        normals = np.stack([lf, -fw, -lf, fw, up, -up], 1)  # BOX_FACES order
        self.bag_vis = _box_visible(W[:, BAGBOX:BAGBOX + 8], normals, cam.center)
        self.bag_depth = self.depth[:, BAGBOX:BAGBOX + 8][:, BOX_FACES].mean(2)
        # which torso side faces the camera most (for prints and stripes)
        tc = W[:, TORSO:TORSO + 8][:, BOX_FACES[:4]].mean(2)
        v = cam.center[None, None, :] - tc
        v /= np.linalg.norm(v, axis=2, keepdims=True)
        self.torso_face_score = np.einsum("nfk,nfk->nf", normals[:, :4], v)

        self.colors = self._color_tables(people, normals, dpos[:, FEET])
        # plain-Python copies for the per-person drawing loop (numpy scalars are slow there); the big
        # per-joint and per-colour tables are converted person by person, as each is drawn
        hw = self.limb_px * 0.45
        hw[:, SHOULDERS] = self.limb_px[:, SHOULDERS] * 0.5
        self.lwh = np.maximum(1, np.rint(hw)).astype(int)
        off = self.sun_img[:, None, :] * self.limb_px[:, :, None] * 0.22
        off[:, SHOULDERS] *= 0.18 / 0.22
        self.hoff = np.rint(off * _ONE).astype(int)
        self.ldep = self.limb_depth.tolist()
        self.torso_depth = self.depth[:, TORSO:TORSO + 8].mean(1).tolist()
        self.pelvis_depth = self.depth[:, PELVIS:PELVIS + 8].mean(1).tolist()
        self.drad = np.maximum(1, np.rint(self.disc_px * _ONE)).astype(int).tolist()
        self.lit = look.sun_rgb.max() > 0.08 and not look.style.thermal

    def _color_tables(self, people: list[Person], normals: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """(person, material, light level, RGB 0-255); fogged and graded per person."""
        look = self.look
        n = len(people)
        if look.style.thermal:
            k = np.array([0.9, 1.0, 0.93, 1.0, 0.86, 0.9, 0.86, 0.9, 0.95, 0.8])
            lv = np.broadcast_to(k[None, :, None], (n, 10, 3))
            alb = np.stack([np.repeat(p.appearance.heat[:, None], 3, 1) for p in people])
        else:
            s = look.sun_dir
            cyl = max(s[2], 0.0) * 0.45 + 0.2
            face = np.clip(normals @ s, 0.0, None)  # (N, 6)
            k = np.concatenate([np.tile([cyl, min(1.0, cyl + 0.55), cyl, min(1.0, cyl + 0.6)], (n, 1)), face], 1)
            lv = look.ambient_rgb[None, None, :] + look.sun_rgb[None, None, :] * k[:, :, None]
            alb = np.stack([p.appearance.colors for p in people])
        tab = alb[:, :, None, :] * lv[:, None, :, :]  # (N, 8, 10, 3)
        t = np.exp(-dist / look.fog_distance_m)[:, None, None, None]
        tab = tab * t + look.fog_rgb * (1.0 - t)
        return look.grade(tab.reshape(-1, 3)).reshape(tab.shape) * 255.0

    # -- drawing ----------------------------------------------------------------------
    def ops(self, i: int) -> list[tuple]:
        """Drawing operations of person i, back to front: (depth, kind, args...)."""
        p = self.people[i]
        app = p.appearance
        hp = self.height_px[i]
        small = hp < LOD_SMALL_PX
        # a small figure uses a few materials at two light levels; a full one all of them
        C = self.colors[i, :, :4 if small else 10].tolist()
        q = self.q[i]
        ql, lw, ldep, drad = q.tolist(), self.lw[i], self.ldep[i], self.drad[i]
        out: list[tuple] = []

        def line(k: int, mat: int, bias: float = 0.0) -> None:
            a, b = ql[_LA_L[k]], ql[_LB_L[k]]
            out.append((ldep[k] - bias, 0, (a[0], a[1]), (b[0], b[1]), lw[k], C[mat][LV_BASE]))

        def disc(k: int, mat: int, lv: int, depth: float = -1e9) -> None:
            c = ql[_DJ_L[k]]
            out.append((depth, 1, (c[0], c[1]), drad[k], C[mat][lv]))

        if hp < LOD_TINY_PX:
            legs = BOTTOM if app.bottom_kind == 0 else SKIN
            line(LEG_L, legs)
            line(LEG_R, legs)
            out.append((float(self.depth[i, TORSO]), 2, cv2.convexHull(q[TORSO:TORSO + 8]), C[TOP][LV_BASE]))
            out.sort(key=lambda o: -o[0])
            hair = self.away[i] or app.hair_style == 1
            disc(D_HEAD, HAIR if hair else SKIN, LV_HEAD)
            return out
        if small:
            legs = BOTTOM if app.bottom_kind == 0 else SKIN
            line(LEG_L, legs)
            line(LEG_R, legs)
            line(ARM_L, TOP, 0.02)
            line(ARM_R, TOP, 0.02)
            dt = self.torso_depth[i]
            out.append((dt, 2, cv2.convexHull(q[TORSO:TORSO + 8]), C[TOP][LV_BASE]))
            line(SHOULDERS, TOP)
            out[-1] = (dt - 1e-4,) + out[-1][1:]
            out.sort(key=lambda o: -o[0])
            self._head(i, app, line, disc)
            return out

        hi = hp >= 36 and self.lit
        lwh, hoff = self.lwh[i].tolist(), self.hoff[i].tolist()

        def limb(k: int, mat: int, bias: float = 0.0, depth: float | None = None) -> None:
            line(k, mat, bias)
            if depth is not None:
                out[-1] = (depth,) + out[-1][1:]
            if hi:
                # a thinner, lighter stroke shifted towards the light: a cylinder's shading
                a, b, (dx, dy) = ql[_LA_L[k]], ql[_LB_L[k]], hoff[k]
                d = out[-1][0] - 1e-4
                out.append((d, 0, (a[0] + dx, a[1] + dy), (b[0] + dx, b[1] + dy), lwh[k], C[mat][LV_HI]))

        thigh_m = BOTTOM if app.bottom_kind != 2 else SKIN
        shin_m = BOTTOM if app.bottom_kind == 0 else SKIN
        for th, sh, sho in ((THIGH_L, SHIN_L, SHOE_L), (THIGH_R, SHIN_R, SHOE_R)):
            if app.bottom_kind != 2:
                limb(th, thigh_m)
            limb(sh, shin_m)
            line(sho, SHOES, 1e-3)
        for ua, fa, hand in ((UARM_L, FARM_L, D_HAND_L), (UARM_R, FARM_R, D_HAND_R)):
            limb(ua, TOP, 0.02)
            limb(fa, TOP if app.long_sleeves else SKIN, 0.02)
            disc(hand, SKIN, LV_BASE, float(self.depth[i, _DJ[hand]]) - 0.021)
        # pelvis / skirt and torso as rounded hulls; shoulders as a capsule on top
        dt = self.torso_depth[i]
        out.append((self.pelvis_depth[i], 2, cv2.convexHull(q[PELVIS:PELVIS + 8]), C[BOTTOM][LV_BASE]))
        out.append((dt, 2, cv2.convexHull(q[TORSO:TORSO + 8]), C[TOP][LV_BASE]))
        limb(SHOULDERS, TOP, depth=dt - 1e-4)
        if app.bag:
            vis = self.bag_vis[i]
            qb = q[BAGBOX:BAGBOX + 8]
            for k in range(6):
                if vis[k]:
                    out.append((float(self.bag_depth[i, k]), 2, qb[BOX_FACES[k]], C[BAG][4 + k]))
        self._pattern(i, out, dt - 3e-4)
        line(NECK_L, SKIN, -0.5)  # behind the torso top, under the head
        out.sort(key=lambda o: -o[0])

        if app.hair_style == 1:
            line(LONG_HAIR, HAIR)
            out.insert(0, out.pop())
        self._head(i, app, line, disc)
        return out

    def _head(self, i: int, app: Appearance, line, disc) -> None:
        """Head ops, drawn last: skin sphere, a lit cap towards the light, then hair (or a cap) seen from the camera's side."""
        disc(D_HEAD, SKIN, LV_HEAD)
        if self.disc_px[i, D_HEAD] >= 3:
            disc(D_HEAD_HI, SKIN, LV_HEAD_HI)
        if app.hair_style == 3:
            disc(D_CAP, HAT, LV_HEAD)
            line(BRIM, HAT)
        else:
            disc(D_CROP if app.hair_style == 2 else D_HAIR, HAIR, LV_HEAD)
            if self.away[i]:
                disc(D_HEAD_BACK, HAIR, LV_HEAD)

    def _pattern(self, i: int, out: list, depth: float) -> None:
        """Stripes, a chest print or an open jacket on the torso side facing the camera most."""
        app = self.people[i].appearance
        if app.top_pattern == 0:
            return
        sc = self.torso_face_score[i]
        best = int(np.argmax(sc))
        if sc[best] <= 0.15:
            return
        face = self.uv[i, TORSO + BOX_FACES[best]]
        b0, b1, t1, t0 = face
        hpx = float(np.linalg.norm((t0 + t1) / 2 - (b0 + b1) / 2))
        col = self.colors[i, TOP2, LV_BASE].tolist()
        if app.top_pattern == 1 and hpx >= 8:
            for fr in (0.2, 0.45, 0.7):
                p, r = (b0 + (t0 - b0) * fr) * _ONE, (b1 + (t1 - b1) * fr) * _ONE
                out.append((depth, 0, (int(p[0]), int(p[1])), (int(r[0]), int(r[1])), max(1, int(round(hpx * 0.08))), col))
        elif app.top_pattern in (2, 3) and best == 3:
            box = ((0.3, 0.45), (0.7, 0.45), (0.7, 0.8), (0.3, 0.8)) if app.top_pattern == 2 else \
                ((0.38, 0.0), (0.62, 0.0), (0.62, 1.0), (0.38, 1.0))
            pts = np.array([b0 + (b1 - b0) * a + (t0 - b0) * c for a, c in box]) * _ONE
            out.append((depth, 2, np.round(pts).astype(np.int32), col))

    def draw(self, img: np.ndarray, i: int) -> None:
        aa = cv2.LINE_AA
        for o in self.ops(i):
            kind = o[1]
            if kind == 0:
                cv2.line(img, o[2], o[3], o[5], o[4], aa, SHIFT)
            elif kind == 1:
                cv2.circle(img, o[2], o[3], o[4], -1, aa, SHIFT)
            else:
                cv2.fillConvexPoly(img, o[2], o[3], aa, SHIFT)

    def draw_ids(self, ids: np.ndarray, i: int) -> int:
        """Draw person i's silhouette into the id buffer (body 2i+2, head 2i+1); returns the head's pixel count."""
        q = self.q[i]
        body, head = 2 * i + 2, 2 * i + 1
        lt = cv2.LINE_8
        cv2.fillConvexPoly(ids, cv2.convexHull(q[TORSO:TORSO + 8]), body, lt, SHIFT)
        for k in (LEG_L, LEG_R):
            a, b = q[_LA[k]], q[_LB[k]]
            cv2.line(ids, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), body, self.lw[i][k], lt, SHIFT)
        c = self.uv[i, HEAD]
        r = float(self.head_diam_px[i]) / 2
        cq = q[HEAD]
        cv2.circle(ids, (int(cq[0]), int(cq[1])), max(int(round(r * _ONE)), 1), head, -1, lt, SHIFT)
        Hh, Ww = ids.shape
        x0, x1 = max(int(c[0] - r) - 1, 0), min(int(c[0] + r) + 2, Ww)
        y0, y1 = max(int(c[1] - r) - 1, 0), min(int(c[1] + r) + 2, Hh)
        if x1 <= x0 or y1 <= y0:
            return 0
        area = int(np.count_nonzero(ids[y0:y1, x0:x1] == head))
        if area == 0:
            xi, yi = int(round(c[0])), int(round(c[1]))
            if 0 <= xi < Ww and 0 <= yi < Hh:
                ids[yi, xi] = head
                area = 1
        return area
