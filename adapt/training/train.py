"""Supervised training of the density network (``crowdwatch train``).

A plain loop in the style of torchvision's reference scripts: build data,
model and optimiser, then train and ``evaluate`` per epoch, with atomic
``best.pt`` (lowest validation MAE) and ``last.pt``, the run's resume point.
``last.pt`` is written at each epoch's end, every ``checkpoint_every_s``
within an epoch, and on SIGTERM or SIGINT before the run exits; a run started
again in the same ``out`` resumes from it exactly (adapt/training/resume.py):
an hour-long epoch on a CPU survives the end of a session.

``--recipe base`` trains a base model with the shipped one's recipe in one command: it renders
the synthetic dataset if absent, trains, and publishes to the registry.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from adapt.data.images import DatasetError
from adapt.model.checkpoint import load_checkpoint, save_checkpoint
from adapt.model.network import CrowdCounter, ModelConfig, dataclass_from_dict
from adapt.store.atomic import atomic_write
from adapt.training.engine import (
    apply_step,
    autocast_for,
    backward_clipped,
    build_optimizer,
    cosine_lr,
    density_loss,
    predict_counts,
    render_if_missing,
    seed_everything,
    select_device,
    worker_init,
)
from adapt.training.interrupt import SIGNALS, StopOnSignal, TrainingInterrupted
from adapt.training.progress import progress
from adapt.training.resume import DataKey, EpochBatchSampler, Interval, ResumeError, RunState, restore_run, train_state

if TYPE_CHECKING:
    from adapt.data.datasets import Annotation, DatasetIndex

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
    checkpoint_every_s: float = 300.0                    # also save last.pt this often within an epoch (0: after every step)
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


def read_training_items(specs: list[str]) -> list[Annotation]:
    """Every usable item of the training datasets; refuses sets that cannot train a density model."""
    from adapt.data.datasets import read_dataset

    items: list[Annotation] = []
    for spec in specs:
        root, fmt = parse_dataset_spec(spec)
        index = read_dataset(root, fmt)
        report_skipped(index)
        if not index.items:
            raise DatasetError(f"training dataset {root}: none of its {len(index.skipped)} files is usable (see the skips above)")
        items += index.items
    if not items:
        raise DatasetError("no training dataset given")
    if not any(a.count for a in items):
        # empty scenes teach "nobody here" only beside scenes with people; alone they teach a model that always says 0
        raise DatasetError(f"no labelled person in {len(items)} training images of {', '.join(specs)}: density training needs people")
    return items


def report_skipped(index: DatasetIndex) -> None:
    if index.skipped:
        path, reason = index.skipped[0]
        print(f"{index.root}: skipped {len(index.skipped)} items, e.g. {path}: {reason}", file=sys.stderr)


def train_worker_init(worker_id: int) -> None:
    # Only the main process acts on SIGTERM/SIGINT (it saves, then stops its workers): a worker killed by
    # the same signal first would make the DataLoader raise in the middle of the step being saved.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    worker_init(worker_id)


def stop_workers(*loaders: DataLoader | None) -> None:
    """Stop the loaders' persistent workers now.

    They ignore SIGTERM, so the terminate() with which Python's exit ends
    daemon processes cannot stop them, and its join would wait for ever while
    an exception's traceback keeps the loader alive.
    """
    for loader in loaders:
        running = getattr(loader, "_iterator", None)  # DataLoader keeps its persistent workers' iterator here
        if running is not None and hasattr(running, "_shutdown_workers"):
            running._shutdown_workers()


def make_loaders(cfg: TrainConfig, masks: int):
    from adapt.data.crowd_dataset import AugmentConfig, CrowdDataset, collate
    from adapt.data.datasets import read_dataset

    if cfg.batch_size % masks:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the number of masks ({masks})")
    items = read_training_items(cfg.train)
    if len(items) < cfg.batch_size:
        raise DatasetError(f"{len(items)} usable training images make no full batch of {cfg.batch_size}")
    aug = AugmentConfig(crop=(cfg.crop, cfg.crop), scale_range=(cfg.scale_min, cfg.scale_max))
    train_ds = CrowdDataset(items, aug, seed=cfg.seed)
    sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate, persistent_workers=cfg.workers > 0,
        worker_init_fn=train_worker_init, generator=torch.Generator().manual_seed(cfg.seed),  # workers' seeds, not the global RNG
    )
    val_loader = None
    if cfg.val:
        root, fmt = parse_dataset_spec(cfg.val)
        index = read_dataset(root, fmt, limit=cfg.val_limit)
        report_skipped(index)
        if not index.items:
            raise DatasetError(f"validation dataset {root}: no usable image")
        val_ds = CrowdDataset(index.items, None, seed=cfg.seed, max_side=cfg.val_max_side)
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=min(cfg.workers, 1), collate_fn=collate,
                                persistent_workers=cfg.workers > 0, worker_init_fn=train_worker_init)
    return train_ds, sampler, train_loader, val_loader


@dataclass
class Run:
    """One training run's moving parts, and the steps that change what ``last.pt`` holds."""

    cfg: TrainConfig
    model: CrowdCounter
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    out: Path
    meta: dict
    data: DataKey
    steps: int                                  # per epoch
    state: RunState
    stop: StopOnSignal
    base_lrs: list[float] = field(default_factory=list)

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def save_last(self) -> None:
        meta = {**self.meta, "epoch": self.state.epoch, "step": self.state.step}
        save_checkpoint(self.last, self.model, meta, train_state(self.state, self.data, self.optimizer, self.scaler))

    def train_epoch(self, loader: DataLoader, every: Interval, on_batch: Callable[[CrowdCounter, RunState], None] | None) -> None:
        s = self.state
        loader.dataset.set_epoch(s.epoch)
        loader.batch_sampler.set_position(s.epoch, s.step)
        self.model.train()
        desc = f"epoch {s.epoch}" + (f" from step {s.step}" if s.step else "")
        mark = time.monotonic()
        bar = progress(loader, desc, leave=False)
        for batch in bar:
            if on_batch is not None:
                on_batch(self.model, s)
            self.train_batch(batch, every, mark)
            mark = time.monotonic()
            bar.set_postfix(loss=f"{s.epoch_loss:.4f}")

    def train_batch(self, batch: dict, every: Interval, since: float) -> None:
        """One step, all or nothing: until the weights move, an exception (a signal) leaves the model as it was."""
        s = self.state
        buffers = [b.detach().clone() for b in self.model.buffers()]
        applied = False
        try:
            total = self.cfg.epochs * self.steps
            cosine_lr(self.optimizer, self.base_lrs, s.epoch * self.steps + s.step, total, min(200, total // 10))
            image = batch["image"].to(self.device, non_blocking=True)
            target = batch["density"].to(self.device, non_blocking=True)
            with autocast_for(self.device, self.cfg.amp):
                pred = self.model.forward_train(image)
            loss = density_loss(pred, target, self.model.config.density_scale)
            backward_clipped(self.model, self.optimizer, loss, s.where(self.steps), self.scaler)
            with self.stop.deferred():  # a signal from here on is raised once the step is applied and counted
                apply_step(self.optimizer, self.scaler)
                applied = True
                s.add_batch(loss.item(), image.shape[0], time.monotonic() - since)
                if every.due():
                    self.save_last()
        except BaseException:
            if not applied:
                with torch.no_grad():  # the forward pass moved the BatchNorm statistics
                    for b, saved in zip(self.model.buffers(), buffers):
                        b.copy_(saved)
            raise

    def finish_epoch(self, val_loader: DataLoader | None) -> None:
        s = self.state
        stats = {"loss": s.epoch_loss, "epoch": s.epoch, "seconds": round(s.seconds, 1)}
        if val_loader is not None:
            stats.update({f"val_{k}": v for k, v in evaluate(self.model, val_loader, self.device).items()})
        with self.stop.deferred():
            s.history.append(stats)
            score = stats.get("val_mae", stats["loss"])
            if score < s.best:
                s.best = score
                save_checkpoint(self.out / "best.pt", self.model, {**self.meta, "epoch": s.epoch, "val": stats})
            s.next_epoch()
            self.save_last()
            atomic_write(self.out / "history.json", json.dumps(s.history, indent=2).encode())
        print(json.dumps(stats), flush=True)


def train(cfg: TrainConfig, on_batch: Callable[[CrowdCounter, RunState], None] | None = None) -> Path:
    """Run training; returns the path of the best checkpoint.

    ``on_batch(model, state)`` is called before each batch (tests stop a run
    there). On SIGTERM or SIGINT it saves ``last.pt`` and raises
    :class:`TrainingInterrupted`.
    """
    every = Interval(cfg.checkpoint_every_s)
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
    train_ds, sampler, train_loader, val_loader = make_loaders(cfg, model_cfg.masks)  # bad data fails before the model loads
    model = CrowdCounter(model_cfg, pretrained=True)
    if cfg.init:
        model.load_state_dict(load_checkpoint(cfg.init).state_dict)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp)
    data = DataKey(len(train_ds), cfg.batch_size, cfg.seed)
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("resume",)}
    meta = {"version": "unversioned", "camera": "base", "parent": None, "recipe": recipe}
    run = Run(cfg, model, optimizer, scaler, device, out, meta, data, sampler.steps_per_epoch, RunState(), StopOnSignal(), base_lrs)
    if cfg.resume and run.last.is_file():
        ckpt = load_checkpoint(run.last)
        if not ckpt.train_state:
            raise ResumeError(f"{run.last} holds no training state; start over with --no-resume")
        model.load_state_dict(ckpt.state_dict)
        run.state = restore_run(ckpt.train_state, data, optimizer, scaler, out / "history.json")
        print(f"resumed from {run.last} at {run.state.where(run.steps)} (best so far {run.state.best:.4g})", flush=True)
    print(f"training on {device}: {len(train_ds)} images, {run.steps} steps/epoch, {cfg.epochs} epochs", flush=True)
    with run.stop:
        try:
            while run.state.epoch < cfg.epochs:
                run.train_epoch(train_loader, every, on_batch)
                run.finish_epoch(val_loader)
        except BaseException as exc:
            if not run.stop.requested:
                raise
            with run.stop.deferred():
                run.save_last()
            detail = f"saved {run.last} at {run.state.where(run.steps)}; run the same command to resume"
            raise TrainingInterrupted(run.stop.signum or signal.SIGTERM, detail) from exc
        finally:
            stop_workers(train_loader, val_loader)
    best_path = out / "best.pt" if (out / "best.pt").is_file() else run.last
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
