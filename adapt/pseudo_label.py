"""Stage 2 of adaptation: fine-tune on the ensemble's own confident predictions.

One round:
1. run the current model with all M masks on every buffered real frame: the
   mean is the pseudo label, the per-cell std across masks its uncertainty;
2. keep the least-uncertain cells (``select_confident``);
3. fine-tune on labelled synthetic crops plus a masked L2 loss on the kept
   cells of real crops.

Rounds repeat until the mean predicted count changes by less than ``tol``
(relative) from one round to the next, or ``rounds`` are done.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from adapt.progress import progress

from adapt.crowd_dataset import fit_max_side, pad_to, padded_hw, resize
from adapt.datasets import BadImage, load_image
from adapt.flip_stage import loop_forever, make_optimizer
from adapt.network import STRIDE, CrowdCounter, freeze_batchnorm
from adapt.train import density_loss, optimizer_step

RULES = ("fraction", "threshold")


@dataclass(frozen=True)
class PseudoLabelConfig:
    rounds: int = 3                  # K, at most
    steps_per_round: int = 150
    # Cells where every mask predicts (almost) nothing are "empty" and always
    # kept as zero labels. Occupied cells are ranked by relative uncertainty,
    # std / mean: the absolute std grows with density, so ranking by it keeps
    # only empty and sparse cells, which carry none of the count and turn the
    # stage into background suppression that drags every count down.
    # Default rule: keep the lowest-uncertainty fraction of the occupied cells,
    # ranked over the whole buffer. A fraction adapts to each camera's
    # uncertainty scale, where a fixed threshold would keep everything on an
    # easy camera and nothing on a hard one.
    rule: str = "fraction"
    keep_fraction: float = 0.5
    threshold: float = 0.25          # relative std (std / mean) of an occupied cell, for rule="threshold"
    empty_below: float = 1e-4        # people per cell under which a cell counts as empty
    tol: float = 0.02                # stop when the mean count moves less than this (relative)
    synth_batch: int = 4
    real_batch: int = 4              # multiple of the number of masks
    crop: int = 256
    lr: float = 5e-5
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    real_weight: float = 1.0
    synth_weight: float = 1.0
    labels_from: str = "crop"        # "crop": teacher runs on the training crop; "frame": full-frame labels cropped
    max_side: int | None = 1024

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"pseudo-label rule must be one of {RULES}, found {self.rule!r}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], found {self.keep_fraction}")
        if self.labels_from not in ("crop", "frame"):
            raise ValueError(f"labels_from must be 'crop' or 'frame', found {self.labels_from!r}")
        if self.threshold < 0 or self.empty_below < 0:
            raise ValueError("threshold and empty_below must be >= 0")


@dataclass
class PseudoLabels:
    """Per frame: padded image size, mean density, per-cell std and kept-cell mask."""

    paths: list[Path]
    mean: list[np.ndarray]
    std: list[np.ndarray]
    keep: list[np.ndarray]
    valid: list[np.ndarray]          # False on the zero padding
    cut: float = 0.0                 # relative-std cut the rule chose over the whole buffer

    def mean_count(self) -> float:
        return float(np.mean([m.sum() for m in self.mean])) if self.mean else float("nan")

    def kept_fraction(self) -> float:
        return float(np.mean(np.concatenate([k.ravel() for k in self.keep]))) if self.keep else 0.0

    def kept_count_fraction(self) -> float:
        """Share of the predicted count that lies in kept cells: near 0 means the
        labels teach only "no one here", which can only lower counts."""
        total = sum(float(m.sum()) for m in self.mean)
        return sum(float(m[k].sum()) for m, k in zip(self.mean, self.keep)) / total if total > 0 else 0.0


def load_padded(path: Path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """A frame resized to fit ``max_side`` and zero-padded to multiples of 32, plus its valid size."""
    image = load_image(path)
    hw = fit_max_side(image.shape[:2], max_side)
    return pad_to(resize(image, hw), padded_hw(hw)), hw


def relative_std(mean: np.ndarray, std: np.ndarray, empty_below: float) -> np.ndarray:
    """std / mean per cell; 0 for empty cells (all masks agree on nothing)."""
    occupied = mean > empty_below
    return np.where(occupied, std / np.where(occupied, mean, 1.0), 0.0)


def confident(mean, std, cut: float, empty_below: float):
    """Kept cells: empty ones, and occupied ones with std / mean <= cut (numpy or torch)."""
    return (mean <= empty_below) | (std <= cut * mean)


def rule_cut(mean: list[np.ndarray], std: list[np.ndarray], valid: list[np.ndarray], cfg: PseudoLabelConfig) -> float:
    """The relative-std cut: fixed, or the ``keep_fraction`` quantile over every occupied cell."""
    if cfg.rule == "threshold":
        return cfg.threshold
    occupied = [(m > cfg.empty_below) & v for m, v in zip(mean, valid)]
    pool = np.concatenate([relative_std(m, s, cfg.empty_below)[o] for m, s, o in zip(mean, std, occupied)]) if mean else np.zeros(0)
    return float(np.quantile(pool, cfg.keep_fraction)) if pool.size else 0.0


def select_confident(mean: list[np.ndarray], std: list[np.ndarray], valid: list[np.ndarray], cfg: PseudoLabelConfig) -> list[np.ndarray]:
    """Boolean masks of the cells kept as pseudo labels: every empty cell plus
    the confident occupied ones (padding is never kept)."""
    cut = rule_cut(mean, std, valid, cfg)
    return [confident(m, s, cut, cfg.empty_below) & v for m, s, v in zip(mean, std, valid)]


@torch.inference_mode()
def predict_frames(model: CrowdCounter, paths: list[Path], device: torch.device, cfg: PseudoLabelConfig) -> PseudoLabels:
    """Ensemble mean and std for every frame; unreadable frames are dropped (the caller counts them)."""
    model.eval()
    kept_paths, means, stds, valids = [], [], [], []
    for path in progress(paths, "pseudo labels"):
        try:
            image, (h, w) = load_padded(path, cfg.max_side)
        except BadImage:
            continue
        per_mask = model.ensemble(torch.from_numpy(image)[None].to(device))[:, 0, 0]
        mean = per_mask.mean(0).cpu().numpy()
        valid = np.zeros(mean.shape, dtype=bool)
        valid[: -(-h // STRIDE), : -(-w // STRIDE)] = True
        kept_paths.append(path)
        means.append(mean * valid)
        stds.append(per_mask.std(0, unbiased=False).cpu().numpy())
        valids.append(valid)
    cut = rule_cut(means, stds, valids, cfg)
    keep = [confident(m, s, cut, cfg.empty_below) & v for m, s, v in zip(means, stds, valids)]
    return PseudoLabels(kept_paths, means, stds, keep, valids, cut)


class PseudoLabelled(Dataset):
    """Random crops of real frames with their pseudo density and kept-cell mask.

    Crops are aligned to the 8-pixel cell grid so image and maps stay registered.
    """

    def __init__(self, labels: PseudoLabels, crop: int, max_side: int | None, seed: int = 0):
        if crop % 32:
            raise ValueError(f"crop must be a multiple of 32, found {crop}")
        self.labels, self.max_side, self.seed, self.epoch = labels, max_side, seed, 0
        # one crop size for all frames, so frames of mixed sizes still batch
        self.crop_h = min([crop] + [m.shape[0] * STRIDE for m in labels.mean]) // 32 * 32
        self.crop_w = min([crop] + [m.shape[1] * STRIDE for m in labels.mean]) // 32 * 32

    def __len__(self) -> int:
        return len(self.labels.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, _ = load_padded(self.labels.paths[index], self.max_side)
        mean, keep = self.labels.mean[index], self.labels.keep[index]
        ch, cw = self.crop_h, self.crop_w
        cy = int(rng.integers(0, mean.shape[0] - ch // STRIDE + 1))
        cx = int(rng.integers(0, mean.shape[1] - cw // STRIDE + 1))
        img = image[cy * STRIDE : cy * STRIDE + ch, cx * STRIDE : cx * STRIDE + cw]
        den = mean[cy : cy + ch // STRIDE, cx : cx + cw // STRIDE]
        msk = keep[cy : cy + ch // STRIDE, cx : cx + cw // STRIDE]
        val = self.labels.valid[index][cy : cy + ch // STRIDE, cx : cx + cw // STRIDE]
        if rng.random() < 0.5:
            img, den, msk, val = img[:, ::-1], den[:, ::-1], msk[:, ::-1], val[:, ::-1]
        as_map = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
        return {"image": torch.from_numpy(np.ascontiguousarray(img)), "density": as_map(den), "mask": as_map(msk), "valid": as_map(val)}


@torch.no_grad()  # not inference_mode: the labels enter the student's loss
def crop_labels(teacher: CrowdCounter, real: dict, cut: float, cfg: PseudoLabelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo density and kept-cell mask for a batch of crops, predicted on the crops themselves.

    The density net is not context-free: on ShanghaiTech B, a 256-pixel crop
    predicts several times the density that the full frame gives the same
    cells (bench/crop_consistency.py). Labels cut out of full-frame predictions
    would then teach the crops to lower everything, and each round would drag
    the count down; labels made in the geometry the student trains in do not.
    """
    per_mask = teacher.ensemble(real["image"].to(device))
    mean, std = per_mask.mean(0), per_mask.std(0, unbiased=False)
    keep = confident(mean, std, cut, cfg.empty_below) & (real["valid"].to(device) > 0)
    return mean, keep.float()


def finetune_round(model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device, cut: float = 0.0) -> dict:
    # the teacher is the model as the round starts, so the labels hold still while the student learns
    teacher = copy.deepcopy(model).eval().to(device) if cfg.labels_from == "crop" else None
    freeze_batchnorm(model.train().to(device))
    opt = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    total_s = total_r = 0.0
    bar = progress(range(cfg.steps_per_round), "fine-tune", leave=False)
    for step in bar:
        synth, real = next(synth_batches), next(real_batches)
        scale = model.config.density_scale
        # two passes so each half of the batch sees every mask
        loss_s = density_loss(model.forward_train(synth["image"].to(device)), synth["density"].to(device), scale)
        if teacher is not None:
            target, mask = crop_labels(teacher, real, cut, cfg, device)
        else:
            target, mask = real["density"].to(device), real["mask"].to(device)
        pred_r = model.forward_train(real["image"].to(device))
        loss_r = density_loss(pred_r, target, scale, mask=mask)
        loss = cfg.synth_weight * loss_s + cfg.real_weight * loss_r
        optimizer_step(model, opt, loss, f"pseudo-label fine-tuning step {step}")
        total_s += loss_s.item()
        total_r += loss_r.item()
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_pl=f"{loss_r.item():.3f}")
    n = max(cfg.steps_per_round, 1)
    return {"loss_s": total_s / n, "loss_pseudo": total_r / n}


def run_pseudo_label_stage(model: CrowdCounter, synth_batches: Iterator[dict], frame_paths: list[Path], cfg: PseudoLabelConfig, device: torch.device, seed: int = 0) -> list[dict]:
    """Rounds of pseudo labelling and fine-tuning; returns per-round statistics."""
    if cfg.real_batch % model.config.masks or cfg.synth_batch % model.config.masks:
        raise ValueError(f"real_batch and synth_batch must be multiples of the number of masks ({model.config.masks})")
    rounds: list[dict] = []
    previous = None
    for r in range(cfg.rounds):
        labels = predict_frames(model, frame_paths, device, cfg)
        if not labels.paths:
            raise ValueError("no readable frames to pseudo-label")
        mean_count = labels.mean_count()
        stats = {
            "round": r + 1,
            "frames": len(labels.paths),
            "mean_count": mean_count,
            "mean_cell_std": float(np.mean([s.mean() for s in labels.std])),
            "kept_fraction": labels.kept_fraction(),
            "kept_count_fraction": labels.kept_count_fraction(),
        }
        if previous is not None:
            change = abs(mean_count - previous) / max(previous, 1e-6)
            stats["count_change"] = change
            if change < cfg.tol:
                stats["stopped"] = f"mean count changed {change:.3%} < tol {cfg.tol:.1%}"
                rounds.append(stats)
                break
        loader = DataLoader(
            PseudoLabelled(labels, cfg.crop, cfg.max_side, seed=seed + r), batch_size=cfg.real_batch, shuffle=True,
            drop_last=True, num_workers=0,
        )
        if len(loader) == 0:
            raise ValueError(f"need at least {cfg.real_batch} frames for a pseudo-label batch, have {len(labels.paths)}")
        stats.update(finetune_round(model, synth_batches, loop_forever(loader), cfg, device, labels.cut))
        rounds.append(stats)
        previous = mean_count
    return rounds
