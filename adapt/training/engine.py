"""The training toolkit shared by supervised training and the adaptation stages.

Devices and seeding, the density and count losses, optimisers and their
learning-rate schedules, the optimiser step, the parameter EMA, ensemble
count prediction, endless batch iteration and rendering the synthetic set.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from adapt.model.network import CrowdCounter, ensemble_mean_std


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def worker_init(_: int) -> None:
    # cv2's own thread pool inside each DataLoader worker oversubscribes the cores
    import cv2

    cv2.setNumThreads(0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def density_loss(pred: torch.Tensor, target: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise L2 on density maps, in the network's scaled units.

    With ``mask`` (same shape, 0/1), only masked cells count: the pseudo-label
    stage uses this for its confident cells.
    """
    err = (pred.float() - target.float()) * scale
    if mask is None:
        return err.pow(2).mean()
    return (err.pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


def count_loss(density: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Squared count error per crop over (count + 1), a Poisson-like scale: people per crop, not per cell."""
    predicted = density.float().sum(dim=(1, 2, 3))
    return ((predicted - count.float()) ** 2 / (count.float() + 1.0)).mean()


def region_count_loss(density: torch.Tensor, regions: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``count_loss`` per region: ``regions`` (N, 1, h, w) holds region ids (0: none), ``counts`` (N, R) each id's people."""
    n, r = counts.shape
    sums = torch.zeros(n, r, device=density.device, dtype=torch.float32)
    sums.scatter_add_(1, regions.flatten(1).clamp(0, r - 1), density.float().flatten(1))
    present = counts > 0
    present[:, 0] = False
    if not present.any():
        return density.sum() * 0.0
    return ((sums - counts) ** 2 / (counts + 1.0))[present].mean()


def param_groups(model: CrowdCounter, lr: float, encoder_lr_mult: float) -> list[dict]:
    """Two optimiser groups: the encoder at ``lr * encoder_lr_mult``, everything else at ``lr`` (trainable parameters only)."""
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    return [{"params": enc, "lr": lr * encoder_lr_mult}, {"params": rest, "lr": lr}]


def build_optimizer(model: CrowdCounter, cfg) -> torch.optim.Optimizer:
    """AdamW over ``cfg.lr``, ``cfg.encoder_lr_mult`` and ``cfg.weight_decay`` (a training.train.TrainConfig)."""
    return torch.optim.AdamW(param_groups(model, cfg.lr, cfg.encoder_lr_mult), weight_decay=cfg.weight_decay)


def cosine_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, total: int, warmup: int) -> None:
    if step < warmup:
        f = (step + 1) / warmup
    else:
        f = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * max(f, 0.01)


def autocast_for(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, scaler=None, clip: float = 10.0) -> None:
    """Backward, clip, step; a non-finite loss stops training with a clear error."""
    backward_clipped(model, optimizer, loss, what, scaler, clip)
    apply_step(optimizer, scaler)


def backward_clipped(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, scaler=None, clip: float = 10.0) -> None:
    """The gradients of ``loss``, clipped; changes nothing a checkpoint holds (the weights move in :func:`apply_step`)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: loss became {loss.item()}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)


def apply_step(optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """Move the weights by the gradients :func:`backward_clipped` left."""
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def check_step_settings(ema_decay: float, warmup_steps: int = 0) -> None:
    """Validate the EMA decay and warm-up shared by the adaptation stages' configs."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), found {ema_decay}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, found {warmup_steps}")


class ParameterEMA:
    """Exponential moving average of a model's parameters during a run of steps.

    ``apply`` writes the average back into the model. Parameters only: the
    BatchNorm statistics stay those of the last step. A decay of 0 is off.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), found {decay}")
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None

    def update(self, model: torch.nn.Module) -> None:
        if self.average is not None:
            self.average.update_parameters(model)

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        if self.average is not None:
            for averaged, p in zip(self.average.module.parameters(), model.parameters()):
                p.copy_(averaged)


@torch.inference_mode()
def predict_counts(model: CrowdCounter, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ensemble prediction: (count (N,), count std across masks (N,), per-mask density)."""
    per_mask = model.ensemble(image)
    counts = per_mask.sum(dim=(2, 3, 4))  # (M, N)
    mean, std = ensemble_mean_std(counts)
    return mean, std, per_mask


def loop_forever(loader) -> Iterator[dict]:
    """Batches of ``loader``, epoch after epoch; an epoch without a batch is an error, not a silent hang."""
    epoch = 0
    while True:
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"a whole pass over {len(loader.dataset)} samples gave no batch of {loader.batch_size}")
        epoch += 1


def make_optimizer(model: CrowdCounter, lr: float, encoder_lr_mult: float, weight_decay: float, warmup_steps: int = 0) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW, and a linear warm-up of its learning rate over ``warmup_steps`` (call the scheduler after every step).

    Adam's first update moves every weight by the full learning rate whatever
    its gradient; a warm-up keeps the first steps small (research/NOTEBOOK.md, "Controls").
    """
    opt = torch.optim.AdamW(param_groups(model, lr, encoder_lr_mult), weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    return opt, schedule


def render_if_missing(
    out: Path, n: int, seed: int = 0, width: int = 640, height: int = 480, styles: list[str] | tuple[str, ...] = ("day",),
    count_range: tuple[int, int] = (0, 300), workers: int = 2, rerender_stale: bool = False,
    scenes: list[str] | tuple[str, ...] = ("street",), empty: float | None = None,
) -> Path:
    """Render a labelled synthetic set into ``out`` unless one is there already; returns ``out``.

    A set is there when ``out/meta.json`` is. With ``rerender_stale``, renders
    of another renderer version are replaced (adaptation's L_s must train on
    what the current renderer draws, as the base model did); any other
    labelled set (another generator, no version) is used as it is.
    """
    from adapt.synth.render import RENDERER_VERSION
    from adapt.synth.writers import EMPTY_SHARE, write_dataset

    out = Path(out)
    meta = out / "meta.json"
    if meta.is_file():
        if not rerender_stale:
            return out
        try:
            found = json.loads(meta.read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("generator") != "crowdwatch synth" or found.get("renderer_version") == RENDERER_VERSION:
            return out
        print(f"{out} holds renders of {found.get('renderer_version')}; re-rendering with {RENDERER_VERSION}", flush=True)
    print(f"rendering {n} labelled synthetic images into {out} ...", flush=True)
    write_dataset(
        out, n=n, seed=seed, width=width, height=height, styles=list(styles), count_range=tuple(count_range), workers=workers,
        overwrite=True, kinds=list(scenes), empty=EMPTY_SHARE if empty is None else float(empty),
    )
    return out
