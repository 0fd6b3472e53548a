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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import os
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from adapt.progress import progress

from adapt.crowd_dataset import fit_max_side, pad_to, padded_hw, resize
from adapt.datasets import BadImage, load_image
from adapt.flip_stage import loop_forever, make_optimizer
from adapt.network import STRIDE, CrowdCounter
from adapt.train import density_loss, optimizer_step

RULES = ("fraction", "threshold")


@dataclass(frozen=True)
class PseudoLabelConfig:
    rounds: int = 3                  # K, at most
    steps_per_round: int = 150
    # Default rule: keep the globally lowest-uncertainty fraction of cells.
    # A fraction adapts to each camera's uncertainty scale, where a fixed
    # threshold would keep everything on an easy camera and nothing on a hard
    # one. Ranking is global over the buffer, so a frame that is uncertain
    # everywhere contributes few cells.
    rule: str = "fraction"
    keep_fraction: float = 0.5
    threshold: float = 0.0           # per-cell std in people per cell, for rule="threshold"
    tol: float = 0.02                # stop when the mean count moves less than this (relative)
    synth_batch: int = 4
    real_batch: int = 4              # multiple of the number of masks
    crop: int = 256
    lr: float = 5e-5
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    real_weight: float = 1.0
    max_side: int | None = 1024

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"pseudo-label rule must be one of {RULES}, found {self.rule!r}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], found {self.keep_fraction}")


@dataclass
class PseudoLabels:
    """Per frame: padded image size, mean density, per-cell std and kept-cell mask."""

    paths: list[Path]
    mean: list[np.ndarray]
    std: list[np.ndarray]
    keep: list[np.ndarray]

    def mean_count(self) -> float:
        return float(np.mean([m.sum() for m in self.mean])) if self.mean else float("nan")

    def kept_fraction(self) -> float:
        return float(np.mean(np.concatenate([k.ravel() for k in self.keep]))) if self.keep else 0.0


def load_padded(path: Path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """A frame resized to fit ``max_side`` and zero-padded to multiples of 32, plus its valid size."""
    image = load_image(path)
    hw = fit_max_side(image.shape[:2], max_side)
    return pad_to(resize(image, hw), padded_hw(hw)), hw


def select_confident(std: list[np.ndarray], valid: list[np.ndarray], cfg: PseudoLabelConfig) -> list[np.ndarray]:
    """Boolean masks of the cells kept as pseudo labels (padding is never kept)."""
    if cfg.rule == "threshold":
        cut = cfg.threshold
    else:
        pool = np.concatenate([s[v] for s, v in zip(std, valid)]) if std else np.zeros(0)
        cut = float(np.quantile(pool, cfg.keep_fraction)) if pool.size else 0.0
    return [(s <= cut) & v for s, v in zip(std, valid)]


def select_balanced(means, stds, margins, valids, fraction):
    occ = [(m > 0) & v for m, v in zip(means, valids)]
    emp = [(m <= 0) & v for m, v in zip(means, valids)]
    cv = [s / np.maximum(m, 1e-12) for s, m in zip(stds, means)]
    pool_o = np.concatenate([c[o] for c, o in zip(cv, occ)])
    pool_e = np.concatenate([g[e] for g, e in zip(margins, emp)])
    cut_o = float(np.quantile(pool_o, fraction)) if pool_o.size else 0.0
    cut_e = float(np.quantile(pool_e, fraction)) if pool_e.size else 0.0
    return [(o & (c <= cut_o)) | (e & (g <= cut_e)) for o, e, c, g in zip(occ, emp, cv, margins)]


@torch.inference_mode()
def predict_frames(model: CrowdCounter, paths: list[Path], device: torch.device, cfg: PseudoLabelConfig) -> PseudoLabels:
    """Ensemble mean and std for every frame; unreadable frames are dropped (the caller counts them)."""
    model.eval()
    kept_paths, means, stds, valids, margins = [], [], [], [], []
    for path in progress(paths, "pseudo labels"):
        try:
            image, (h, w) = load_padded(path, cfg.max_side)
        except BadImage:
            continue
        raw = model.ensemble(torch.from_numpy(image)[None].to(device), raw=True)[:, 0, 0]
        per_mask = F.relu(raw)
        mean = per_mask.mean(0).cpu().numpy()
        valid = np.zeros(mean.shape, dtype=bool)
        valid[: -(-h // STRIDE), : -(-w // STRIDE)] = True
        kept_paths.append(path)
        means.append(mean * valid)
        stds.append(per_mask.std(0, unbiased=False).cpu().numpy())
        margins.append(raw.max(0).values.cpu().numpy())
        valids.append(valid)
    if os.environ.get('CW_PL_RULE') == 'balanced':
        keep = select_balanced(means, stds, margins, valids, cfg.keep_fraction)
    else:
        keep = select_confident(stds, valids, cfg)
    return PseudoLabels(kept_paths, means, stds, keep)


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
        if rng.random() < 0.5:
            img, den, msk = img[:, ::-1], den[:, ::-1], msk[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img)),
            "density": torch.from_numpy(np.ascontiguousarray(den, dtype=np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(msk, dtype=np.float32))[None],
            "count": torch.tensor(float(den.sum())),
        }


def finetune_round(model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device) -> dict:
    model.train().to(device)
    if os.environ.get('CW_FREEZE_BN_PSEUDO', '0') == '1':
        from adapt.network import freeze_batchnorm
        freeze_batchnorm(model)
    ema_decay = float(os.environ.get('CW_EMA', '0'))
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)) if ema_decay > 0 else None
    opt = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    total_s = total_r = 0.0
    bar = progress(range(cfg.steps_per_round), "fine-tune", leave=False)
    for step in bar:
        synth, real = next(synth_batches), next(real_batches)
        scale = model.config.density_scale
        # two passes so each half of the batch sees every mask
        loss_s = density_loss(model.forward_train(synth["image"].to(device)), synth["density"].to(device), scale)
        if os.environ.get('CW_PL_LINEAR', '0') == '1':
            raw = model.forward_train(real["image"].to(device), raw=True)
            target = real["density"].to(device)
            pred_r = torch.where(target > 0, raw, F.relu(raw))
        else:
            pred_r = model.forward_train(real["image"].to(device))
        loss_r = density_loss(pred_r, real["density"].to(device), scale, mask=real["mask"].to(device))
        loss = float(os.environ.get('CW_PL_SYNTH_W', '1')) * loss_s + cfg.real_weight * loss_r
        if os.environ.get('CW_PL_ANCHOR', '0') == '1':
            pc = F.relu(pred_r).sum((1, 2, 3)) if True else None
            lc = real["count"].to(device)
            loss = loss + ((pc - lc) ** 2 / (lc + 1)).mean()
        optimizer_step(model, opt, loss, f"pseudo-label fine-tuning step {step}")
        if ema is not None:
            ema.update_parameters(model)
        total_s += loss_s.item()
        total_r += loss_r.item()
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_pl=f"{loss_r.item():.3f}")
    n = max(cfg.steps_per_round, 1)
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
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
        stats.update(finetune_round(model, synth_batches, loop_forever(loader), cfg, device))
        rounds.append(stats)
        previous = mean_count
    return rounds
