"""Self-supervised adaptation of one camera's model (``crowdwatch adapt``).

    frames (buffer, folder or video) ─▶ split train / held-out
    parent (camera's current, else base) ─▶ flip stage ─▶ pseudo-label rounds
    ─▶ validation gate on held-out frames ─▶ export ONNX ─▶ publish (atomic)

Nothing is published unless the gate accepts; the serving model is never
touched by a failed or refused run.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapt.model.checkpoint import load_checkpoint, save_checkpoint
from adapt.model.network import MAX_COUNT_SCALE, MIN_COUNT_SCALE, CrowdCounter
from adapt.selfsup.budget import FLIP_SHARE, STOPPED, TimeBudget
from adapt.selfsup.flip_stage import FlipStageConfig, run_flip_stage
from adapt.selfsup.gate import GateConfig, frame_stats, gate, scene_stats
from adapt.selfsup.pseudo_label import PseudoLabelConfig, PseudoLabelled, run_pseudo_label_stage, scene_labelled
from adapt.store.names import validate_camera_name
from adapt.store.registry import Registry
from adapt.training.engine import loop_forever, render_if_missing
from crowdwatch.config.adaptation import AdaptConfig as AdaptSettings
from crowdwatch.config.buffer import BufferSettings

STAGES = ("flip", "pseudo")
MIN_FRAMES = 8
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".ts", ".webm", ".h264", ".mpg"}
REPO_ROOT = Path(__file__).resolve().parents[2]
PUBLISH_RESERVE_S = 30.0  # ONNX export and the registry's write, with room
_SETTINGS = AdaptSettings()  # [cameras.X.adapt]: the defaults of the settings a camera may change


class AdaptError(RuntimeError):
    pass


class TooFewFrames(AdaptError):
    """Not a failure: the buffer is still filling (exit code 4, result "skipped")."""


@dataclass
class AdaptConfig:
    """One run: built from a camera's config by ``adapt.selfsup.settings.adaptation_config``."""

    camera: str
    frames: Path | None = None           # folder or video; default: the camera's buffer
    base: Path | None = None             # parent checkpoint; default: camera's current, else base
    stages: tuple[str, ...] = STAGES
    synthetic: Path = REPO_ROOT / "var" / "synth-source"
    synthetic_n: int = 400
    synth_crop: int = 256
    # L_s batch of both stages, rounded to a multiple of the masks; each mask learns
    # from batch / masks renders a step. With one per mask the count wandered with
    # the seed; with two the count std across masks rose on ShanghaiTech B and the
    # gate refused every run; with four it fell and the gate published a better
    # model (research/NOTEBOOK.md, "16 renders a step").
    synth_batch: int = 16
    labels: Path | None = _SETTINGS.labels  # optional JSON-points frames of this camera
    registry_root: Path | None = None
    buffer_root: Path = REPO_ROOT / "var" / "buffer"
    buffer: BufferSettings = field(default_factory=BufferSettings)  # the camera's [buffer]: what importing a video may keep
    holdout_every: int = 5               # every k-th frame is held out for the gate
    max_frames: int = 400
    max_side: int = 1024
    device: str = "auto"
    seed: int = 0
    publish: bool = True
    # the whole run's wall time: the stages stop at their share of it (adapt/selfsup/budget.py); None: every step runs
    time_budget_s: float | None = _SETTINGS.time_budget_s
    save_candidate: Path | None = None   # keep the candidate checkpoint whatever the verdict (benchmarks)
    flip: FlipStageConfig = field(default_factory=FlipStageConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    # Hold the parent's mean count on the training frames (one factor in count_scale):
    # the stages refine where people are counted, not how many the camera sees in all.
    # The uncertainty says nothing about a camera-wide scale error, and on the real
    # target the stages moved it the wrong way (docs/ADAPTATION.md, "The count level").
    keep_count: bool = _SETTINGS.keep_count
    # off, or when the frames cannot give a scene model, the paper's stages run alone (docs/ADAPTATION.md)
    scene: bool = _SETTINGS.scene
    scene_root: Path = REPO_ROOT / "var" / "scene"
    composites: int = 300                # composites rendered per run (a fifth held out for the gate)
    calibration: tuple | None = None     # the camera's ground plane: (image points, ground metres), from its config


def _jsonable(value: object) -> object:
    """The report's copy of the run config: settings models as tables, anything else (paths) as text."""
    return value.model_dump() if isinstance(value, BufferSettings) else str(value)


def collect_frames(cfg: AdaptConfig) -> list[Path]:
    """Frame paths from a folder, a video (decoded into the camera's buffer) or the buffer."""
    from adapt.data.datasets import list_images

    src = cfg.frames
    if src is not None and not src.exists():
        raise AdaptError(f"--frames {src} does not exist")
    if src is not None and src.is_dir():
        paths = list_images(src)
    else:
        from adapt.store.buffer import FrameBuffer

        buffer = FrameBuffer(cfg.buffer_root, cfg.camera, cfg.buffer)
        if src is not None:
            if src.suffix.lower() not in VIDEO_SUFFIXES:
                raise AdaptError(f"--frames {src}: expected a folder of images or a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
            buffer.fill_from_video(src, max_frames=cfg.max_frames)
        paths = buffer.frames()
    if len(paths) > cfg.max_frames:
        # spread the subset over the whole span, not the first N
        step = len(paths) / cfg.max_frames
        paths = [paths[int(i * step)] for i in range(cfg.max_frames)]
    if len(paths) < MIN_FRAMES:
        raise TooFewFrames(f"{cfg.camera}: only {len(paths)} frames available, need at least {MIN_FRAMES}")
    return paths


def split_holdout(paths: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    held = paths[every - 1 :: every]
    held_set = set(held)
    return [p for p in paths if p not in held_set], held


def ensure_synthetic(path: Path, n: int, seed: int) -> Path:
    """The labelled synthetic source set that L_s trains on, rendered once per renderer version (engine.render_if_missing)."""
    return render_if_missing(
        path, n=n, seed=seed, width=640, height=480, styles=["day", "dusk", "fog", "indoor", "night_ir"], count_range=(0, 300), workers=2,
        rerender_stale=True,
    )


def synthetic_batches(path: Path, batch: int, crop: int, seed: int):
    from adapt.data.crowd_dataset import AugmentConfig, CrowdDataset, collate
    from adapt.data.datasets import read_dataset

    items = read_dataset(path, "shanghaitech").items
    if len(items) < batch:
        raise AdaptError(f"{path}: {len(items)} labelled renders, fewer than one L_s batch ({batch}); render more or lower synth_batch")
    ds = CrowdDataset(items, AugmentConfig(crop=(crop, crop)), seed=seed)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=1, collate_fn=collate, persistent_workers=True, generator=torch.Generator().manual_seed(seed))
    return loop_forever(loader)


def real_crop_size(paths: list[Path], max_side: int, want: int = 256) -> int:
    """Largest crop (multiple of 32, at most ``want``) that fits every frame without padding.

    Padding would let the flip head cheat: zero rows at the bottom move to the top.
    """
    from adapt.data.crowd_dataset import fit_max_side
    from adapt.data.images import load_image

    smallest = min(min(fit_max_side(load_image(p).shape[:2], max_side)) for p in paths[:: max(1, len(paths) // 16)])
    return max(64, min(want, int(smallest * 0.8) // 32 * 32))


def mixed_batches(a, b):
    """One batch from each source, concatenated: generic renders beside the camera's composites."""
    while True:
        x, y = next(a), next(b)
        yield {k: torch.cat([x[k], y[k]]) for k in ("image", "density", "count")}


def whole_frames(path: Path, max_side: int):
    """Whole labelled frames of a ShanghaiTech-layout set, batch size 1 (the gate's composites)."""
    from adapt.data.crowd_dataset import CrowdDataset, collate
    from adapt.data.datasets import read_dataset

    return DataLoader(CrowdDataset(read_dataset(path, "shanghaitech").items, None, max_side=max_side), batch_size=1, num_workers=0, collate_fn=collate)


def frame_loaders(train: list[Path], held: list[Path], cfg: AdaptConfig):
    from adapt.data.crowd_dataset import AugmentConfig, FrameFolder, collate

    crop = real_crop_size(train, cfg.max_side)
    real = FrameFolder(train, AugmentConfig(crop=(crop, crop), scale_range=(0.8, 1.2), gray_prob=0.0), seed=cfg.seed)
    real_loader = DataLoader(real, batch_size=cfg.flip.real_batch, shuffle=True, drop_last=True, num_workers=0, collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed))
    held_loader = DataLoader(FrameFolder(held, None, max_side=cfg.max_side), batch_size=1, num_workers=0, collate_fn=collate)
    return real_loader, held_loader


def keep_parent_count(parent: CrowdCounter, model: CrowdCounter, train_paths: list[Path], cfg: AdaptConfig, device: torch.device) -> dict:
    """Scale the candidate's served count so its mean on the training frames is the parent's.

    Measured on the frames the stages trained on, so the gate's held-out
    frames still test it independently; the factor joins any calibration
    the parent carried (count_scale multiplies).
    """
    from adapt.data.crowd_dataset import FrameFolder, collate

    loader = DataLoader(FrameFolder(train_paths, None, max_side=cfg.max_side), batch_size=1, num_workers=0, collate_fn=collate)
    before = frame_stats(parent, loader, device, with_flip=False).mean_count
    after = frame_stats(model, loader, device, with_flip=False).mean_count
    out = {"parent_mean_count": before, "candidate_mean_count": after, "count_ratio": (after + 1.0) / (before + 1.0)}
    # when nothing can be held, the gate judges the counts as they are (and refuses a collapse)
    if not (math.isfinite(before) and math.isfinite(after)) or after <= 0 or before <= 0:
        out["factor"], out["not_held"] = None, "a mean count is zero or not finite"
        return out
    factor = before / after
    scale = model.config.count_scale * factor
    if not MIN_COUNT_SCALE <= scale <= MAX_COUNT_SCALE:
        out["factor"], out["not_held"] = None, f"count_scale {scale:.3g} would leave [{MIN_COUNT_SCALE}, {MAX_COUNT_SCALE}]"
        return out
    model.set_count_scale(scale)
    out["factor"], out["count_scale"] = factor, scale
    return out


def labelled_loader(path: Path, max_side: int):
    from adapt.data.crowd_dataset import CrowdDataset, collate
    from adapt.data.datasets import read_dataset

    items = read_dataset(path, "json").items
    return DataLoader(CrowdDataset(items, None, max_side=max_side), batch_size=1, num_workers=0, collate_fn=collate)


def resolve_parent(registry: Registry, camera: str, base: Path | None) -> tuple[Path, str | None]:
    """Checkpoint and version to start from: ``base`` if given, else the camera's current model, else the base model."""
    if base is not None:
        return base, load_checkpoint(base).meta.get("version")
    parent = registry.resolve(camera)
    return parent.checkpoint, parent.version


def adapt_camera(cfg: AdaptConfig) -> dict:
    """Run the whole adaptation; returns the report (also the ``--json`` output)."""
    from adapt.training.engine import seed_everything, select_device

    t0 = time.time()
    budget = TimeBudget(cfg.time_budget_s)
    camera = validate_camera_name(cfg.camera)
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise AdaptError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    registry = Registry(cfg.registry_root)
    parent_path, parent_version = resolve_parent(registry, camera, cfg.base)
    parent_ckpt = load_checkpoint(parent_path)
    parent_model = parent_ckpt.build(device)
    masks = parent_model.config.masks

    paths = collect_frames(cfg)
    train_paths, held_paths = split_holdout(paths, cfg.holdout_every)
    synth_batch = masks * max(1, cfg.synth_batch // masks)
    real_loader, held_loader = frame_loaders(train_paths, held_paths, cfg)
    scene = None
    if cfg.scene:
        from adapt.scene.prepare import prepare_scene

        scene = prepare_scene(paths, cfg.scene_root / camera, cfg.max_side, cfg.composites, cfg.seed, cfg.calibration)
    generic = ensure_synthetic(cfg.synthetic, cfg.synthetic_n, cfg.seed)
    if scene is not None and scene.composites is not None:
        half = masks * max(1, synth_batch // (2 * masks))
        synth = mixed_batches(synthetic_batches(generic, half, cfg.synth_crop, cfg.seed),
                              synthetic_batches(scene.composites, half, cfg.synth_crop, cfg.seed + 1))
    else:
        synth = synthetic_batches(generic, synth_batch, cfg.synth_crop, cfg.seed)

    report: dict = {
        "camera": camera, "parent": parent_version, "parent_checkpoint": str(parent_path), "device": str(device),
        "stages": list(cfg.stages), "frames": {"train": len(train_paths), "held_out": len(held_paths)},
        "config": json.loads(json.dumps(asdict(cfg), default=_jsonable)),
    }
    usable = scene is not None and scene.model.usable
    if scene is not None:
        report["scene"] = scene.summary()
        if not usable:
            report["scene"]["fallback"] = "the paper's two stages alone: " + "; ".join(scene.model.problems or ["no ground plane"])
    stats_started = time.monotonic()
    parent_stats = frame_stats(parent_model, held_loader, device)
    report["parent_stats"] = asdict(parent_stats)
    scene_parent = None
    if usable:
        static = scene.model.motion.static
        empties = [b.image for b in scene.model.backgrounds]
        held_comp = whole_frames(scene.held_composites, cfg.max_side)
        scene_parent = scene_stats(parent_model, static, empties, held_loader, held_comp, device)
        report["scene_parent"] = asdict(scene_parent)
    # the candidate's statistics take as long again; publishing (ONNX export) a little more
    budget.reserve_s = 2 * (time.monotonic() - stats_started) + PUBLISH_RESERVE_S
    model = copy.deepcopy(parent_model)
    if "flip" in cfg.stages:
        known = None
        if usable and cfg.flip.scene_weight:
            scene_frames = PseudoLabelled(scene_labelled(scene.model, train_paths, cfg.max_side), None, cfg.max_side, seed=cfg.seed)
            known = loop_forever(DataLoader(scene_frames, batch_size=cfg.flip.real_batch, shuffle=True, drop_last=True, num_workers=0,
                                            generator=torch.Generator().manual_seed(cfg.seed)))
        share = FLIP_SHARE if "pseudo" in cfg.stages else 1.0
        report["flip_stage"] = run_flip_stage(model, synth, loop_forever(real_loader), cfg.flip, device, parent=parent_model,
                                              scene_batches=known, time_up=budget.time_up(share))
    if "pseudo" in cfg.stages:
        report["pseudo_label_rounds"] = run_pseudo_label_stage(model, synth, train_paths, cfg.pseudo, device, seed=cfg.seed,
                                                               scene=scene.model if usable else None, budget=budget)
    moved = None
    if cfg.keep_count and usable:
        # the composites carry exact labels on this camera: the level they teach is the camera's own evidence
        report["keep_count"] = {"factor": None, "not_held": "the scene model sets the count level (composites of this camera)"}
    elif cfg.keep_count:
        report["keep_count"] = keep_parent_count(parent_model, model, train_paths, cfg, device)
        moved = report["keep_count"]["count_ratio"]
    cand_stats = frame_stats(model, held_loader, device)
    report["candidate_stats"] = asdict(cand_stats)

    labelled = None
    if cfg.labels is not None:
        lab = labelled_loader(cfg.labels, cfg.max_side)
        labelled = (frame_stats(parent_model, lab, device, with_flip=False), frame_stats(model, lab, device, with_flip=False))
    scene_pair = None
    if usable:
        scene_pair = (scene_parent, scene_stats(model, static, empties, held_loader, held_comp, device))
        report["scene_candidate"] = asdict(scene_pair[1])
    verdict = gate(parent_stats, cand_stats, cfg.gate.for_stages(cfg.stages), labelled, count_ratio_before_keep=moved, scene=scene_pair)
    trained = report.get("flip_stage", {}).get("steps", 0) + sum(r.get("steps", 0) for r in report.get("pseudo_label_rounds", []))
    if not trained:
        verdict = replace(verdict, verdict="reject", reasons=[*verdict.reasons, "the time budget ran out before the first training step"])
    report["validation"] = verdict.to_dict()
    if cfg.save_candidate is not None:
        save_checkpoint(cfg.save_candidate, model, {"version": "candidate", "parent": parent_version, "camera": camera, "recipe": report["config"]})
    report["published"] = None
    if verdict.accepted and cfg.publish:
        report["published"] = publish(registry, camera, model, parent_version, report)
    report["time_budget"] = {"seconds": cfg.time_budget_s, "cut": budget_cuts(report)}
    report["seconds"] = round(time.time() - t0, 1)
    return report


def budget_cuts(report: dict) -> list[str]:
    """The stages the time budget cut short, as the summary line says them."""
    flip = report.get("flip_stage", {})
    cuts = [f"flip stage ({flip['stopped']})"] if "stopped" in flip else []
    return cuts + [f"round {r['round']} ({r['stopped']})" for r in report.get("pseudo_label_rounds", [])
                   if str(r.get("stopped", "")).startswith(STOPPED)]


def publish(registry: Registry, camera: str, model, parent_version: str | None, report: dict) -> str:
    card = {
        "parent": parent_version, "recipe": report["config"], "frames": report["frames"],
        "statistics": {k: report.get(k) for k in ("parent_stats", "candidate_stats", "flip_stage", "pseudo_label_rounds", "keep_count",
                                                  "scene", "scene_parent", "scene_candidate")},
        "validation": report["validation"],
    }
    return publish_version(registry, camera, model, parent_version, card)


def publish_version(registry: Registry, camera: str, model, parent_version: str | None, card: dict) -> str:
    """Checkpoint, ONNX and card of a new version, switched to atomically (adapt and calibrate both publish here)."""
    from adapt.model.export import export_onnx
    from adapt.store.registry import new_version_name

    version = new_version_name()
    meta = {"version": version, "parent": parent_version, "camera": camera, "recipe": card["recipe"]}
    with tempfile.TemporaryDirectory(prefix="crowdwatch-publish-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(ckpt, model.cpu(), meta)
        onnx = export_onnx(model, Path(tmp) / "model.onnx", meta)
        registry.publish(camera, {"model.pt": ckpt, "model.onnx": onnx}, card, version)
    return version
