"""Stage 2 of adaptation: fine-tune on the ensemble's own confident predictions.

One round:
1. run the current model with all M masks on every buffered real frame: the
   mean is the pseudo label, the per-cell std across masks its uncertainty;
2. keep the least-uncertain cells (``select_confident``);
3. fine-tune on labelled synthetic crops plus a masked L2 loss on the kept
   cells of the real frames, ending on the EMA of the round's weights
   (``ema_decay``).

Rounds repeat until the mean predicted count changes by less than ``tol``
(relative) from one round to the next, or ``rounds`` are done.

Rules for the confident cells. The density head ends in a ReLU, so a cell
every mask puts below zero has a std of exactly 0, sure or not. Most cells are
like that, so "fraction" (the lowest-std share of all cells) keeps only empty
cells and none of the count, and the rounds teach "no one here". "balanced"
(the default) keeps the same share of occupied and of empty cells, ranked by
std / mean and by how far the highest mask's pre-ReLU output sits below zero.

The real training views are whole frames, as the labels are: through a crop
the network counts the same pixels differently (research/NOTEBOOK.md, "Why
every pseudo-label round moves the count").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from adapt.data.crowd_dataset import fit_max_side, pad_to, padded_hw, resize
from adapt.data.density import density_map
from adapt.data.images import BadImage, load_image
from adapt.model.network import STRIDE, CrowdCounter, ensemble_mean_std, training_mode
from adapt.scene.model import SceneModel
from adapt.scene.motion import CELL_FOREGROUND, cell_occupancy, static_on_grid
from adapt.training.engine import ParameterEMA, check_step_settings, density_loss, loop_forever, make_optimizer, optimizer_step
from adapt.training.progress import progress

RULES = ("balanced", "fraction")


@dataclass(frozen=True)
class PseudoLabelConfig:
    rounds: int = 3                  # K, at most
    steps_per_round: int = 150
    # Keep a fraction, not a fixed threshold: a fraction adapts to each
    # camera's uncertainty scale, where a threshold would keep everything on
    # an easy camera and nothing on a hard one. Ranking is global over the
    # buffer, so a frame that is uncertain everywhere contributes few cells.
    # "balanced" takes the fraction of occupied and of empty cells separately
    # (see the module docstring); "fraction" ranks all cells by std.
    rule: str = "balanced"
    keep_fraction: float = 0.5
    tol: float = 0.02                # stop when the mean count moves less than this (relative)
    real_batch: int = 4              # multiple of the number of masks
    # The round keeps the average of its weights, not wherever its last step
    # landed: its count swings from step to step (research/NOTEBOOK.md, research/pseudo_round_trace.py).
    ema_decay: float = 0.99          # > 0: the round keeps the EMA of its weights, not its last step
    freeze_bn: bool = True           # BatchNorm statistics frozen (network.training_mode)
    lr: float = 5e-5
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    real_weight: float = 1.0
    synth_weight: float = 1.0        # weight of L_s, the labelled synthetic crops
    max_side: int | None = 1024

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"pseudo-label rule must be one of {RULES}, found {self.rule!r}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], found {self.keep_fraction}")
        check_step_settings(self.ema_decay)


def check_crop(crop: int | None) -> None:
    if crop is not None and (crop <= 0 or crop % 32):
        raise ValueError(f"crop must be a positive multiple of 32 or None (whole frames), found {crop}")


@dataclass
class PseudoLabels:
    """Per frame: mean density, per-cell std, highest pre-ReLU output and kept-cell mask."""

    paths: list[Path]
    mean: list[np.ndarray]
    std: list[np.ndarray]
    margin: list[np.ndarray]
    valid: list[np.ndarray]
    keep: list[np.ndarray]

    def mean_count(self) -> float:
        return float(np.mean([m.sum() for m in self.mean])) if self.mean else float("nan")

    def kept_fraction(self) -> float:
        return float(np.mean(np.concatenate([k.ravel() for k in self.keep]))) if self.keep else 0.0


def fit_and_pad(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The image resized to fit ``max_side`` and zero-padded to multiples of 32, plus its valid size."""
    hw = fit_max_side(image.shape[:2], max_side)
    return pad_to(resize(image, hw), padded_hw(hw)), hw


def load_padded(path: Path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    return fit_and_pad(load_image(path), max_side)


def lowest_fraction(score: list[np.ndarray], where: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """Cells of ``where`` whose score is within the lowest ``fraction`` over all frames (ties kept)."""
    pool = np.concatenate([s[w] for s, w in zip(score, where)]) if score else np.zeros(0)
    cut = float(np.quantile(pool, fraction)) if pool.size else 0.0
    return [(s <= cut) & w for s, w in zip(score, where)]


def select_confident(
    mean: list[np.ndarray], std: list[np.ndarray], margin: list[np.ndarray], valid: list[np.ndarray], cfg: PseudoLabelConfig
) -> list[np.ndarray]:
    """Boolean masks of the cells kept as pseudo labels (padding is never kept).

    ``margin`` is the highest pre-ReLU output over the masks: the more negative,
    the surer the network is that the cell is empty.
    """
    if cfg.rule == "fraction":
        return lowest_fraction(std, valid, cfg.keep_fraction)
    occupied = [(m > 0) & v for m, v in zip(mean, valid)]
    empty = [(m <= 0) & v for m, v in zip(mean, valid)]
    relative_std = [s / np.maximum(m, 1e-12) for s, m in zip(std, mean)]
    keep_occupied = lowest_fraction(relative_std, occupied, cfg.keep_fraction)
    keep_empty = lowest_fraction(margin, empty, cfg.keep_fraction)
    return [a | b for a, b in zip(keep_occupied, keep_empty)]


@torch.inference_mode()
def predict_frames(model: CrowdCounter, paths: list[Path], device: torch.device, cfg: PseudoLabelConfig,
                   scene: SceneModel | None = None) -> PseudoLabels:
    """Ensemble mean and std for every frame; unreadable frames are dropped (the caller counts them).

    With the camera's ``scene`` model two kinds of cell are labelled from the
    scene, whatever the ensemble says: static cells (no object ever occupied
    them) are empty, since a confident cell on a window or a sign is not a
    person; and the cells of each whole single person moving through the frame
    hold exactly that person's head.
    """
    model.eval()
    kept_paths, means, stds, margins, valids, known = [], [], [], [], [], []
    for path in progress(paths, "pseudo labels"):
        try:
            image, (h, w) = load_padded(path, cfg.max_side)
        except BadImage:
            continue
        # source units: the rounds train through forward_train, which the count calibration does not touch
        raw = model.ensemble(torch.from_numpy(image)[None].to(device), raw=True, calibrated=False)[:, 0, 0]
        mean, std = (t.cpu().numpy() for t in ensemble_mean_std(F.relu(raw)))
        valid = np.zeros(mean.shape, dtype=bool)
        valid[: -(-h // STRIDE), : -(-w // STRIDE)] = True
        kept_paths.append(path)
        means.append(mean * valid)
        stds.append(std)
        margins.append(raw.max(0).values.cpu().numpy())
        valids.append(valid)
        if scene is not None:
            known.append(scene_labels(scene, image[:h, :w], valid))
    keep = select_confident(means, stds, margins, valids, cfg)
    for mean, k, (cells, density, moving) in zip(means, keep, known):
        # where something moves and the scene cannot say who, "nobody here" is not believed:
        # a person the model does not see yet must not be taught away
        k[moving & (mean <= 0)] = False
        mean[cells] = density[cells]
        k[cells] = True
    return PseudoLabels(kept_paths, means, stds, margins, valids, keep)


def scene_labels(scene: SceneModel, image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells the scene model knows, their density, other cells where something moves in this frame).

    Known: static cells, empty; each whole single moving person's cells, with
    its head. ``image`` is the frame at the density grid's scale (unpadded); a
    frame of another size than the scene model's gets only its static cells.
    """
    cells = static_on_grid(scene.motion.static, valid)
    density = np.zeros(valid.shape, np.float32)
    moving = np.zeros(valid.shape, bool)
    if image.shape[:2] != scene.shape:
        return cells, density, moving
    pixels = scene.foreground(image)
    fg = cell_occupancy(pixels[None])[0] > CELL_FOREGROUND
    fg = cv2.dilate(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # outlines blur into neighbours
    moving[: fg.shape[0], : fg.shape[1]] = fg
    heads, sizes, boxes = scene.people_in_frame(image, pixels)
    if not len(heads):
        return cells, density, moving & ~cells
    H, W = image.shape[:2]
    grid = density_map(heads, (-(-H // STRIDE) * STRIDE, -(-W // STRIDE) * STRIDE), sizes).density
    rows, cols = grid.shape
    density[:rows, :cols] = grid
    for x, y, w, h in boxes:
        c0, c1 = max(0, int(x // STRIDE) - 1), min(cols, int(-(-(x + w) // STRIDE)) + 1)
        r0, r1 = max(0, int(y // STRIDE) - 1), min(rows, int(-(-(y + h) // STRIDE)) + 1)
        cells[r0:r1, c0:c1] = True
    return cells, density, moving & ~cells


class PseudoLabelled(Dataset):
    """Random crops (or whole frames) of real frames with their pseudo density and kept-cell mask.

    Crops are aligned to the 8-pixel cell grid so image and maps stay registered.
    """

    def __init__(self, labels: PseudoLabels, crop: int | None = None, max_side: int | None = None, seed: int = 0):
        check_crop(crop)
        self.labels, self.max_side, self.seed, self.epoch = labels, max_side, seed, 0
        # one size for all frames, so frames of mixed sizes still batch
        limit = [] if crop is None else [crop]
        self.crop_h = min(limit + [m.shape[0] * STRIDE for m in labels.mean]) // 32 * 32
        self.crop_w = min(limit + [m.shape[1] * STRIDE for m in labels.mean]) // 32 * 32

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


def finetune_round(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """One round of fine-tuning; ``on_step(step, losses)`` lets a benchmark watch the round."""
    training_mode(model.to(device), cfg.freeze_bn)
    opt, schedule = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    ema = ParameterEMA(model, cfg.ema_decay)
    total_s = total_r = 0.0
    bar = progress(range(cfg.steps_per_round), "fine-tune", leave=False)
    for step in bar:
        synth, real = next(synth_batches), next(real_batches)
        scale = model.config.density_scale
        # two passes so each half of the batch sees every mask
        loss_s = density_loss(model.forward_train(synth["image"].to(device)), synth["density"].to(device), scale)
        pred_r = model.forward_train(real["image"].to(device))
        loss_r = density_loss(pred_r, real["density"].to(device), scale, mask=real["mask"].to(device))
        loss = cfg.synth_weight * loss_s + cfg.real_weight * loss_r
        optimizer_step(model, opt, loss, f"pseudo-label fine-tuning step {step}")
        schedule.step()
        ema.update(model)
        total_s += loss_s.item()
        total_r += loss_r.item()
        if on_step is not None:
            on_step(step, {"loss_s": loss_s.item(), "loss_pseudo": loss_r.item()})
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_pl=f"{loss_r.item():.3f}")
    ema.apply(model)
    n = max(cfg.steps_per_round, 1)
    return {"loss_s": total_s / n, "loss_pseudo": total_r / n}


def run_pseudo_label_stage(model: CrowdCounter, synth_batches: Iterator[dict], frame_paths: list[Path], cfg: PseudoLabelConfig, device: torch.device, seed: int = 0,
                           scene: SceneModel | None = None, crop: int | None = None, finetune: Callable[..., dict] | None = None) -> list[dict]:
    """Rounds of pseudo labelling and fine-tuning; returns per-round statistics. ``scene``: see predict_frames.

    ``crop`` (real views in pixels instead of whole frames) and ``finetune`` (another
    round function with finetune_round's arguments) are for research/stages.py.
    """
    finetune = finetune_round if finetune is None else finetune
    if cfg.real_batch % model.config.masks:
        raise ValueError(f"real_batch must be a multiple of the number of masks ({model.config.masks})")
    rounds: list[dict] = []
    previous = None
    for r in range(cfg.rounds):
        labels = predict_frames(model, frame_paths, device, cfg, scene)
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
            PseudoLabelled(labels, crop, cfg.max_side, seed=seed + r), batch_size=cfg.real_batch, shuffle=True,
            drop_last=True, num_workers=0,
        )
        if len(loader) == 0:
            raise ValueError(f"need at least {cfg.real_batch} frames for a pseudo-label batch, have {len(labels.paths)}")
        stats.update(finetune(model, synth_batches, loop_forever(loader), cfg, device))
        rounds.append(stats)
        previous = mean_count
    return rounds
