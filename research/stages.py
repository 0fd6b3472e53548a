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

from adapt.model.network import CrowdCounter
from adapt.selfsup import flip_stage as product_flip
from adapt.selfsup import pseudo_label as product_pseudo
from adapt.selfsup.flip_stage import FlipStageConfig
from adapt.selfsup.pseudo_label import PseudoLabelConfig, check_crop
from adapt.training.engine import check_step_settings, count_loss, density_loss


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
    parent: CrowdCounter | None = None, **kw,
) -> dict:
    """The product's flip stage with the research switches; ``parent`` is needed for ``anchor_weight``; ``kw`` as the product's."""
    synth_count_weight = getattr(cfg, "synth_count_weight", 0.0)
    anchor_weight = getattr(cfg, "anchor_weight", 0.0)
    if anchor_weight and parent is None:
        raise ValueError("anchor_weight needs the parent model")
    if parent is not None:
        parent.to(device).eval()

    def extra(density: torch.Tensor, synth: dict, real: torch.Tensor | None) -> dict[str, torch.Tensor]:
        terms = {}
        if synth_count_weight:
            terms["count"] = synth_count_weight * count_loss(density, synth["count"].to(device))
        if anchor_weight:
            with torch.no_grad():
                held = parent.forward_train(real)
            terms["anchor"] = anchor_weight * density_loss(model.forward_train(real), held, model.config.density_scale)
        return terms

    return product_flip.run_flip_stage(model, synth_batches, real_batches, cfg, device, parent,
                                       extra=extra if synth_count_weight or anchor_weight else None,
                                       warmup=getattr(cfg, "warmup_steps", 0), **kw)


def finetune_round(
    model: CrowdCounter, synth_batches: Iterator[dict], real_batches: Iterator[dict], cfg: PseudoLabelConfig, device: torch.device,
    on_step: Callable[[int, dict], None] | None = None, **kw,
) -> dict:
    """The product's pseudo-label round with the research switches; ``on_step(step, losses)`` watches it; ``kw`` as the product's."""
    count_weight = getattr(cfg, "count_weight", 0.0)

    def extra(pred: torch.Tensor, real: dict) -> dict[str, torch.Tensor]:
        return {"count": count_weight * count_loss(pred, real["count"].to(device))}

    return product_pseudo.finetune_round(model, synth_batches, real_batches, cfg, device, on_step,
                                         extra=extra if count_weight else None, warmup=getattr(cfg, "warmup_steps", 0), **kw)


def run_pseudo_label_stage(model: CrowdCounter, synth_batches: Iterator[dict], frame_paths: list[Path], cfg: PseudoLabelConfig, device: torch.device,
                           seed: int = 0, scene=None, **kw) -> list[dict]:
    """The product's rounds, with the research config's ``crop`` and :func:`finetune_round`."""
    return product_pseudo.run_pseudo_label_stage(model, synth_batches, frame_paths, cfg, device, seed, scene,
                                                 crop=getattr(cfg, "crop", None), finetune=finetune_round, **kw)


def install() -> None:
    """Make ``adapt_camera`` run the research stage loops (they run product configs unchanged)."""
    import adapt.selfsup.adaptation as adaptation

    adaptation.run_flip_stage = run_flip_stage
    adaptation.run_pseudo_label_stage = run_pseudo_label_stage
