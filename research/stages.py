"""The adaptation stages with the experiment-only switches the product dropped.

The product's stage configs (``adapt.selfsup.flip_stage.FlipStageConfig``,
``adapt.selfsup.pseudo_label.PseudoLabelConfig``) hold only what
``crowdwatch adapt`` runs. The investigations in research/NOTEBOOK.md also
tried, all off by default and none adopted:

- flip stage: a learning-rate warm-up (``warmup_steps``), a count term in L_s
  (``synth_count_weight``), and an L2 anchor holding the real crops' density
  at the parent's (``anchor_weight``; "The flip stage alone, and an anchor on
  the real frames' density");
- pseudo-label rounds: a learning-rate warm-up (``warmup_steps``), a count
  term on each real view (``count_weight``), and random crops of the real
  frames instead of whole frames (``crop``; "Why every pseudo-label round
  moves the count").

``ResearchFlipConfig`` and ``ResearchPseudoConfig`` add them to the product
configs; :func:`run_flip_stage`, :func:`finetune_round` and
:func:`run_pseudo_label_stage` are the stage loops that honour them (a product
config runs exactly as in the product). :func:`install` makes
``adapt.selfsup.adaptation.adapt_camera`` run these loops, so
``python -m research.adaptation --set flip.anchor_weight=1`` still works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adapt.model.network import CrowdCounter, training_mode
from adapt.selfsup import pseudo_label as product_pseudo
from adapt.selfsup.flip_stage import FlipStageConfig, flip_batch
from adapt.selfsup.pseudo_label import PseudoLabelConfig, check_crop
from adapt.training.engine import (
    ParameterEMA,
    check_step_settings,
    count_loss,
    density_loss,
    make_optimizer,
    optimizer_step,
)
from adapt.training.progress import progress


@dataclass(frozen=True)
class ResearchFlipConfig(FlipStageConfig):
    warmup_steps: int = 0            # linear learning-rate warm-up (engine.make_optimizer)
    synth_count_weight: float = 0.0  # weight of a count term in L_s (engine.count_loss on each synthetic crop)
    anchor_weight: float = 0.0       # weight of an L2 term holding the real crops' density at the parent's

    def __post_init__(self) -> None:
        check_step_settings(self.ema_decay, self.warmup_steps)


@dataclass(frozen=True)
class ResearchPseudoConfig(PseudoLabelConfig):
    crop: int | None = None          # real training views in pixels (multiple of 32), None: whole frames
    count_weight: float = 0.0        # each real view's predicted count must match the ensemble's
    warmup_steps: int = 0            # linear learning-rate warm-up of each round

    def __post_init__(self) -> None:
        super().__post_init__()
        check_crop(self.crop)
        check_step_settings(self.ema_decay, self.warmup_steps)


def research_config(cfg, cls, **overrides):
    """``cfg`` (a product or research config) as ``cls``, with ``overrides`` applied."""
    return cls(**{**asdict(cfg), **overrides})


def run_flip_stage(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: FlipStageConfig, device: torch.device,
    parent: CrowdCounter | None = None,
) -> dict:
    """The flip stage with the research switches; ``parent`` is needed for ``anchor_weight``."""
    warmup = getattr(cfg, "warmup_steps", 0)
    synth_count_weight = getattr(cfg, "synth_count_weight", 0.0)
    anchor_weight = getattr(cfg, "anchor_weight", 0.0)
    if anchor_weight and parent is None:
        raise ValueError("anchor_weight needs the parent model")
    model.set_flip_rows(cfg.head_rows)
    training_mode(model.to(device), cfg.freeze_bn)
    if parent is not None:
        parent.to(device).eval()
    opt, schedule = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, warmup)
    ema = ParameterEMA(model, cfg.ema_decay)
    sums = {"loss_s": 0.0, "loss_a": 0.0, "loss_anchor": 0.0, "flip_acc": 0.0}
    tail = {k: 0.0 for k in sums}  # last quarter: how the stage ended
    tail_from = cfg.steps - max(1, cfg.steps // 4)
    bar = progress(range(cfg.steps), "flip stage")
    for step in bar:
        synth = next(synth_batches)
        density = model.forward_train(synth["image"].to(device))
        loss_s = density_loss(density, synth["density"].to(device), model.config.density_scale)
        if synth_count_weight:
            loss_s = loss_s + synth_count_weight * count_loss(density, synth["count"].to(device))
        # the L_s-only control (λ = 0, no anchor) reads no real frame
        real = next(real_batches)["image"].to(device) if cfg.lam or anchor_weight else None
        loss_anchor = torch.zeros((), device=device)
        if anchor_weight:
            with torch.no_grad():
                held = parent.forward_train(real)
            loss_anchor = density_loss(model.forward_train(real), held, model.config.density_scale)
        if cfg.lam:
            images, labels = flip_batch(real)
            logits = model.flip_logits(images)
            loss_a = F.cross_entropy(logits, labels.to(device))
            acc = (logits.argmax(1).cpu() == labels).float().mean().item()
        else:
            loss_a, acc = torch.zeros((), device=device), float("nan")
        loss = loss_s + cfg.lam * loss_a + anchor_weight * loss_anchor
        optimizer_step(model, opt, loss, f"flip stage step {step}")
        schedule.step()
        ema.update(model)
        for k, v in (("loss_s", loss_s.item()), ("loss_a", loss_a.item()), ("loss_anchor", loss_anchor.item()), ("flip_acc", acc)):
            sums[k] += v
            if step >= tail_from:
                tail[k] += v
        bar.set_postfix(L_s=f"{loss_s.item():.3f}", L_a=f"{loss_a.item():.3f}", acc=f"{acc:.2f}")
    ema.apply(model)
    n_tail = cfg.steps - tail_from
    return {
        "steps": cfg.steps,
        **{f"mean_{k}": v / max(cfg.steps, 1) for k, v in sums.items()},
        **{f"final_{k}": v / max(n_tail, 1) for k, v in tail.items()},
    }


def finetune_round(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """One pseudo-label round with the research switches; ``on_step(step, losses)`` watches it."""
    count_weight = getattr(cfg, "count_weight", 0.0)
    training_mode(model.to(device), cfg.freeze_bn)
    opt, schedule = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, getattr(cfg, "warmup_steps", 0))
    ema = ParameterEMA(model, cfg.ema_decay)
    total_s = total_r = total_c = 0.0
    bar = progress(range(cfg.steps_per_round), "fine-tune", leave=False)
    for step in bar:
        synth, real = next(synth_batches), next(real_batches)
        scale = model.config.density_scale
        loss_s = density_loss(model.forward_train(synth["image"].to(device)), synth["density"].to(device), scale)
        pred_r = model.forward_train(real["image"].to(device))
        loss_r = density_loss(pred_r, real["density"].to(device), scale, mask=real["mask"].to(device))
        loss = cfg.synth_weight * loss_s + cfg.real_weight * loss_r
        if count_weight:
            loss_c = count_loss(pred_r, real["count"].to(device))
            loss = loss + count_weight * loss_c
            total_c += loss_c.item()
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
    losses = {"loss_s": total_s / n, "loss_pseudo": total_r / n}
    return {**losses, "loss_count": total_c / n} if count_weight else losses


def run_pseudo_label_stage(model: CrowdCounter, synth_batches: Iterator[dict], frame_paths: list[Path], cfg: PseudoLabelConfig, device: torch.device,
                           seed: int = 0, scene=None) -> list[dict]:
    """The product's rounds, with the research config's ``crop`` and :func:`finetune_round`."""
    return product_pseudo.run_pseudo_label_stage(model, synth_batches, frame_paths, cfg, device, seed, scene,
                                                 crop=getattr(cfg, "crop", None), finetune=finetune_round)


def install() -> None:
    """Make ``adapt_camera`` run the research stage loops (they run product configs unchanged)."""
    import adapt.selfsup.adaptation as adaptation

    adaptation.run_flip_stage = run_flip_stage
    adaptation.run_pseudo_label_stage = run_pseudo_label_stage
