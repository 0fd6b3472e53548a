"""Self-supervised adaptation of one camera's model (``crowdwatch adapt``).

    frames (buffer, folder or video) ─▶ split train / held-out
    parent (camera's current, else base) ─▶ flip stage ─▶ pseudo-label rounds
    ─▶ validation gate on held-out frames ─▶ export ONNX ─▶ publish (atomic)

Nothing is published unless the gate accepts; the serving model is never
touched by a failed or refused run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adapt.flip_stage import FlipStageConfig, loop_forever, run_flip_stage
from adapt.names import InvalidCameraName, validate_camera_name
from adapt.network import MAX_COUNT_SCALE, MIN_COUNT_SCALE, CrowdCounter
from adapt.pseudo_label import RULES, PseudoLabelConfig, run_pseudo_label_stage
from adapt.registry import Registry, RegistryError
from adapt.validation import GateConfig, frame_stats, gate, scene_stats

STAGES = ("flip", "pseudo")
MIN_FRAMES = 8
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".ts", ".webm", ".h264", ".mpg"}
REPO_ROOT = Path(__file__).resolve().parents[1]


class AdaptError(RuntimeError):
    pass


class TooFewFrames(AdaptError):
    """Not a failure: the buffer is still filling (exit code 4, result "skipped")."""


@dataclass
class AdaptConfig:
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
    # model (docs/BENCHMARKS.md, "16 renders a step").
    synth_batch: int = 16
    labels: Path | None = None           # optional JSON-points frames of this camera
    registry_root: Path | None = None
    buffer_root: Path = REPO_ROOT / "var" / "buffer"
    holdout_every: int = 5               # every k-th frame is held out for the gate
    max_frames: int = 400
    max_side: int = 1024
    device: str = "auto"
    seed: int = 0
    publish: bool = True
    save_candidate: Path | None = None   # keep the candidate checkpoint whatever the verdict (benchmarks)
    flip: FlipStageConfig = field(default_factory=FlipStageConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    # Hold the parent's mean count on the training frames (one factor in count_scale):
    # the stages refine where people are counted, not how many the camera sees in all.
    # The uncertainty says nothing about a camera-wide scale error, and on the real
    # target the stages moved it the wrong way (docs/ADAPTATION.md, "The count level").
    keep_count: bool = True
    # The camera's scene model (empty scene, motion, people's sizes): composites of its own
    # empty scene join L_s, static cells become empty pseudo labels, and the gate checks
    # the empty scene. Off, or when the frames cannot give one, the paper's stages run alone.
    scene: bool = True
    scene_root: Path = REPO_ROOT / "var" / "scene"
    composites: int = 300                # composites rendered per run (a fifth held out for the gate)


def collect_frames(cfg: AdaptConfig) -> list[Path]:
    """Frame paths from a folder, a video (decoded into the camera's buffer) or the buffer."""
    from adapt.datasets import list_images

    src = cfg.frames
    if src is not None and not src.exists():
        raise AdaptError(f"--frames {src} does not exist")
    if src is not None and src.is_dir():
        paths = list_images(src)
    else:
        from adapt.buffer import FrameBuffer

        buffer = FrameBuffer(cfg.buffer_root, cfg.camera)
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
    """The labelled synthetic source set that L_s trains on, rendered once per renderer version.

    Renders of another renderer version are replaced: L_s must train on what
    the current renderer draws, as the base model did. Any other labelled
    set (another generator, no version) is used as it is.
    """
    from adapt.synth.render import RENDERER_VERSION
    from adapt.synth.writers import write_dataset

    meta = path / "meta.json"
    if meta.is_file():
        try:
            found = json.loads(meta.read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("generator") != "crowdwatch synth" or found.get("renderer_version") == RENDERER_VERSION:
            return path
        print(f"{path} holds renders of {found.get('renderer_version')}; re-rendering with {RENDERER_VERSION}", flush=True)
    print(f"rendering {n} labelled synthetic images into {path} (once) ...", flush=True)
    write_dataset(path, n=n, seed=seed, width=640, height=480, styles=["day", "dusk", "fog", "indoor", "night_ir"], count_range=(0, 300), workers=2, overwrite=True)
    return path


def synthetic_batches(path: Path, batch: int, crop: int, seed: int):
    from adapt.crowd_dataset import AugmentConfig, CrowdDataset, collate
    from adapt.datasets import read_dataset

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
    from adapt.datasets import load_image
    from adapt.crowd_dataset import fit_max_side

    smallest = min(min(fit_max_side(load_image(p).shape[:2], max_side)) for p in paths[:: max(1, len(paths) // 16)])
    return max(64, min(want, int(smallest * 0.8) // 32 * 32))


def mixed_batches(a, b):
    """One batch from each source, concatenated: generic renders beside the camera's composites."""
    while True:
        x, y = next(a), next(b)
        yield {k: torch.cat([x[k], y[k]]) for k in ("image", "density", "count")}


def whole_frames(path: Path, max_side: int):
    """Whole labelled frames of a ShanghaiTech-layout set, batch size 1 (the gate's composites)."""
    from adapt.crowd_dataset import CrowdDataset, collate
    from adapt.datasets import read_dataset

    return DataLoader(CrowdDataset(read_dataset(path, "shanghaitech").items, None, max_side=max_side), batch_size=1, num_workers=0, collate_fn=collate)


def frame_loaders(train: list[Path], held: list[Path], cfg: AdaptConfig):
    from adapt.crowd_dataset import AugmentConfig, FrameFolder, collate

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
    from adapt.crowd_dataset import FrameFolder, collate

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
    from adapt.crowd_dataset import CrowdDataset, collate
    from adapt.datasets import read_dataset

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
    from adapt.train import seed_everything, select_device

    t0 = time.time()
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

        scene = prepare_scene(paths, cfg.scene_root / camera, cfg.max_side, cfg.composites, cfg.seed)
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
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }
    usable = scene is not None and scene.model.usable
    if scene is not None:
        report["scene"] = scene.summary()
        if not usable:
            report["scene"]["fallback"] = "the paper's two stages alone: " + "; ".join(scene.model.problems or ["no ground plane"])
    parent_stats = frame_stats(parent_model, held_loader, device)
    report["parent_stats"] = asdict(parent_stats)
    scene_parent = None
    if usable:
        static = scene.model.motion.static
        empties = [b.image for b in scene.model.backgrounds]
        held_comp = whole_frames(scene.held_composites, cfg.max_side)
        scene_parent = scene_stats(parent_model, static, empties, held_loader, held_comp, device)
        report["scene_parent"] = asdict(scene_parent)
    model = copy.deepcopy(parent_model)
    if "flip" in cfg.stages:
        report["flip_stage"] = run_flip_stage(model, synth, loop_forever(real_loader), cfg.flip, device, parent=parent_model)
    if "pseudo" in cfg.stages:
        report["pseudo_label_rounds"] = run_pseudo_label_stage(model, synth, train_paths, cfg.pseudo, device, seed=cfg.seed,
                                                               static=scene.model.motion.static if usable else None)
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
    report["validation"] = verdict.to_dict()
    if cfg.save_candidate is not None:
        save_checkpoint(cfg.save_candidate, model, {"version": "candidate", "parent": parent_version, "camera": camera, "recipe": report["config"]})
    report["published"] = None
    if verdict.accepted and cfg.publish:
        report["published"] = publish(registry, camera, model, parent_version, report)
    report["seconds"] = round(time.time() - t0, 1)
    return report


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
    from adapt.export import export_onnx
    from adapt.registry import new_version_name

    version = new_version_name()
    meta = {"version": version, "parent": parent_version, "camera": camera, "recipe": card["recipe"]}
    with tempfile.TemporaryDirectory(prefix="crowdwatch-publish-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(ckpt, model.cpu(), meta)
        onnx = export_onnx(model, Path(tmp) / "model.onnx", meta)
        registry.publish(camera, {"model.pt": ckpt, "model.onnx": onnx}, card, version)
    return version


def record(args, result: str, detail: str) -> None:
    if args.record is None:
        return
    from adapt.runs import append_run

    try:
        append_run(args.record, validate_camera_name(args.camera), {"time": time.time(), "result": result, "reason": "command", "detail": detail[:500]})
    except (InvalidCameraName, OSError) as exc:
        print(f"crowdwatch adapt: could not record the run: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch adapt", description="Adapt one camera's model to its own frames, without labels.")
    p.add_argument("--camera", required=True)
    p.add_argument("--frames", type=Path, help="folder of images or a video file (default: the camera's buffer)")
    p.add_argument("--base", type=Path, help="parent checkpoint (default: the camera's current model, else base)")
    p.add_argument("--json", type=Path, help="write the report (stages, per-round statistics, verdict) here")
    p.add_argument("--stages", default="flip,pseudo", help="comma list from: flip, pseudo")
    p.add_argument("--synthetic", type=Path, default=None, help="labelled synthetic source set for L_s (default: var/synth-source, rendered once)")
    p.add_argument("--labels", type=Path, help="optional JSON-points frames of this camera: MAE on them decides the gate")
    gate_defaults = GateConfig()
    p.add_argument("--min-count-ratio", type=float, default=gate_defaults.min_count_ratio,
                   help="gate: the candidate's mean count over the parent's must be at least this (default: %(default)s)")
    p.add_argument("--max-count-ratio", type=float, default=gate_defaults.max_count_ratio,
                   help="gate: ... and at most this (default: %(default)s)")
    p.add_argument("--per-person-uncertainty", action=argparse.BooleanOptionalAction, default=gate_defaults.per_person_uncertainty,
                   help="gate: the count std per counted person must drop too (default: off)")
    p.add_argument("--scene", action=argparse.BooleanOptionalAction, default=AdaptConfig.scene,
                   help="use the camera's scene model: composites on its empty scene, empty static cells, the empty-scene gate (default: on)")
    p.add_argument("--keep-count", action=argparse.BooleanOptionalAction, default=AdaptConfig.keep_count,
                   help="hold the parent's mean count on the training frames (default: on; docs/ADAPTATION.md)")
    p.add_argument("--flip-steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None, help="pseudo-label rounds at most (K)")
    p.add_argument("--steps-per-round", type=int, default=None)
    p.add_argument("--keep-fraction", type=float, default=None, help="pseudo labels: keep this lowest-uncertainty fraction of cells")
    p.add_argument("--pseudo-rule", choices=RULES, default=None, help=f"pseudo labels: how confident cells are chosen (default: {PseudoLabelConfig.rule}; docs/ADAPTATION.md)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-side", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=Path, default=None, help="registry directory (default: models/)")
    p.add_argument("--buffer", type=Path, default=None, help="adapter buffer root (default: var/buffer)")
    p.add_argument("--no-publish", action="store_true", help="measure and validate only")
    p.add_argument("--record", type=Path, default=None, metavar="VAR",
                   help="append the run's result to VAR/adapt/CAMERA/runs.jsonl (what the scheduler does; for cron jobs)")
    p.add_argument("--save-candidate", type=Path, default=None, help="also save the candidate checkpoint here, whatever the verdict")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = AdaptConfig(camera=args.camera, frames=args.frames, base=args.base, labels=args.labels, device=args.device, seed=args.seed, registry_root=args.models, publish=not args.no_publish, save_candidate=args.save_candidate)
        cfg.stages = tuple(s for s in args.stages.split(",") if s)
        cfg.keep_count = args.keep_count
        cfg.scene = args.scene
        cfg.gate = replace(cfg.gate, per_person_uncertainty=args.per_person_uncertainty, min_count_ratio=args.min_count_ratio, max_count_ratio=args.max_count_ratio)
        if args.flip_steps is not None:
            cfg.flip = replace(cfg.flip, steps=args.flip_steps)
        pl = {k: v for k, v in {"rounds": args.rounds, "steps_per_round": args.steps_per_round, "keep_fraction": args.keep_fraction, "rule": args.pseudo_rule}.items() if v is not None}
        if args.max_side is not None:
            cfg.max_side = args.max_side
            pl["max_side"] = args.max_side
        cfg.pseudo = replace(cfg.pseudo, **pl)
        if args.max_frames is not None:
            cfg.max_frames = args.max_frames
        if args.buffer is not None:
            cfg.buffer_root = args.buffer
        if args.synthetic is not None:
            cfg.synthetic = args.synthetic
        report = adapt_camera(cfg)
    except (AdaptError, CheckpointError, RegistryError, InvalidCameraName, ValueError, FloatingPointError) as exc:
        print(f"crowdwatch adapt: {exc}; nothing was published", file=sys.stderr)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"camera": args.camera, "error": str(exc), "published": None}, indent=2))
        skipped = isinstance(exc, TooFewFrames)
        record(args, "skipped" if skipped else "failed", str(exc))
        return 4 if skipped else 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    v = report["validation"]
    record(args, "succeeded" if v["verdict"] == "accept" and (report["published"] or not cfg.publish) else "rejected", "; ".join(v["reasons"]) or (report["published"] or ""))
    print(f"{report['camera']}: {v['verdict']}" + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "") + (f"; published {report['published']}" if report["published"] else "; nothing published"))
    return 0 if v["verdict"] == "accept" else 3


if __name__ == "__main__":
    sys.exit(main())
