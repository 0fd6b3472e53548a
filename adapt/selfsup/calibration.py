"""Count calibration from a few labelled frames (``crowdwatch calibrate``).

    crowdwatch calibrate --camera NAME [--labels labels/NAME] [--json OUT] [--no-publish]

The self-supervised stages cannot see a camera-wide count scale: on
ShanghaiTech B the base model overcounts by a fifth, evenly over confident
and uncertain cells, so pseudo labels teach the overcount back
(research/NOTEBOOK.md, "Why pseudo labels cannot correct this overcount").
One number fixes most of it: the true over the predicted count summed over
the frames that ``crowdwatch label`` made. It goes into the model's
``count_scale`` (network.ModelConfig), inside the exported graph, so every
backend serves it; adaptation keeps training in the source's units and the
calibration survives it.

A new version is published only if the factor, fitted on all but one frame,
predicts the left-out frame better than no factor does, over every frame in
turn (leave-one-out MAE below the uncalibrated MAE), and if it lies within
``[min_scale, max_scale]`` and at least ``min_change`` away from 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adapt.model.network import MAX_COUNT_SCALE, MIN_COUNT_SCALE


@dataclass(frozen=True)
class CalibrationConfig:
    min_frames: int = 4            # fewer cannot tell a scale from one frame's luck
    min_scale: float = 0.25        # relative to the parent's own scale
    max_scale: float = 4.0
    min_change: float = 0.02       # a factor this close to 1 is no reason for a new version


@dataclass
class CountScale:
    """The fitted factor and the evidence for it, in served (calibrated) counts."""

    frames: int
    true_total: float
    predicted_total: float
    scale: float                   # true / predicted over all frames; multiplies the parent's count_scale
    mae_before: float
    mae_leave_one_out: float       # each frame scaled by the factor fitted on the others
    mae_after: float               # in-sample, for reference only
    reasons: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.reasons


def fit_scale(predicted: np.ndarray, true: np.ndarray) -> float:
    """The factor that makes the summed prediction equal the summed truth (nan if nothing was predicted)."""
    total = float(np.sum(predicted))
    return float(np.sum(true)) / total if total > 0 else float("nan")


def leave_one_out_mae(predicted: np.ndarray, true: np.ndarray) -> float:
    """MAE when each frame is scaled by the factor fitted on all the others."""
    p, t = np.asarray(predicted, float), np.asarray(true, float)
    rest_p, rest_t = p.sum() - p, t.sum() - t
    scales = np.divide(rest_t, rest_p, out=np.full_like(p, np.nan), where=rest_p > 0)
    return float(np.mean(np.abs(scales * p - t)))


def judge(predicted: np.ndarray, true: np.ndarray, parent_scale: float = 1.0, cfg: CalibrationConfig = CalibrationConfig()) -> CountScale:
    """Fit the factor and decide whether it may be served. Pure: counts in, verdict out."""
    p, t = np.asarray(predicted, float), np.asarray(true, float)
    n = len(p)
    scale = fit_scale(p, t) if n else float("nan")
    result = CountScale(
        frames=n, true_total=float(t.sum()), predicted_total=float(p.sum()), scale=scale,
        mae_before=float(np.mean(np.abs(p - t))) if n else float("nan"),
        mae_leave_one_out=leave_one_out_mae(p, t) if n > 1 else float("nan"),
        mae_after=float(np.mean(np.abs(scale * p - t))) if n and np.isfinite(scale) else float("nan"),
    )
    if n < cfg.min_frames:
        result.reasons.append(f"{n} labelled frames, need at least {cfg.min_frames} (crowdwatch label)")
    elif result.true_total <= 0 or not np.isfinite(scale):
        result.reasons.append("no people labelled or none predicted: nothing to scale")
    elif not cfg.min_scale <= scale <= cfg.max_scale:
        result.reasons.append(f"factor {scale:.3f} outside [{cfg.min_scale}, {cfg.max_scale}]: check the labels")
    elif abs(scale - 1.0) < cfg.min_change:
        result.reasons.append(f"factor {scale:.3f} is within {cfg.min_change:.0%} of 1: already calibrated")
    elif not MIN_COUNT_SCALE <= parent_scale * scale <= MAX_COUNT_SCALE:
        result.reasons.append(f"total scale {parent_scale * scale:.3f} outside [{MIN_COUNT_SCALE}, {MAX_COUNT_SCALE}]")
    elif not result.mae_leave_one_out < result.mae_before:
        result.reasons.append(
            f"leave-one-out MAE {result.mae_leave_one_out:.2f} is not below the uncalibrated {result.mae_before:.2f}: "
            "the frames do not agree on one factor"
        )
    return result


def labelled_counts(model, labels: Path, max_side: int, device) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Served (calibrated) predicted and true counts per labelled frame, their names, and unreadable frames skipped.

    Frames not labelled yet are not read at all (datasets.read_dataset pairs only labelled ones).
    """
    import torch

    from adapt.data.crowd_dataset import readable_batches
    from adapt.selfsup.adaptation import labelled_loader
    from adapt.training.engine import predict_counts

    loader = labelled_loader(labels, max_side)
    items = loader.dataset.items
    predicted, true, names, unreadable = [], [], [], []
    model.eval()
    with torch.inference_mode():
        for batch in readable_batches(loader, unreadable):
            count, _, _ = predict_counts(model, batch["image"].to(device))
            predicted.append(float(count[0]))
            true.append(float(batch["count"][0]))
            names.append(items[int(batch["index"][0])].image_path.name)
    return np.asarray(predicted), np.asarray(true), names, len(unreadable)


def calibrate_camera(camera: str, labels: Path, registry_root: Path | None = None, base: Path | None = None,
                     max_side: int = 1024, device: str = "auto", publish: bool = True, cfg: CalibrationConfig = CalibrationConfig()) -> dict:
    """Fit, judge and (if accepted) publish a calibrated version of the camera's model; returns the report."""
    from adapt.model.checkpoint import load_checkpoint
    from adapt.selfsup.adaptation import publish_version, resolve_parent
    from adapt.store.names import validate_camera_name
    from adapt.store.registry import Registry
    from adapt.training.engine import select_device

    camera = validate_camera_name(camera)
    dev = select_device(device)
    registry = Registry(registry_root)
    parent_path, parent_version = resolve_parent(registry, camera, base)
    model = load_checkpoint(parent_path).build(dev)
    predicted, true, names, unreadable = labelled_counts(model, labels, max_side, dev)
    parent_scale = model.config.count_scale
    result = judge(predicted, true, parent_scale, cfg)
    report = {
        "camera": camera, "parent": parent_version, "parent_checkpoint": str(parent_path), "labels": str(labels),
        "config": asdict(cfg), "parent_count_scale": parent_scale, "calibration": asdict(result), "unreadable_frames": unreadable,
        "per_frame": [{"frame": n, "true": float(t), "predicted": float(p)} for n, t, p in zip(names, true, predicted)],
        "validation": {"verdict": "accept" if result.accepted else "reject", "reasons": result.reasons, "decided_by": "labelled-leave-one-out-mae"},
        "published": None,
    }
    if result.accepted and publish:
        model.set_count_scale(parent_scale * result.scale)
        report["count_scale"] = model.config.count_scale
        card = {
            "parent": parent_version, "recipe": {"calibration": asdict(cfg), "labels": str(labels)},
            "frames": {"labelled": result.frames}, "statistics": {"calibration": asdict(result), "count_scale": model.config.count_scale},
            "validation": report["validation"],
        }
        report["published"] = publish_version(registry, camera, model, parent_version, card)
    return report
