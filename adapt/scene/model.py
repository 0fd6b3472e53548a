"""The scene model of one fixed camera: built from its frames, checked, stored with its data.

``build_scene_model`` runs the background, motion and geometry estimates over
a camera's frames and names every reason the result cannot be trusted
(``SceneModel.problems``). A model with problems is kept for the report, but
adaptation then falls back to the paper's two stages alone
(``SceneModel.usable``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from adapt.scene.background import Background, estimate_background, foreground
from adapt.scene.composite import WalkMap, walk_map
from adapt.scene.geometry import (
    BLUR_GROWTH,
    DEFAULT_FILL,
    MIN_SHARE,
    blob_people,
    blob_stats,
    camera_from_calibration,
    fit_camera,
    people_in_motion,
    person_blobs,
    silhouette_fill,
    size_disagreement,
    size_line,
)
from adapt.scene.motion import MotionStats, motion_stats
from adapt.store.buffer import capture_seconds
from adapt.synth.camera import Camera

MIN_FRAMES = 30  # fewer frames than this cannot separate people from background
MAX_FRAMES = 200  # the estimates need spread over time, not every frame
MIN_MOVING_SHARE = 0.005  # fewer cells than this ever moved: nothing walked through
MAX_FOREGROUND_SHARE = 0.4  # a median frame more covered than this: no frame is empty enough
MAX_UNSEEN_SHARE = 0.3  # more of the image never seen empty than this
MAX_SHIFT_PX = 2.0  # the camera moved if frames sit further than this from the empty scene
LIGHTING_STEP = 40.0  # grey levels between the mean brightness of two lighting groups
MAX_SIZE_RESIDUAL = 0.35  # median |log| error of the fitted person sizes
CALIBRATION_TOL = 0.4  # |log| of person sizes between calibration and observation: 50% off
HEAD_DROP = 0.1  # a head's centre sits this share of a person's height below the top of the silhouette


@dataclass(frozen=True)
class BlobPeople:
    """The people the foreground of one frame shows: per blob a count, and head points that carry it."""

    boxes: np.ndarray  # (m, 4) x, y, w, h of each blob that holds people
    counts: np.ndarray  # (m,) people in each blob, fractional
    heads: np.ndarray  # (k, 2) x, y of the head points
    head_px: np.ndarray  # (k,) head sizes in pixels
    blob: np.ndarray  # (k,) index into boxes of each head point

    @property
    def weights(self) -> np.ndarray:
        """(k,) people each head point carries: its blob's count shared among the blob's points."""
        per = np.bincount(self.blob, minlength=len(self.counts)).astype(np.float64)
        return self.counts[self.blob] / np.maximum(per[self.blob], 1)


@dataclass(eq=False)
class SceneModel:
    backgrounds: list[Background]
    motion: MotionStats
    camera: Camera | None  # the renderer camera that reproduces people's sizes, or None
    size_source: str  # "observed people", "calibration" or "none"
    size_residual: float  # median |log(fitted / observed)| of person heights
    horizon: float  # image row of the horizon (feet of a 0 px person)
    walk: WalkMap
    group_of_frame: np.ndarray  # (T,) index into backgrounds per input frame
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that do not stop the scene model being used
    people_in_motion: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) rough people per frame from foreground
    fill: float = DEFAULT_FILL  # one person's foreground pixels over their height squared, as measured on this camera

    @property
    def max_people(self) -> int:
        """Most people a composite holds: twice the busiest frames' rough count, 5 to 300."""
        busy = float(np.quantile(self.people_in_motion, 0.95)) if len(self.people_in_motion) else 10.0
        return int(np.clip(round(2 * busy), 5, 300))

    @property
    def usable(self) -> bool:
        return not self.problems and self.camera is not None

    @property
    def shape(self) -> tuple[int, int]:
        return self.backgrounds[0].image.shape[:2]

    def background_for(self, image: np.ndarray) -> Background:
        """The empty scene lit most like ``image`` (day and night buffers have one each)."""
        luma = float(image.mean())
        return min(self.backgrounds, key=lambda b: abs(float(b.image.mean()) - luma))

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """(H, W) bool: what differs from the empty scene in this frame (people, and anything else that moves)."""
        bg = self.background_for(image)
        return foreground(image[None], bg.image, bg.threshold)[0]

    def people_in_blobs(self, image: np.ndarray, fg: np.ndarray | None = None) -> BlobPeople:
        """The people in each foreground blob of a frame, with head points that carry them.

        ``fg`` is the frame's ``foreground`` when the caller already has it. A
        blob holds its area over one person's silhouette at its feet row (the
        camera's measured ``fill``); blobs under MIN_SHARE of a person hold
        nobody we can vouch for and are left out. round(count) head points, at
        least one, sit side by side along the blob's top, a tenth of a person
        below it: groups walk abreast more often than in file, and the count,
        not the exact head, is what the label must get right.
        """
        none = BlobPeople(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int64))
        if self.camera is None or image.shape[:2] != self.shape:
            return none
        stats = blob_stats((self.foreground(image) if fg is None else fg)[None])[0]
        counts, person = blob_people(stats, self.camera, self.fill)
        keep = counts >= MIN_SHARE
        if not keep.any():
            return none
        stats, counts, person = stats[keep], counts[keep], person[keep]
        heads, sizes, owner = [], [], []
        for i, ((x, y, w, _, _), n, h) in enumerate(zip(stats, counts, person)):
            k = max(1, int(round(n)))
            xs = x + (np.arange(k) + 0.5) * w / k
            heads.append(np.column_stack([xs, np.full(k, y + BLUR_GROWTH + HEAD_DROP * h)]))
            sizes.append(np.full(k, h / 7.5))
            owner.append(np.full(k, i))
        return BlobPeople(stats[:, :4].copy(), counts, np.concatenate(heads), np.concatenate(sizes), np.concatenate(owner))

    def summary(self) -> dict:
        return {
            "usable": self.usable,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "frames": int(len(self.group_of_frame)),
            "empty_scenes": len(self.backgrounds),
            "moving_cells": round(self.motion.moving_share, 4),
            "static_cells": round(float(self.motion.static.mean()), 4),
            "unseen_pixels": round(float(np.mean([b.unseen.mean() for b in self.backgrounds])), 4),
            "size_source": self.size_source,
            "size_residual": round(self.size_residual, 4) if np.isfinite(self.size_residual) else None,
            "horizon_row": round(self.horizon, 1) if np.isfinite(self.horizon) else None,
            "camera": self.camera.to_dict() if self.camera is not None else None,
            "people_in_motion_median": round(float(np.median(self.people_in_motion)), 2) if len(self.people_in_motion) else None,
            "max_people": self.max_people,
            "silhouette_fill": round(self.fill, 4),
        }

    # -- storage: var/scene/<camera>/ ------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"empty_{i}": b.image for i, b in enumerate(self.backgrounds)}
        arrays |= {f"unseen_{i}": b.unseen for i, b in enumerate(self.backgrounds)}
        np.savez_compressed(folder / "scene.npz", frequency=self.motion.frequency, frame_share=self.motion.frame_share,
                            walk=self.walk.weights, group_of_frame=self.group_of_frame, people_in_motion=self.people_in_motion, **arrays)
        meta = self.summary() | {"thresholds": [b.threshold for b in self.backgrounds], "stride": self.motion.stride,
                                 "walk_stride": self.walk.stride, "background_frames": [b.frames for b in self.backgrounds]}
        (folder / "scene.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path) -> SceneModel:
        meta = json.loads((folder / "scene.json").read_text())
        with np.load(folder / "scene.npz") as z:
            k = meta["empty_scenes"]
            bgs = [Background(z[f"empty_{i}"], z[f"unseen_{i}"], meta["thresholds"][i], meta["background_frames"][i]) for i in range(k)]
            motion = MotionStats(z["frequency"], z["frame_share"], meta["stride"])
            walk = WalkMap(z["walk"], meta["walk_stride"])
            groups = z["group_of_frame"]
            moving = z["people_in_motion"]
        cam = Camera(**meta["camera"]) if meta["camera"] else None
        resid = meta["size_residual"] if meta["size_residual"] is not None else float("inf")
        horizon = meta["horizon_row"] if meta["horizon_row"] is not None else float("nan")
        return cls(bgs, motion, cam, meta["size_source"], resid, horizon, walk, groups, list(meta["problems"]),
                   list(meta.get("notes", [])), moving, float(meta.get("silhouette_fill", DEFAULT_FILL)))


def camera_shift(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) translation in pixels of each frame against the reference (phase correlation on grey)."""
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY).astype(np.float32)
    win = cv2.createHanningWindow(ref.shape[::-1], cv2.CV_32F)
    out = np.empty(len(frames))
    for t, f in enumerate(frames):
        grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32)
        (dx, dy), _ = cv2.phaseCorrelate(ref.copy(), grey, win)  # it applies the window to its inputs in place
        out[t] = float(np.hypot(dx, dy))
    return out


def lighting_groups(frames: np.ndarray) -> np.ndarray:
    """(T,) group per frame: one group, or two when the brightness splits (day and night in one buffer)."""
    luma = frames.reshape(len(frames), -1).mean(1)
    if np.ptp(luma) < LIGHTING_STEP:
        return np.zeros(len(frames), np.int64)
    cut = (luma.min() + luma.max()) / 2  # two-means on one dimension, started at the midpoint
    for _ in range(10):
        lo, hi = luma[luma <= cut], luma[luma > cut]
        if not len(lo) or not len(hi):
            break
        cut = (lo.mean() + hi.mean()) / 2
    return (luma > cut).astype(np.int64)


def build_scene_model(frames: np.ndarray, min_frames: int = MIN_FRAMES,
                      calibration: tuple[np.ndarray, np.ndarray] | None = None,
                      times: np.ndarray | None = None) -> SceneModel:
    """The scene model of (T, H, W, 3) uint8 frames of one fixed camera, in time order.

    ``times`` are the frames' capture times in seconds (default: one second apart).

    ``calibration`` is the camera's configured (image points at these frames'
    scale, ground points in metres): it sizes people when none were seen moving,
    and is checked against the sizes of those who were.
    """
    T, H, W, _ = frames.shape
    problems: list[str] = []
    if T < min_frames:
        problems.append(f"too short: {T} frames, a scene model needs at least {min_frames}")
    groups = lighting_groups(frames)
    notes: list[str] = []
    if groups.max() > 0:
        notes.append(f"lighting changes within the buffer (two brightness groups of {int((groups == 0).sum())} "
                     f"and {int((groups == 1).sum())} frames): one empty scene for each")
    backgrounds = []
    fg = np.zeros((T, H, W), bool)
    for g in range(int(groups.max()) + 1):
        sel = groups == g
        if sel.sum() < 2:
            groups[sel] = 0 if g else groups[sel]
            continue
        bg = estimate_background(frames[sel], None if times is None else np.asarray(times)[sel])
        backgrounds.append(bg)
        fg[sel] = foreground(frames[sel], bg.image, bg.threshold)
        groups[sel] = len(backgrounds) - 1
    if sum(1 for b in backgrounds if b.frames < min_frames):
        problems.append("a lighting group has too few frames for its own empty scene")
    unseen = np.logical_or.reduce([b.unseen for b in backgrounds])
    motion = motion_stats(fg, unseen)
    # against the first frame: a panning camera blurs the empty scene itself into something every frame matches
    shift = camera_shift(frames[:: max(1, T // 50)], frames[0])
    # the median: walkers can pull single frames' correlation peak, a moving camera shifts most frames
    if np.median(shift) > MAX_SHIFT_PX:
        problems.append(f"the camera moves or shakes: frames sit {np.median(shift):.1f} px from the first frame "
                        f"(median; at most {MAX_SHIFT_PX} px for a fixed camera)")
    if np.median(motion.frame_share) > MAX_FOREGROUND_SHARE or unseen.mean() > MAX_UNSEEN_SHARE:
        problems.append(f"always crowded: the median frame is {np.median(motion.frame_share):.0%} foreground and "
                        f"{unseen.mean():.0%} of the image was never seen empty")
    if motion.moving_share < MIN_MOVING_SHARE:
        problems.append(f"too static: only {motion.moving_share:.2%} of cells ever changed, nobody walked through")
    blobs = blob_stats(fg)
    sizes = person_blobs(blobs, (H, W))
    line = size_line(sizes)
    cam, resid, horizon, source = None, float("inf"), float("nan"), "none"
    if line is not None:
        horizon = line[1]
        fit = fit_camera(sizes, W, H)
        if fit is not None:
            cam, resid = fit
            source = "observed people"
    if calibration is not None:
        calibrated = camera_from_calibration(*calibration, W, H)
        if calibrated is None:
            notes.append("the configured calibration fits no camera; people are sized from what moved")
        elif cam is None:
            cam, resid, source = calibrated[0], 0.0, "calibration"
            horizon = float(np.nan_to_num(cam.cy - cam.focal_px * np.tan(np.radians(cam.tilt_deg)), nan=H / 3))
        else:
            rows = np.linspace(max(horizon, 0) + 0.1 * H, H - 1, 8)
            off = size_disagreement(cam, calibrated[0], rows)
            if off > CALIBRATION_TOL:
                notes.append(f"the configured calibration disagrees with the people seen: its person sizes are "
                             f"{np.expm1(off):.0%} off; people are sized as they were seen")
    if cam is None:
        problems.append(f"no ground plane: {len(sizes)} single-person blobs, too few or inconsistent to size people")
    elif resid > MAX_SIZE_RESIDUAL:
        problems.append(f"people's sizes do not follow one ground plane (median error {np.expm1(resid):.0%})")
    feet = np.column_stack([sizes.feet_x, sizes.feet_y]) if len(sizes) else np.zeros((0, 2))
    walk = walk_map(feet, (H, W), 8, horizon if np.isfinite(horizon) else H / 3)
    fill = DEFAULT_FILL
    if cam is not None:
        measured = silhouette_fill(sizes, cam)
        if measured is None:
            notes.append(f"too few whole people to measure their silhouettes; people are counted at a fill of {DEFAULT_FILL}")
        else:
            fill = measured
    moving = people_in_motion(blobs, cam, fill) if cam is not None else np.zeros(0)
    return SceneModel(backgrounds, motion, cam, source, resid, horizon, walk, groups, problems, notes, moving, fill)


def load_frames(paths: list[Path], max_frames: int = MAX_FRAMES, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``max_frames`` frames spread over ``paths``, fitted into ``max_side``; all must share one size.

    Also their capture times in seconds when the paths are buffer frames (named by capture time), else None.
    """
    from adapt.data.crowd_dataset import fit_max_side
    from adapt.data.images import load_image

    step = max(1, len(paths) / max_frames) if len(paths) > max_frames else 1
    pick = [paths[int(i * step)] for i in range(min(len(paths), max_frames))]
    frames, size = [], None
    for p in pick:
        img = load_image(p)
        h, w = fit_max_side(img.shape[:2], max_side)
        if (h, w) != img.shape[:2]:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if size is None:
            size = img.shape
        if img.shape != size:
            raise ValueError(f"{p}: frame size {img.shape[1]}x{img.shape[0]} differs from {size[1]}x{size[0]}: not one fixed camera")
        frames.append(img)
    return np.stack(frames), capture_seconds(pick)
