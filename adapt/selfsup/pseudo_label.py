"""Stage 2 of adaptation: fine-tune on the ensemble's own confident predictions.

One round:
1. run the current model with all M masks on every buffered real frame: the
   mean is the pseudo label, the per-cell std across masks its uncertainty;
2. keep the least-uncertain cells (``select_confident``);
3. fine-tune on labelled synthetic crops plus a masked L2 loss on the kept
   cells of the real frames, ending on the EMA of the round's weights
   (``ema_decay``).

Rounds repeat until the model's mean count on the frames changes by less than
``tol`` (relative) from one round to the next, or ``rounds`` are done.

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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from adapt.selfsup.budget import MIN_ROUND_FRACTION, TimeBudget, TimeUp, steps_within, stopped_by_budget, stopped_early
from adapt.training.engine import (
    ParameterEMA,
    check_step_settings,
    density_loss,
    loop_forever,
    make_optimizer,
    optimizer_step,
    region_count_loss,
)
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
    # weight of the count term on each group of moving people the scene model counted
    # (scene_labels): per cell the masked L2 is diluted over thousands of empty cells
    blob_weight: float = 1.0
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
    predicted: list[float] = field(default_factory=list)  # per frame, the model's own count, before scene labels replace cells
    regions: list[np.ndarray] = field(default_factory=list)  # per frame (with a scene model), SceneLabels.regions
    region_counts: list[np.ndarray] = field(default_factory=list)  # per frame, SceneLabels.counts

    def mean_count(self) -> float:
        return float(np.mean([m.sum() for m in self.mean])) if self.mean else float("nan")

    def mean_predicted(self) -> float:
        return float(np.mean(self.predicted)) if self.predicted else float("nan")

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
    hold the people its area says (``scene_labels``).
    """
    model.eval()
    kept_paths, means, stds, margins, valids, known, predicted = [], [], [], [], [], [], []
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
        predicted.append(float((mean * valid).sum()))
        stds.append(std)
        margins.append(raw.max(0).values.cpu().numpy())
        valids.append(valid)
        if scene is not None:
            known.append(scene_labels(scene, image[:h, :w], valid))
    keep = select_confident(means, stds, margins, valids, cfg)
    for mean, k, scene_known in zip(means, keep, known):
        # where something moves and the scene cannot say who, "nobody here" is not believed:
        # a person the model does not see yet must not be taught away
        k[scene_known.moving & (mean <= 0)] = False
        mean[scene_known.cells] = scene_known.density[scene_known.cells]
        k[scene_known.cells] = True
    return PseudoLabels(kept_paths, means, stds, margins, valids, keep, predicted,
                        [s.regions for s in known], [s.counts for s in known])


def scene_labelled(scene: SceneModel, paths: list[Path], max_side: int | None) -> PseudoLabels:
    """The scene model's labels alone (``scene_labels``) for every frame: the flip stage's real frames.

    Only the cells the scene knows are kept; no model is run. Unreadable frames are dropped.
    """
    out = PseudoLabels([], [], [], [], [], [], [], [], [])
    for path in paths:
        try:
            image, (h, w) = load_padded(path, max_side)
        except BadImage:
            continue
        valid = np.zeros((image.shape[0] // STRIDE, image.shape[1] // STRIDE), bool)
        valid[: -(-h // STRIDE), : -(-w // STRIDE)] = True
        known = scene_labels(scene, image[:h, :w], valid)
        zeros = np.zeros(valid.shape, np.float32)
        for field_, value in (("paths", path), ("mean", known.density), ("std", zeros), ("margin", zeros), ("valid", valid),
                              ("keep", known.cells & valid), ("regions", known.regions), ("region_counts", known.counts)):
            getattr(out, field_).append(value)
    return out


MAX_REGIONS = 64  # groups of moving people per frame with a count term; more are left to the L2 loss


@dataclass
class SceneLabels:
    """What the scene model says about one frame's density cells."""

    cells: np.ndarray  # (h, w) bool: cells it knows: static ones, and those of people moving
    density: np.ndarray  # (h, w) float32: their density
    moving: np.ndarray  # (h, w) bool: other cells where something moves, whom the scene cannot say
    regions: np.ndarray  # (h, w) int64: 1..k for each group of touching blobs, 0 elsewhere
    counts: np.ndarray  # (MAX_REGIONS,) float32: people in each region (index 0 unused)


def scene_labels(scene: SceneModel, image: np.ndarray, valid: np.ndarray) -> SceneLabels:
    """The cells of one frame the scene model knows, their density, and the people of each moving group.

    Known: static cells, empty; the cells of each foreground blob that holds
    people, with as many people as its area says (``SceneModel.people_in_blobs``):
    the count of real people comes from the camera's own foreground, not from a
    model that has only seen rendered ones. Blobs whose boxes touch form one
    region with their summed count. ``image`` is the frame at the density
    grid's scale (unpadded); a frame of another size than the scene model's
    gets only its static cells.
    """
    cells = static_on_grid(scene.motion.static, valid)
    density = np.zeros(valid.shape, np.float32)
    moving = np.zeros(valid.shape, bool)
    regions = np.zeros(valid.shape, np.int64)
    counts = np.zeros(MAX_REGIONS, np.float32)
    if image.shape[:2] != scene.shape:
        return SceneLabels(cells, density, moving, regions, counts)
    pixels = scene.foreground(image)
    fg = cell_occupancy(pixels[None])[0] > CELL_FOREGROUND
    fg = cv2.dilate(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # outlines blur into neighbours
    moving[: fg.shape[0], : fg.shape[1]] = fg
    people = scene.people_in_blobs(image, pixels)
    if not len(people.counts):
        return SceneLabels(cells, density, moving & ~cells, regions, counts)
    H, W = image.shape[:2]
    grid_hw = (-(-H // STRIDE) * STRIDE, -(-W // STRIDE) * STRIDE)
    rows, cols = grid_hw[0] // STRIDE, grid_hw[1] // STRIDE
    weights = people.weights
    boxes = np.zeros(valid.shape, np.uint8)
    for i, (x, y, w, h) in enumerate(people.boxes):
        mine = people.blob == i
        grid = density_map(people.heads[mine], grid_hw, people.head_px[mine]).density
        density[:rows, :cols] += grid * weights[mine][0]
        c0, c1 = max(0, int(x // STRIDE) - 1), min(cols, int(-(-(x + w) // STRIDE)) + 1)
        r0, r1 = max(0, int(y // STRIDE) - 1), min(rows, int(-(-(y + h) // STRIDE)) + 1)
        boxes[r0:r1, c0:c1] = 1
    n, groups = cv2.connectedComponents(boxes, connectivity=4)
    for i, (x, y, w, h) in enumerate(people.boxes):
        g = groups[min(rows - 1, int((y + h / 2) // STRIDE)), min(cols - 1, int((x + w / 2) // STRIDE))]
        if 0 < g < MAX_REGIONS:
            counts[g] += people.counts[i]
    regions[:] = np.where(groups < MAX_REGIONS, groups, 0)
    cells |= boxes.astype(bool)
    return SceneLabels(cells, density, moving & ~cells, regions, counts)


class PseudoLabelled(Dataset):
    """Random crops (or whole frames) of real frames with their pseudo density and kept-cell mask.

    Crops are aligned to the 8-pixel cell grid so image and maps stay registered.
    """

    def __init__(self, labels: PseudoLabels, crop: int | None = None, max_side: int | None = None, seed: int = 0):
        check_crop(crop)
        self.labels, self.max_side, self.seed, self.epoch = labels, max_side, seed, 0
        # one size for all frames, so frames of mixed sizes still batch; never the padding, which
        # would teach nothing and, turned upside down, give the flip stage its answer
        limit = [] if crop is None else [crop]
        self.valid_cells = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in labels.valid]
        self.crop_h = min(limit + [r * STRIDE for r, _ in self.valid_cells]) // 32 * 32
        self.crop_w = min(limit + [c * STRIDE for _, c in self.valid_cells]) // 32 * 32

    def __len__(self) -> int:
        return len(self.labels.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, _ = load_padded(self.labels.paths[index], self.max_side)
        mean, keep = self.labels.mean[index], self.labels.keep[index]
        ch, cw = self.crop_h, self.crop_w
        rows_valid, cols_valid = self.valid_cells[index]
        cy = int(rng.integers(0, rows_valid - ch // STRIDE + 1))
        cx = int(rng.integers(0, cols_valid - cw // STRIDE + 1))
        rows, cols = slice(cy, cy + ch // STRIDE), slice(cx, cx + cw // STRIDE)
        img = image[cy * STRIDE : cy * STRIDE + ch, cx * STRIDE : cx * STRIDE + cw]
        den, msk = mean[rows, cols], keep[rows, cols]
        flip = rng.random() < 0.5
        if flip:
            img, den, msk = img[:, ::-1], den[:, ::-1], msk[:, ::-1]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(img)),
            "density": torch.from_numpy(np.ascontiguousarray(den, dtype=np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(msk, dtype=np.float32))[None],
            "count": torch.tensor(float(den.sum())),
        }
        if self.labels.regions:
            full = self.labels.regions[index]
            reg, counts = full[rows, cols].copy(), self.labels.region_counts[index].copy()
            # a group the crop cuts no longer holds its count
            cut = np.bincount(reg.ravel(), minlength=len(counts)) < np.bincount(full.ravel(), minlength=len(counts))
            counts[cut[: len(counts)]] = 0.0
            reg[cut[reg]] = 0
            item["regions"] = torch.from_numpy(np.ascontiguousarray(reg[:, ::-1] if flip else reg))[None]
            item["region_counts"] = torch.from_numpy(counts)
        return item


def finetune_round(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device,
    on_step: Callable[[int, dict], None] | None = None, *,
    extra: Callable[[torch.Tensor, dict], dict[str, torch.Tensor]] | None = None, warmup: int = 0, time_up: TimeUp | None = None,
) -> dict:
    """One round of fine-tuning; ``on_step(step, losses)`` lets a benchmark watch the round.

    ``extra(real density, real batch)`` returns more weighted loss terms by
    name, and ``warmup`` warms the learning rate up: both are for research/stages.py.
    ``time_up()`` ends the round before ``cfg.steps_per_round`` (``budget.TimeBudget``).
    """
    training_mode(model.to(device), cfg.freeze_bn)
    opt, schedule = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, warmup)
    ema = ParameterEMA(model, cfg.ema_decay)
    totals: dict[str, float] = {"loss_s": 0.0, "loss_pseudo": 0.0}
    done = 0
    bar = progress(steps_within(cfg.steps_per_round, time_up), "fine-tune", total=cfg.steps_per_round, leave=False)
    for step in bar:
        synth, real = next(synth_batches), next(real_batches)
        scale = model.config.density_scale
        # two passes so each half of the batch sees every mask
        loss_s = density_loss(model.forward_train(synth["image"].to(device)), synth["density"].to(device), scale)
        pred_r = model.forward_train(real["image"].to(device))
        loss_r = density_loss(pred_r, real["density"].to(device), scale, mask=real["mask"].to(device))
        terms = extra(pred_r, real) if extra is not None else {}
        if "regions" in real and cfg.blob_weight:
            terms["blob"] = cfg.blob_weight * region_count_loss(pred_r, real["regions"].to(device), real["region_counts"].to(device))
        loss = cfg.synth_weight * loss_s + cfg.real_weight * loss_r + sum(terms.values())
        optimizer_step(model, opt, loss, f"pseudo-label fine-tuning step {step}")
        schedule.step()
        ema.update(model)
        values = {"loss_s": loss_s.item(), "loss_pseudo": loss_r.item()}
        for k, v in (values | {f"loss_{k}": v.item() for k, v in terms.items()}).items():
            totals[k] = totals.get(k, 0.0) + v
        if on_step is not None:
            on_step(step, values)
        done = step + 1
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_pl=f"{loss_r.item():.3f}")
    ema.apply(model)
    return {"steps": done, **stopped_early(done, cfg.steps_per_round), **{k: v / max(done, 1) for k, v in totals.items()}}


def run_pseudo_label_stage(model: CrowdCounter, synth_batches: Iterator[dict], frame_paths: list[Path], cfg: PseudoLabelConfig, device: torch.device, seed: int = 0,
                           scene: SceneModel | None = None, crop: int | None = None, finetune: Callable[..., dict] | None = None,
                           budget: TimeBudget | None = None) -> list[dict]:
    """Rounds of pseudo labelling and fine-tuning; returns per-round statistics. ``scene``: see predict_frames.

    ``budget``: each round stops at its share of the time left (``TimeBudget.round_share``),
    and a round that could not run ``MIN_ROUND_FRACTION`` of its steps is not started.
    ``crop`` (real views in pixels instead of whole frames) and ``finetune`` (another
    round function with finetune_round's arguments) are for research/stages.py.
    """
    finetune = finetune_round if finetune is None else finetune
    if cfg.real_batch % model.config.masks:
        raise ValueError(f"real_batch must be a multiple of the number of masks ({model.config.masks})")
    rounds: list[dict] = []
    previous = None
    step_s = None  # a fine-tune step's wall time, once a round has run
    for r in range(cfg.rounds):
        share = TimeBudget.round_share(r)
        if budget is not None:
            need = 0.0 if step_s is None else MIN_ROUND_FRACTION * cfg.steps_per_round * step_s
            if share * budget.left() <= need:
                rounds.append({"round": r + 1, **stopped_by_budget(f"{max(budget.left(), 0):.0f} s left")})
                break
        labels = predict_frames(model, frame_paths, device, cfg, scene)
        if not labels.paths:
            raise ValueError("no readable frames to pseudo-label")
        # the model's own count decides when to stop: a scene model's labels hardly change between rounds
        mean_count = labels.mean_predicted()
        stats = {
            "round": r + 1,
            "frames": len(labels.paths),
            "mean_count": mean_count,
            "mean_label_count": labels.mean_count(),
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
        started = time.monotonic()
        stats.update(finetune(model, synth_batches, loop_forever(loader), cfg, device,
                              time_up=budget.time_up(share) if budget is not None else None))
        step_s = (time.monotonic() - started) / max(stats["steps"], 1)
        rounds.append(stats)
        previous = mean_count
    return rounds
