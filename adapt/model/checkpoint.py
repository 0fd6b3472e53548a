"""Checkpoint format: a plain dict of tensors and primitives, safe for ``weights_only=True``.

    {"format": "crowdwatch-checkpoint/1",
     "model_config": {...ModelConfig...},
     "state_dict": {...},          # includes masksembles.masks
     "meta": {"version", "parent", "camera", "recipe", ...},
     "train_state": {...} | None}  # optimiser/epoch, for resume only

Writes are atomic (temp file + rename), so a crash never leaves half a file
where a loader will look.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapt.model.network import CrowdCounter, ModelConfig
from adapt.store.atomic import atomic_write

FORMAT = "crowdwatch-checkpoint/1"


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    train_state: dict | None = None

    def build(self, device: str | torch.device = "cpu") -> CrowdCounter:
        model = CrowdCounter(self.model_config, pretrained=False)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit a {self.model_config.arch} model: {exc}") from None
        return model.to(device).eval()


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors in key order: identifies the exact weights (and masks)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, model: CrowdCounter, meta: dict | None = None, train_state: dict | None = None) -> str:
    """Save atomically; returns the weights hash (also stored in meta)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta["weights_sha256"] = weights_hash(state)
    data = {"format": FORMAT, "model_config": model.config.to_dict(), "state_dict": state, "meta": meta, "train_state": train_state}
    atomic_write(path, lambda f: torch.save(data, f))
    return meta["weights_sha256"]


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crowdwatch checkpoint (expected format {FORMAT!r})")
    try:
        config = ModelConfig.from_dict(data["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model_config: {exc}") from None
    state = data.get("state_dict")
    if not isinstance(state, dict) or "masksembles.masks" not in state:
        raise CheckpointError(f"{path}: state_dict missing or without the Masksembles masks")
    return Checkpoint(config, state, dict(data.get("meta") or {}), data.get("train_state"))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CrowdCounter, dict]:
    ckpt = load_checkpoint(path)
    return ckpt.build(device), ckpt.meta
