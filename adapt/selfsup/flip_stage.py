"""Stage 1 of adaptation: learn perspective on real frames by telling upright from upside-down.

Minimises ``L = L_s + λ·L_a`` over the encoder, the density decoder and the
flip head (Liu, Durasov, Fua, CVPR 2022):

- ``L_s``: L2 between predicted and true density on labelled synthetic crops;
  each synthetic sample goes through one Masksembles mask.
- ``L_a``: cross-entropy of the flip head on real, unlabeled crops and their
  upside-down copies. The flip labels are free, so no one labels a frame.

Densities are higher near the top of an upright frame (people are smaller far
away), so solving ``L_a`` forces the encoder to model perspective on the
target camera's own pixels. With ``head_rows`` > 1 the head pools horizontal
bands separately so it can compare the top of a crop with its bottom; a parent
with another head (the base model's is untrained) gets a fresh one.
``freeze_bn`` keeps BatchNorm statistics frozen (``network.training_mode``);
``ema_decay`` > 0 ends the stage on the moving average of its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adapt.data.crowd_dataset import readable_batches
from adapt.model.network import CrowdCounter, training_mode
from adapt.selfsup.budget import TimeUp, steps_within, stopped_early
from adapt.training.engine import (
    ParameterEMA,
    check_step_settings,
    density_loss,
    make_optimizer,
    optimizer_step,
    region_count_loss,
)
from adapt.training.progress import progress


@dataclass(frozen=True)
class FlipStageConfig:
    steps: int = 300
    lam: float = 1.0                 # λ, weight of the flip loss
    real_batch: int = 4              # each also goes in upside-down: 2x images
    lr: float = 1e-4
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    # 4 bands see top against bottom; frozen BatchNorm keeps the count (research/NOTEBOOK.md, "A flip head that can see perspective").
    head_rows: int = 4               # bands of the flip head (ModelConfig.flip_rows)
    freeze_bn: bool = True           # BatchNorm statistics frozen (network.training_mode)
    # > 0: the stage ends on the EMA of its weights, which keeps the parent's counts (research/NOTEBOOK.md, "EMA in the flip stage").
    ema_decay: float = 0.99
    # with a usable scene model: weight of its labels (empty static cells, the people each moving
    # group holds) on the stage's real frames, which otherwise learn only upright from upside-down
    scene_weight: float = 1.0

    def __post_init__(self) -> None:
        check_step_settings(self.ema_decay)


def upside_down(images: torch.Tensor) -> torch.Tensor:
    """Flip NHWC images vertically (rows reversed)."""
    return images.flip(1)


def flip_batch(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real crops each followed by its upside-down copy, labelled 0 (upright) and 1 (flipped).

    Interleaved, so that every Masksembles mask (a contiguous share of the batch) sees upright frames.
    """
    images = torch.stack([real, upside_down(real)], 1).flatten(0, 1)
    labels = torch.tensor([0, 1], dtype=torch.long).repeat(len(real))
    return images, labels


ExtraLoss = Callable[[torch.Tensor, dict, torch.Tensor | None], dict[str, torch.Tensor]]


def run_flip_stage(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: FlipStageConfig, device: torch.device,
    parent: CrowdCounter | None = None, *, scene_batches: Iterator[dict] | None = None, extra: ExtraLoss | None = None,
    warmup: int = 0, time_up: TimeUp | None = None,
) -> dict:
    """Train in place; returns loss and flip-accuracy statistics.

    ``parent`` (the model adaptation started from) is not used by this stage;
    it is accepted so that research stages with the same signature can use it.
    ``scene_batches`` (whole frames with the scene model's labels,
    ``pseudo_label.scene_labelled``) replace ``real_batches``: the same frames
    then train the flip head and, upright, the density on the cells the scene
    model knows (``cfg.scene_weight``).
    ``extra(synth density, synth batch, real images)`` returns more weighted
    loss terms by name, and ``warmup`` warms the learning rate up: both are for
    research/stages.py. ``time_up()`` ends the stage before ``cfg.steps`` (``budget.TimeBudget``).
    """
    model.set_flip_rows(cfg.head_rows)
    training_mode(model.to(device), cfg.freeze_bn)
    opt, schedule = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, warmup)
    ema = ParameterEMA(model, cfg.ema_decay)
    sums: dict[str, float] = {"loss_s": 0.0, "loss_a": 0.0, "flip_acc": 0.0}
    tails: list[dict[str, float]] = []  # the last quarter of the steps run: how the stage ended
    done = 0
    bar = progress(steps_within(cfg.steps, time_up), "flip stage", total=cfg.steps)
    for step in bar:
        synth = next(synth_batches)
        density = model.forward_train(synth["image"].to(device))
        loss_s = density_loss(density, synth["density"].to(device), model.config.density_scale)
        terms: dict[str, torch.Tensor] = {}
        if scene_batches is not None:
            known = next(scene_batches)
            real = known["image"].to(device)
            images, labels = flip_batch(real)
            # the upside-down copies train only the flip head: no decoder pass for them
            dens, logits = model.forward_train_flip(images, slice(0, None, 2))
            terms["scene"] = cfg.scene_weight * scene_loss(dens, known, model.config.density_scale, device)
        else:
            # the L_s-only control (λ = 0) reads no real frame
            real = next(real_batches)["image"].to(device) if cfg.lam or extra is not None else None
            if cfg.lam:
                images, labels = flip_batch(real)
                logits = model.flip_logits(images)
        if cfg.lam:
            loss_a = F.cross_entropy(logits, labels.to(device))
            acc = (logits.argmax(1).cpu() == labels).float().mean().item()
        else:
            loss_a, acc = torch.zeros((), device=device), float("nan")
        if extra is not None:
            terms |= extra(density, synth, real)
        loss = loss_s + cfg.lam * loss_a + sum(terms.values())
        optimizer_step(model, opt, loss, f"flip stage step {step}")
        schedule.step()
        ema.update(model)
        values = {"loss_s": loss_s.item(), "loss_a": loss_a.item(), "flip_acc": acc} | {f"loss_{k}": v.item() for k, v in terms.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        tails.append(values)
        done = step + 1
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_a=f"{loss_a.item():.3f}", acc=f"{acc:.2f}")
    ema.apply(model)
    tails = tails[len(tails) - max(1, len(tails) // 4):] if tails else []
    return {
        "steps": done,
        **stopped_early(done, cfg.steps),
        **{f"mean_{k}": v / max(done, 1) for k, v in sums.items()},
        **{f"final_{k}": sum(t.get(k, 0.0) for t in tails) / max(len(tails), 1) for k in sums},
    }


def scene_loss(density: torch.Tensor, known: dict, scale: float, device: torch.device) -> torch.Tensor:
    """L2 on the cells the scene model knows plus the count of each group of moving people."""
    masked = density_loss(density, known["density"].to(device), scale, mask=known["mask"].to(device))
    return masked + region_count_loss(density, known["regions"].to(device), known["region_counts"].to(device))


@torch.inference_mode()
def flip_accuracy(model: CrowdCounter, frames, device: torch.device) -> float:
    """Accuracy of the flip head on whole frames and their upside-down copies."""
    model.eval()
    right = total = 0
    for batch in readable_batches(frames):
        # drop the zero padding: flipped, it would sit on top and give the answer away
        h, w = (int(v) // 32 * 32 for v in batch["valid_hw"].min(0).values) if "valid_hw" in batch else batch["image"].shape[1:3]
        if h == 0 or w == 0:
            continue
        images, labels = flip_batch(batch["image"][:, :h, :w])
        pred = model.flip_logits(images.to(device)).argmax(1).cpu()
        right += int((pred == labels).sum())
        total += len(labels)
    return right / total if total else float("nan")
