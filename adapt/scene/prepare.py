"""The scene model and composites of one camera, made ready for its adaptation.

Stored under ``<var>/scene/<camera>/``: the scene model (``scene.npz``,
``scene.json``), a picture of it (``scene.png``: empty scene, where things
moved, where feet were seen with the fitted person size per row, and a sample
composite) and the composites themselves (``composites/``, ShanghaiTech layout;
every fifth is held out for the gate). Frames of people are never written
here; the composites hold only synthetic people on the empty scene.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from adapt.scene.composite import composite, write_composites
from adapt.scene.geometry import row_person_px
from adapt.scene.model import SceneModel, build_scene_model, load_frames

HELD_EVERY = 5  # every fifth composite is held out for the gate's composite MAE


@dataclass(eq=False)
class PreparedScene:
    model: SceneModel
    folder: Path
    composites: Path | None  # training composites (ShanghaiTech layout), None when the model is not usable
    held_composites: Path | None

    def summary(self) -> dict:
        return self.model.summary() | {"folder": str(self.folder), "picture": str(self.folder / "scene.png")}


def scene_picture(model: SceneModel, sample: np.ndarray | None) -> np.ndarray:
    """Empty scene | motion frequency | walk map with person-size ticks | sample composite, side by side (RGB)."""
    empty = model.backgrounds[0].image
    H, W = empty.shape[:2]
    freq = cv2.resize((model.motion.frequency * 255).clip(0, 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
    freq = cv2.applyColorMap(freq, cv2.COLORMAP_INFERNO)[..., ::-1]
    walk = model.walk.weights / max(model.walk.weights.max(), 1e-12)
    walk = cv2.resize((walk * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
    walk = (0.5 * empty + 0.5 * cv2.applyColorMap(walk, cv2.COLORMAP_VIRIDIS)[..., ::-1]).astype(np.uint8)
    if model.camera is not None:
        # a 1.7 m person standing at a few places: the sizes composites are drawn at
        for k, y in enumerate(np.linspace(max(model.horizon, 0) + 0.15 * H, H - 1, 4)):
            h = row_person_px(model.camera, np.array([y]))[0]
            for x in np.linspace(0.1 * W, 0.7 * W, 4) + k * 0.06 * W:  # staggered, so bars of two rows do not join
                if np.isfinite(h) and h > 1:
                    cv2.line(walk, (int(x), int(y)), (int(x), int(y - h)), (255, 60, 60), max(1, W // 320))
    panels = [empty, freq, walk] + ([sample] if sample is not None else [])
    return np.concatenate(panels, 1)


def prepare_scene(paths: list[Path], folder: Path, max_side: int, n_composites: int, seed: int,
                  calibration: tuple | None = None) -> PreparedScene:
    """Build, store and picture the camera's scene model; render its composites when it is usable.

    ``calibration`` is the camera's configured (image points in its own frame's pixels, ground metres).
    """
    from adapt.data.images import load_image

    frames, times = load_frames(paths, max_side=max_side)
    if calibration is not None:
        scale = frames.shape[2] / load_image(paths[0]).shape[1]
        calibration = (np.asarray(calibration[0], np.float64) * scale, np.asarray(calibration[1], np.float64))
    model = build_scene_model(frames, calibration=calibration, times=times)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder)
    comp_dir = held_dir = None
    sample = None
    for old in ("composites", "composites-held"):
        shutil.rmtree(folder / old, ignore_errors=True)
    if model.usable:
        most = model.max_people
        empties = [b.image for b in model.backgrounds]
        n_held = max(1, n_composites // HELD_EVERY)
        comp_dir, held_dir = folder / "composites", folder / "composites-held"
        write_composites(comp_dir, empties, model.camera, model.walk, n_composites - n_held, most, seed)
        write_composites(held_dir, empties, model.camera, model.walk, n_held, most, seed + 1, empty_share=0.2)
        sample = composite(np.random.default_rng([seed, 0]), empties[0], model.camera, model.walk, max(1, most // 2)).image
    cv2.imwrite(str(folder / "scene.png"), cv2.cvtColor(scene_picture(model, sample), cv2.COLOR_RGB2BGR))
    return PreparedScene(model, folder, comp_dir, held_dir)
