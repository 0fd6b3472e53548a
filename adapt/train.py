"""Supervised training of the density network (``crowdwatch train``).

A plain loop in the style of torchvision's reference scripts: build data,
model and optimiser, then ``train_one_epoch`` / ``evaluate`` per epoch, with
atomic ``last.pt`` (for resume) and ``best.pt`` (lowest validation MAE).

``--recipe base`` reproduces the shipped base model in one command: it renders
the synthetic dataset if absent, trains, and publishes to the registry.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from adapt.progress import progress

from adapt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adapt.network import CrowdCounter, ModelConfig, dataclass_from_dict

RECIPES = Path(__file__).resolve().parent / "recipes"


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

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, data, "training config")


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def worker_init(_: int) -> None:
    # cv2's own thread pool inside each DataLoader worker oversubscribes the cores
    import cv2

    cv2.setNumThreads(0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_dataset_spec(spec: str) -> tuple[Path, str]:
    """``DIR`` or ``DIR:format``; the default format is shanghaitech."""
    from adapt.datasets import FORMATS

    head, _, tail = spec.rpartition(":")
    if head and tail in FORMATS:
        return Path(head), tail
    return Path(spec), "shanghaitech"


def density_loss(pred: torch.Tensor, target: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise L2 on density maps, in the network's scaled units.

    With ``mask`` (same shape, 0/1), only masked cells count: the pseudo-label
    stage uses this for its confident cells.
    """
    err = (pred.float() - target.float()) * scale
    if mask is None:
        return err.pow(2).mean()
    return (err.pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


def count_loss(density: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Squared count error per crop over (count + 1), a Poisson-like scale: people per crop, not per cell."""
    predicted = density.float().sum(dim=(1, 2, 3))
    return ((predicted - count.float()) ** 2 / (count.float() + 1.0)).mean()


def build_optimizer(model: CrowdCounter, cfg: TrainConfig) -> torch.optim.Optimizer:
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    return torch.optim.AdamW(
        [{"params": enc, "lr": cfg.lr * cfg.encoder_lr_mult}, {"params": rest, "lr": cfg.lr}], weight_decay=cfg.weight_decay
    )


def cosine_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, total: int, warmup: int) -> None:
    if step < warmup:
        f = (step + 1) / warmup
    else:
        f = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * max(f, 0.01)


def autocast_for(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, scaler=None, clip: float = 10.0) -> None:
    """Backward, clip, step; a non-finite loss stops training with a clear error."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: loss became {loss.item()}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def check_step_settings(ema_decay: float, warmup_steps: int) -> None:
    """Validate the EMA decay and warm-up shared by the adaptation stages' configs."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), found {ema_decay}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, found {warmup_steps}")


class ParameterEMA:
    """Exponential moving average of a model's parameters during a run of steps.

    ``apply`` writes the average back into the model. Parameters only: the
    BatchNorm statistics stay those of the last step. A decay of 0 is off.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), found {decay}")
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None

    def update(self, model: torch.nn.Module) -> None:
        if self.average is not None:
            self.average.update_parameters(model)

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        if self.average is not None:
            for averaged, p in zip(self.average.module.parameters(), model.parameters()):
                p.copy_(averaged)


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
def predict_counts(model: CrowdCounter, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ensemble prediction: (count (N,), count std across masks (N,), per-mask density)."""
    per_mask = model.ensemble(image)
    counts = per_mask.sum(dim=(2, 3, 4))  # (M, N)
    return counts.mean(0), counts.std(0, unbiased=False), per_mask


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


def render_if_missing(synth: dict) -> None:
    out = Path(synth["out"])
    if (out / "meta.json").is_file():
        return
    from adapt.synth.writers import write_dataset

    print(f"rendering synthetic dataset into {out} ...", flush=True)
    write_dataset(
        out,
        n=int(synth["n"]),
        seed=int(synth.get("seed", 0)),
        width=int(synth.get("width", 640)),
        height=int(synth.get("height", 480)),
        styles=list(synth.get("styles", ["day"])),
        count_range=tuple(synth.get("count", [0, 300])),
        workers=int(synth.get("workers", 2)),
        overwrite=True,
    )


def make_loaders(cfg: TrainConfig, masks: int):
    from adapt.crowd_dataset import AugmentConfig, CrowdDataset, collate
    from adapt.datasets import read_dataset

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
        render_if_missing(spec)
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
    from adapt.registry import BASE, Registry, new_version_name

    reg = Registry()
    version = new_version_name()
    ckpt = load_checkpoint(checkpoint)
    # re-save with the final version name so the checkpoint's meta matches its card
    model = ckpt.build()
    staged = checkpoint.with_name("publish.pt")
    meta = {**ckpt.meta, "version": version, "camera": BASE, "parent": None}
    save_checkpoint(staged, model, meta)
    v = reg.publish(BASE, {"model.pt": staged}, {"parent": None, "recipe": asdict(cfg), "validation": {"val": ckpt.meta.get("val")}}, version)
    print(f"published base model {v.version} -> {v.path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch train", description="Train the density network on labelled data.")
    p.add_argument("--recipe", help="a named recipe (adapt/recipes/NAME.toml) or a TOML file; flags below override it")
    p.add_argument("--data", action="append", help="training dataset DIR[:format] (repeatable); formats: shanghaitech, ucf, gcc, json")
    p.add_argument("--val", help="validation dataset DIR[:format]")
    p.add_argument("--out", help="run directory for checkpoints and history")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--crop", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt")
    p.add_argument("--publish", action="store_true", help="register the best checkpoint as the base model")
    args = p.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe) if args.recipe else TrainConfig()
        overrides = {
            "train": args.data, "val": args.val, "out": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "crop": args.crop, "workers": args.workers, "seed": args.seed, "device": args.device, "init": args.init,
        }
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        if args.no_resume:
            cfg.resume = False
        if args.publish:
            cfg.publish = True
        if not cfg.train and not cfg.synth:
            p.error("give --data DIR[:format] or a --recipe")
        if cfg.crop % 32:
            p.error(f"--crop must be a multiple of 32, found {cfg.crop}")
        best = train(cfg)
    except (ValueError, CheckpointError, FloatingPointError) as exc:
        print(f"crowdwatch train: {exc}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
