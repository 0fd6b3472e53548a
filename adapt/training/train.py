"""Supervised training of the density network (``crowdwatch train``).

A plain loop in the style of torchvision's reference scripts: build data,
model and optimiser, then ``train_one_epoch`` / ``evaluate`` per epoch, with
atomic ``last.pt`` (for resume) and ``best.pt`` (lowest validation MAE).

``--recipe base`` reproduces the shipped base model in one command: it renders
the synthetic dataset if absent, trains, and publishes to the registry.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from adapt.model.checkpoint import load_checkpoint, save_checkpoint
from adapt.model.network import CrowdCounter, ModelConfig, dataclass_from_dict
from adapt.training.engine import (
    autocast_for,
    build_optimizer,
    cosine_lr,
    density_loss,
    optimizer_step,
    predict_counts,
    render_if_missing,
    seed_everything,
    select_device,
    worker_init,
)
from adapt.training.progress import progress

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class TrainConfig:
    train: list[str] = field(default_factory=list)      # "DIR[:format]" entries
    val: str | None = None                               # "DIR[:format]"
    out: str = "runs/train"
    epochs: int = 20
    batch_size: int = 8                                  # multiple of the number of masks
    lr: float = 1e-3
    encoder_lr_mult: float = 0.3                         # pretrained encoder moves slower
    weight_decay: float = 1e-4
    crop: int = 256
    scale_min: float = 0.6
    scale_max: float = 1.4
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True                                     # CUDA only
    val_max_side: int = 1024
    val_limit: int | None = None
    resume: bool = True
    init: str | None = None                              # start from a checkpoint's weights
    model: dict = field(default_factory=dict)            # ModelConfig overrides
    # synthetic datasets to render first if absent (used by recipes)
    synth: list[dict] = field(default_factory=list)
    publish: bool = False                                # register as the base model when done
    registry: str | None = None                          # where publish registers; default: $CROWDWATCH_MODELS, else models/

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return dataclass_from_dict(cls, data, "training config")


def parse_dataset_spec(spec: str) -> tuple[Path, str]:
    """``DIR`` or ``DIR:format``; the default format is shanghaitech."""
    from adapt.data.datasets import FORMATS

    head, _, tail = spec.rpartition(":")
    if head and tail in FORMATS:
        return Path(head), tail
    return Path(spec), "shanghaitech"


def train_one_epoch(model, loader, optimizer, scaler, device, epoch, schedule, amp: bool) -> dict:
    model.train()
    total, n, step0 = 0.0, 0, epoch * len(loader)
    bar = progress(loader, f"epoch {epoch}", leave=False)
    for i, batch in enumerate(bar):
        schedule(step0 + i)
        image = batch["image"].to(device, non_blocking=True)
        target = batch["density"].to(device, non_blocking=True)
        with autocast_for(device, amp):
            pred = model.forward_train(image)
        loss = density_loss(pred, target, model.config.density_scale)
        optimizer_step(model, optimizer, loss, f"epoch {epoch} step {i}", scaler)
        total += loss.item() * image.shape[0]
        n += image.shape[0]
        bar.set_postfix(loss=f"{total / n:.4f}")
    return {"loss": total / max(n, 1)}


@torch.inference_mode()
def evaluate(model: CrowdCounter, loader, device) -> dict:
    model.eval()
    errs = []
    for batch in progress(loader, "val", leave=False):
        count, _, _ = predict_counts(model, batch["image"].to(device))
        errs.append((count.cpu() - batch["count"]).numpy())
    e = np.concatenate(errs) if errs else np.zeros(0)
    return {"mae": float(np.abs(e).mean()) if len(e) else float("nan"), "rmse": float(np.sqrt((e**2).mean())) if len(e) else float("nan"), "n": len(e)}


def load_recipe(name_or_path: str) -> TrainConfig:
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.toml"))
        raise ValueError(f"recipe {name_or_path!r} not found (known: {known})")
    with path.open("rb") as f:
        return TrainConfig.from_dict(tomllib.load(f))


def make_loaders(cfg: TrainConfig, masks: int):
    from adapt.data.crowd_dataset import AugmentConfig, CrowdDataset, collate
    from adapt.data.datasets import read_dataset

    items = []
    for spec in cfg.train:
        root, fmt = parse_dataset_spec(spec)
        index = read_dataset(root, fmt)
        if index.skipped:
            print(f"{root}: skipped {len(index.skipped)} items, e.g. {index.skipped[0][0]}: {index.skipped[0][1]}", file=sys.stderr)
        items += index.items
    if not items:
        raise ValueError("no training images")
    if cfg.batch_size % masks:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the number of masks ({masks})")
    aug = AugmentConfig(crop=(cfg.crop, cfg.crop), scale_range=(cfg.scale_min, cfg.scale_max))
    train_ds = CrowdDataset(items, aug, seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers, collate_fn=collate,
        generator=g, persistent_workers=cfg.workers > 0, worker_init_fn=worker_init,
    )
    val_loader = None
    if cfg.val:
        root, fmt = parse_dataset_spec(cfg.val)
        val_items = read_dataset(root, fmt, limit=cfg.val_limit).items
        val_ds = CrowdDataset(val_items, None, seed=cfg.seed, max_side=cfg.val_max_side)
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=min(cfg.workers, 1), collate_fn=collate)
    return train_ds, train_loader, val_loader


def train(cfg: TrainConfig) -> Path:
    """Run training; returns the path of the best checkpoint."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    for spec in cfg.synth:
        render_if_missing(
            Path(spec["out"]), n=int(spec["n"]), seed=int(spec.get("seed", 0)), width=int(spec.get("width", 640)),
            height=int(spec.get("height", 480)), styles=list(spec.get("styles", ["day"])), count_range=tuple(spec.get("count", [0, 300])),
            workers=int(spec.get("workers", 2)), scenes=list(spec.get("scenes", ["street"])), empty=spec.get("empty"),
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = ModelConfig(**cfg.model)
    model = CrowdCounter(model_cfg, pretrained=True)
    if cfg.init:
        model.load_state_dict(load_checkpoint(cfg.init).state_dict)
    model.to(device)
    train_ds, train_loader, val_loader = make_loaders(cfg, model_cfg.masks)
    optimizer = build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp)
    total_steps = cfg.epochs * len(train_loader)
    warmup = min(200, total_steps // 10)
    start_epoch, best = 0, float("inf")
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        ckpt = load_checkpoint(last)
        model.load_state_dict(ckpt.state_dict)
        ts = ckpt.train_state or {}
        optimizer.load_state_dict(ts["optimizer"])
        start_epoch, best = int(ts["epoch"]) + 1, float(ts.get("best", best))
        print(f"resumed from {last} at epoch {start_epoch}", flush=True)
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("resume",)}
    meta = {"version": "unversioned", "camera": "base", "parent": None, "recipe": recipe}
    history = json.loads((out / "history.json").read_text()) if start_epoch and (out / "history.json").is_file() else []
    print(f"training on {device}: {len(train_ds)} images, {len(train_loader)} steps/epoch, {cfg.epochs} epochs", flush=True)
    for epoch in range(start_epoch, cfg.epochs):
        train_ds.set_epoch(epoch)
        t0 = time.time()
        stats = train_one_epoch(
            model, train_loader, optimizer, scaler, device, epoch,
            lambda step: cosine_lr(optimizer, base_lrs, step, total_steps, warmup), cfg.amp,
        )
        stats["epoch"], stats["seconds"] = epoch, round(time.time() - t0, 1)
        if val_loader is not None:
            stats.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device).items()})
        history.append(stats)
        print(json.dumps(stats), flush=True)
        score = stats.get("val_mae", stats["loss"])
        if score < best:
            best = score
            save_checkpoint(out / "best.pt", model, {**meta, "epoch": epoch, "val": stats})
        save_checkpoint(last, model, {**meta, "epoch": epoch}, {"optimizer": optimizer.state_dict(), "epoch": epoch, "best": best})
        (out / "history.json").write_text(json.dumps(history, indent=2))
    best_path = out / "best.pt" if (out / "best.pt").is_file() else last
    if cfg.publish:
        publish_base(best_path, cfg)
    return best_path


def publish_base(checkpoint: Path, cfg: TrainConfig) -> None:
    from adapt.store.registry import BASE, Registry, new_version_name

    reg = Registry(cfg.registry)
    version = new_version_name()
    ckpt = load_checkpoint(checkpoint)
    # re-save with the final version name so the checkpoint's meta matches its card
    model = ckpt.build()
    staged = checkpoint.with_name("publish.pt")
    meta = {**ckpt.meta, "version": version, "camera": BASE, "parent": None}
    save_checkpoint(staged, model, meta)
    v = reg.publish(BASE, {"model.pt": staged}, {"parent": None, "recipe": asdict(cfg), "validation": {"val": ckpt.meta.get("val")}}, version)
    print(f"published base model {v.version} -> {v.path}")
