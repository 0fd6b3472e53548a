"""The label-free validation gate: a candidate model must earn its publication.

On held-out buffered frames (never trained on), a candidate is refused if:
- its mean count moves too far from the parent's (ratio outside
  ``[min_count_ratio, max_count_ratio]``, by default 2/3 to 3/2): one run
  refines a model, and in every stored benchmark run the better models moved
  the count by 0.69x to 1.30x while most worse ones had halved it
  (research/NOTEBOOK.md, "Choosing the gate"); a larger correction needs labels;
- its mean uncertainty (count std across masks) does not drop;
- its flip head is at chance on held-out frames (the flip stage taught the
  encoder nothing about this camera).

An optional test (``per_person_uncertainty``) also asks the std per counted
person to drop. It is off by default: it refuses right corrections of an
overcount as often as wrong shrinkage, and with the tighter count band it
caught no worse model that the band did not.

When a camera has a few labelled frames, count MAE on them decides instead:
the candidate must not be worse than the parent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from adapt.data.crowd_dataset import readable_batches
from adapt.model.network import CrowdCounter
from adapt.selfsup.flip_stage import flip_accuracy
from adapt.training.engine import predict_counts
from crowdwatch.config.adaptation import GateSettings

# [cameras.X.adapt.gate]: the settings an operator may change, declared (with their defaults) in the config model
_SETTINGS = GateSettings()


@dataclass(frozen=True)
class GateConfig:
    """The gate of one run; build it from a camera's settings with :meth:`from_settings`."""

    min_count_ratio: float = _SETTINGS.min_count_ratio  # (candidate + 1) / (parent + 1), mean over held-out frames
    max_count_ratio: float = _SETTINGS.max_count_ratio
    min_uncertainty_drop: float = 0.0     # relative; 0 means "any drop"; applies to both uncertainty tests
    min_flip_accuracy: float = 0.6        # also at least 2 binomial std above chance
    require_flip: bool = True             # False when the flip stage was not run
    per_person_uncertainty: bool = _SETTINGS.per_person_uncertainty  # std / (count + 1) must drop too; see the module docstring
    # with a scene model: people allowed on static background, absolute plus a share of the frame's count
    max_background_people: float = 0.5
    max_background_share: float = 0.05
    moving_count_ratio: float = 4.0       # the count on cells where people walk may move this far either way

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_count_ratio <= 1.0 <= self.max_count_ratio:
            raise ValueError(f"gate count ratios must satisfy 0 <= min <= 1 <= max, got {self.min_count_ratio} and {self.max_count_ratio}")

    @classmethod
    def from_settings(cls, settings: GateSettings, **overrides) -> GateConfig:
        """The gate a camera's ``[adapt.gate]`` settings ask for; ``overrides`` (command-line flags) win."""
        fields = {k: getattr(settings, k) for k in ("min_count_ratio", "max_count_ratio", "per_person_uncertainty")}
        return cls(**(fields | overrides))

    def for_stages(self, stages) -> GateConfig:
        """The flip head is only judged when the flip stage ran."""
        return self if "flip" in stages else replace(self, require_flip=False)


@dataclass
class FrameStats:
    frames: int
    mean_count: float
    mean_count_std: float                 # mean over frames of the count std across masks
    flip_accuracy: float | None = None
    mae: float | None = None              # only with labelled frames
    rmse: float | None = None
    unreadable: int = 0                   # frames that failed to load, left out of every figure

    @property
    def relative_uncertainty(self) -> float:
        """Count std per counted person (+1 so near-empty scenes stay finite)."""
        return self.mean_count_std / (self.mean_count + 1.0)


@dataclass
class SceneStats:
    """What a model counts where the scene model says nobody is, and on exactly labelled composites."""

    empty_scene_count: float              # on the empty scene's static cells
    background_count: float               # per held-out frame, on static cells
    moving_count: float                   # per held-out frame, on the other cells
    composite_mae: float | None = None    # held-out composites of the camera's own empty scene
    composites: int = 0


@dataclass
class GateReport:
    verdict: str                          # "accept" or "reject"
    reasons: list[str] = field(default_factory=list)
    decided_by: str = "label-free"        # or "labelled-mae"
    parent: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def frame_stats(model: CrowdCounter, frames, device: torch.device, with_flip: bool = True) -> FrameStats:
    """Count and uncertainty over a loader of whole frames (batch size 1), plus flip accuracy."""
    model.eval()
    counts, stds, errors, unreadable = [], [], [], []
    for batch in readable_batches(frames, unreadable):
        count, std, _ = predict_counts(model, batch["image"].to(device))
        counts += count.cpu().tolist()
        stds += std.cpu().tolist()
        if "count" in batch:
            errors += (count.cpu() - batch["count"]).tolist()
    stats = FrameStats(len(counts), float(np.mean(counts)) if counts else float("nan"), float(np.mean(stds)) if stds else float("nan"), unreadable=len(unreadable))
    if errors:
        e = np.asarray(errors)
        stats.mae, stats.rmse = float(np.abs(e).mean()), float(np.sqrt((e**2).mean()))
    if with_flip:
        stats.flip_accuracy = flip_accuracy(model, frames, device)
    return stats


def chance_bound(n_frames: int, floor: float) -> float:
    """Flip accuracy needed to be 2 std above chance on 2·n binary trials."""
    n = max(2 * n_frames, 1)
    return max(floor, 0.5 + 2 * math.sqrt(0.25 / n))


def background_limit(stats: FrameStats, cfg: GateConfig) -> float:
    """People a model may count on static background per frame before it is counting the scene."""
    return cfg.max_background_people + cfg.max_background_share * max(stats.mean_count, 0.0)


def scene_reasons(parent: SceneStats, candidate: SceneStats, frames: FrameStats, cfg: GateConfig) -> list[str]:
    """Why a candidate fails the scene checks (empty when it passes)."""
    limit = background_limit(frames, cfg)
    reasons = []
    if not candidate.empty_scene_count <= limit:
        reasons.append(f"counts {candidate.empty_scene_count:.2f} people on the empty scene (at most {limit:.2f})")
    if not candidate.background_count <= limit:
        reasons.append(f"counts {candidate.background_count:.2f} people per frame on static background cells (at most {limit:.2f})")
    if candidate.composite_mae is not None and parent.composite_mae is not None and not candidate.composite_mae <= parent.composite_mae:
        reasons.append(f"MAE on held-out composites rose from {parent.composite_mae:.2f} to {candidate.composite_mae:.2f}")
    lo, hi = 1.0 / cfg.moving_count_ratio, cfg.moving_count_ratio
    ratio = (candidate.moving_count + 1.0) / (parent.moving_count + 1.0)
    if not lo <= ratio <= hi:
        reasons.append(f"the count where people walk moved too far: {candidate.moving_count:.1f} vs parent {parent.moving_count:.1f} (ratio {ratio:.2f} outside [{lo:.2f}, {hi:.2f}])")
    return reasons


def level_reasons(parent: FrameStats, candidate: FrameStats, cfg: GateConfig, count_ratio_before_keep: float | None) -> list[str]:
    """The paper-stages checks: with no scene evidence, the count stays near the parent's and the uncertainty falls."""
    reasons: list[str] = []
    if count_ratio_before_keep is not None and not cfg.min_count_ratio <= count_ratio_before_keep <= cfg.max_count_ratio:
        reasons.append(f"counts moved too far before the parent's count was held (ratio {count_ratio_before_keep:.2f} outside [{cfg.min_count_ratio}, {cfg.max_count_ratio}])")
    # +1 keeps empty scenes (counts near 0) from making the ratio meaningless
    ratio = (candidate.mean_count + 1.0) / (parent.mean_count + 1.0)
    if ratio < cfg.min_count_ratio:
        reasons.append(f"counts fell too far: mean {candidate.mean_count:.1f} vs parent {parent.mean_count:.1f} (ratio {ratio:.2f} < {cfg.min_count_ratio}; labelled frames can confirm a larger correction)")
    if ratio > cfg.max_count_ratio:
        reasons.append(f"counts rose too far: mean {candidate.mean_count:.1f} vs parent {parent.mean_count:.1f} (ratio {ratio:.2f} > {cfg.max_count_ratio}; labelled frames can confirm a larger correction)")
    needed = parent.mean_count_std * (1.0 - cfg.min_uncertainty_drop)
    if not candidate.mean_count_std < needed:
        reasons.append(f"uncertainty did not drop: {candidate.mean_count_std:.3f} vs parent {parent.mean_count_std:.3f}")
    rel_needed = parent.relative_uncertainty * (1.0 - cfg.min_uncertainty_drop)
    if cfg.per_person_uncertainty and not candidate.relative_uncertainty < rel_needed:
        reasons.append(
            f"uncertainty per counted person did not drop: {candidate.relative_uncertainty:.4f} vs parent "
            f"{parent.relative_uncertainty:.4f} (a lower std that only follows lower counts is no gain)"
        )
    return reasons


def gate(parent: FrameStats, candidate: FrameStats, cfg: GateConfig = GateConfig(), labelled: tuple[FrameStats, FrameStats] | None = None,
         count_ratio_before_keep: float | None = None, scene: tuple[SceneStats, SceneStats] | None = None) -> GateReport:
    """Pure decision from the measured statistics.

    ``count_ratio_before_keep`` is the (count + 1) ratio the stages produced
    on the training frames before the parent's count was held
    (adapt.keep_parent_count): without labels, a collapse or explosion is
    refused even when the served count no longer shows it.
    """
    reasons: list[str] = []
    if scene is not None:
        # the scene checks hold whatever else decides: a model that counts the scene is never published
        reasons += scene_reasons(scene[0], scene[1], candidate, cfg)
    if labelled is not None:
        lp, lc = labelled
        if lc.mae is None or lp.mae is None or not math.isfinite(lc.mae):
            reasons.append("labelled frames gave no MAE")
        elif lc.mae > lp.mae:
            reasons.append(f"MAE on labelled frames rose from {lp.mae:.2f} to {lc.mae:.2f}")
        report = GateReport("reject" if reasons else "accept", reasons, "labelled-mae", {"label_free": asdict(parent), "labelled": asdict(lp)}, {"label_free": asdict(candidate), "labelled": asdict(lc)})
        return report
    if not all(math.isfinite(v) for v in (candidate.mean_count, candidate.mean_count_std)):
        reasons.append("candidate produced non-finite counts")
    elif scene is None:
        reasons += level_reasons(parent, candidate, cfg, count_ratio_before_keep)
    if cfg.require_flip and candidate.flip_accuracy is not None:
        bound = chance_bound(candidate.frames, cfg.min_flip_accuracy)
        if not candidate.flip_accuracy >= bound:
            reasons.append(f"flip accuracy {candidate.flip_accuracy:.2f} on held-out frames is at chance (needs >= {bound:.2f})")
    return GateReport("reject" if reasons else "accept", reasons, "label-free", asdict(parent), asdict(candidate))


@torch.inference_mode()
def scene_stats(model: CrowdCounter, static: np.ndarray, empty_scenes: list[np.ndarray], frames, composites, device: torch.device) -> SceneStats:
    """Counts on the empty scenes' and held-out frames' static cells, on the other cells, and MAE on composites.

    ``frames`` and ``composites`` are loaders of whole frames (batch size 1) at
    the scene model's resolution; ``composites`` carry labels.
    """
    from adapt.scene.motion import static_on_grid

    model.eval()

    def split(image: torch.Tensor, valid_hw=None) -> tuple[float, float, float]:
        count, _, per_mask = predict_counts(model, image.to(device))
        dens = per_mask.mean(0)[0, 0].cpu().numpy()
        valid = np.zeros(dens.shape, bool)
        h, w = (int(v) for v in valid_hw) if valid_hw is not None else image.shape[1:3]
        valid[: -(-h // 8), : -(-w // 8)] = True
        mask = static_on_grid(static, valid)
        return float(dens[mask].sum()), float(dens[~mask].sum()), float(count[0])

    empty = float(np.mean([split(torch.from_numpy(e)[None])[0] for e in empty_scenes]))
    bg, moving = [], []
    for batch in readable_batches(frames, []):
        b, m, _ = split(batch["image"], batch["valid_hw"][0] if "valid_hw" in batch else None)
        bg.append(b)
        moving.append(m)
    errors = []
    for batch in readable_batches(composites, []) if composites is not None else ():
        errors.append(split(batch["image"], batch["valid_hw"][0] if "valid_hw" in batch else None)[2] - float(batch["count"][0]))
    return SceneStats(empty, float(np.mean(bg)) if bg else float("nan"), float(np.mean(moving)) if moving else float("nan"),
                      float(np.abs(errors).mean()) if errors else None, len(errors))
