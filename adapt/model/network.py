"""The density network: encoder, stride-8 fusion, Masksembles decoder, flip head.

Model contract (DESIGN.md): input ``image`` uint8 (N, H, W, 3) RGB with H and W
multiples of 32; outputs ``density`` (N, 1, H/8, W/8), the ensemble mean in
people per cell, and ``uncertainty``, the per-cell std across the masks.

The ensemble is cheap because everything up to and including the first decoder
conv runs once per frame; only the layers after the Masksembles layer run once
per mask, batched as one pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from masksembles.torch import Masksembles2D
from torch import nn

from adapt.model.encoders import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0, VGG16Frontend

ARCHES = ("lite0", "vgg16_sfcn")
STRIDE = 8
INPUT_MULTIPLE = 32
MIN_COUNT_SCALE, MAX_COUNT_SCALE = 0.05, 20.0


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "lite0"
    masks: int = 4
    mask_scale: float = 2.0
    # masksembles draws masks from numpy's global RNG; we seed it so a given
    # config always means the same ensemble (masks are also saved in checkpoints)
    mask_seed: int = 0
    fusion_channels: int = 96
    decoder_channels: int = 64
    # Density is predicted x this factor internally: raw per-cell counts are
    # ~1e-2, too small for well-conditioned L2 training.
    density_scale: float = 100.0
    # The flip head pools this many horizontal bands separately. Perspective
    # is a top-versus-bottom difference (small, dense people at the top of an
    # upright frame); one global average cannot see where a feature is, so
    # a 1-band head can only learn local "upside-down person" cues. The flip
    # stage sets it (FlipStageConfig.head_rows).
    flip_rows: int = 1
    # Per-camera count calibration (crowdwatch calibrate): served counts are
    # the network's x this. Training and pseudo labels stay in the synthetic
    # source's units (ensemble(calibrated=False)), so L_s never pulls the
    # calibration back to the source's scale.
    count_scale: float = 1.0

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise ValueError(f"model arch must be one of {ARCHES}, found {self.arch!r}")
        if not (1 <= self.masks <= 16):
            raise ValueError(f"masks must be in 1..16, found {self.masks}")
        if not (1.0 <= self.mask_scale <= 6.0):
            raise ValueError(f"mask_scale must be in [1, 6], found {self.mask_scale}")
        if not (1 <= self.flip_rows <= 8):
            raise ValueError(f"flip_rows must be in 1..8, found {self.flip_rows}")
        if not (MIN_COUNT_SCALE <= self.count_scale <= MAX_COUNT_SCALE):
            raise ValueError(f"count_scale must be in [{MIN_COUNT_SCALE}, {MAX_COUNT_SCALE}], found {self.count_scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return dataclass_from_dict(cls, data, "model config")


def dataclass_from_dict(cls, data: dict, what: str):
    """Build a config dataclass, refusing unknown keys (typos must not pass silently)."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    return cls(**data)


@contextlib.contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class SavedMasksembles2D(Masksembles2D):
    """Masksembles2D whose masks live in the state dict, so a reload is the same ensemble."""

    def __init__(self, channels: int, n: int, scale: float, seed: int):
        with _numpy_seed(seed):
            super().__init__(channels, n, scale)
        self.register_buffer("masks", self.masks, persistent=True)


def conv_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation), nn.ReLU(inplace=True))


class Lite0Fusion(nn.Module):
    """FPN-style top-down fusion of strides 8, 16 and 32 into one stride-8 map."""

    def __init__(self, channels: int):
        super().__init__()
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(c, channels, 1) for s, c in EfficientNetLite0.CHANNELS.items()})
        self.smooth = conv_relu(channels, channels)

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        x = self.lateral["32"](feats[32])
        for stride in (16, 8):
            lat = self.lateral[str(stride)](feats[stride])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
        return self.smooth(x)


class ConvDULR(nn.Module):
    """SFCN's spatial encoder: convDU (rows, down then up) and convLR (columns).

    Each row (column) receives a message from its already-updated neighbour,
    which spreads context across the whole frame in O(H + W) steps.
    """

    def __init__(self, channels: int, kernel: int = 9):
        super().__init__()
        self.du = nn.Sequential(nn.Conv2d(channels, channels, (1, kernel), padding=(0, kernel // 2)), nn.ReLU(inplace=True))
        self.lr = nn.Sequential(nn.Conv2d(channels, channels, (kernel, 1), padding=(kernel // 2, 0)), nn.ReLU(inplace=True))

    @staticmethod
    def _sweep(x: torch.Tensor, conv: nn.Module, dim: int) -> torch.Tensor:
        slices = list(torch.split(x, 1, dim=dim))
        for i in range(1, len(slices)):
            slices[i] = conv(slices[i - 1]) + slices[i]
        for i in range(len(slices) - 2, -1, -1):
            slices[i] = conv(slices[i + 1]) + slices[i]
        return torch.cat(slices, dim=dim)

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        x = self._sweep(feats[8], self.du, dim=2)
        return self._sweep(x, self.lr, dim=3)


def ensemble_mean_std(per_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the masks (dim 0) of per-mask outputs (densities or counts).

    Population std: the masks are the whole ensemble, not a sample of one.
    """
    return per_mask.mean(dim=0), per_mask.std(dim=0, unbiased=False)


class CrowdCounter(nn.Module):
    """Density network with a Masksembles decoder and an upright/upside-down head."""

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = True, backbone_weights: Path | None = None):
        super().__init__()
        self.config = cfg = config or ModelConfig()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        if cfg.arch == "lite0":
            self.encoder = EfficientNetLite0()
            if pretrained:
                self.encoder.load_imagenet()
            self.neck = Lite0Fusion(cfg.fusion_channels)
            neck_channels, flip_channels, dec = cfg.fusion_channels, EfficientNetLite0.CHANNELS[32], cfg.decoder_channels
            self.decoder_in = conv_relu(neck_channels, dec)
            self.decoder_out = nn.Sequential(conv_relu(dec, dec // 2), nn.Conv2d(dec // 2, 1, 1))
            self.flip_tap = 32
        else:
            self.encoder = VGG16Frontend()
            if backbone_weights is not None:
                self.encoder.load_torchvision(Path(backbone_weights))
            self.neck = ConvDULR(512)
            flip_channels = 512
            # CSRNet-style dilated back end; Masksembles after its first conv
            self.decoder_in = conv_relu(512, 512, dilation=2)
            self.decoder_out = nn.Sequential(
                conv_relu(512, 256, dilation=2), conv_relu(256, 128, dilation=2), conv_relu(128, 64, dilation=2), nn.Conv2d(64, 1, 1)
            )
            self.flip_tap = 8
            dec = 512
        self.masksembles = SavedMasksembles2D(dec, cfg.masks, cfg.mask_scale, cfg.mask_seed)
        self.flip_head = flip_head(flip_channels, cfg.flip_rows)

    # -- shared trunk ---------------------------------------------------------
    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> normalised float (N, 3, H, W)."""
        x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) / self.std

    def trunk(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Everything that runs once per frame: encoder, fusion, first decoder conv."""
        feats = self.encoder(self.normalise(image))
        return self.decoder_in(self.neck(feats)), feats

    def head(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Density in people per cell; ``raw`` skips the final ReLU (how far below zero an empty cell is)."""
        y = self.decoder_out(x) / self.config.density_scale
        return y if raw else F.relu(y)

    def set_count_scale(self, scale: float) -> None:
        """Serve counts at ``scale`` x the network's (crowdwatch calibrate); training is unaffected."""
        self.config = replace(self.config, count_scale=float(scale))

    def set_flip_rows(self, rows: int) -> None:
        """Give the model a fresh flip head with ``rows`` bands (the flip stage trains it)."""
        if rows != self.config.flip_rows:
            device = self.flip_head[0].weight.device
            self.config = replace(self.config, flip_rows=rows)
            self.flip_head = flip_head(self.flip_head[0].in_channels, rows).to(device)

    # -- training: every sample through one mask ----------------------------------
    def forward_train(self, image: torch.Tensor, with_flip: bool = False):
        """Per-sample density (N, 1, H/8, W/8); sample i uses mask i // (N / M).

        N must be a multiple of M (Masksembles splits the batch into M groups).
        """
        n, m = image.shape[0], self.config.masks
        if n % m:
            raise ValueError(f"batch size {n} is not a multiple of the number of masks {m}")
        x, feats = self.trunk(image)
        density = self.head(self.masksembles(x))
        if with_flip:
            return density, self.flip_head(feats[self.flip_tap])
        return density

    def forward_train_flip(self, images: torch.Tensor, density_of: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip logits of every image and the density (as ``forward_train``) of ``images[density_of]``, in one encoder pass."""
        feats = self.encoder(self.normalise(images))
        picked = {k: v[density_of] for k, v in feats.items()}
        n, m = next(iter(picked.values())).shape[0], self.config.masks
        if n % m:
            raise ValueError(f"batch size {n} is not a multiple of the number of masks {m}")
        density = self.head(self.masksembles(self.decoder_in(self.neck(picked))))
        return density, self.flip_head(feats[self.flip_tap])

    def flip_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Upright (0) / upside-down (1) logits; needs only the encoder."""
        return self.flip_head(self.encoder(self.normalise(image))[self.flip_tap])

    # -- inference: the whole ensemble in one batched decoder pass ------------------
    def ensemble(self, image: torch.Tensor, raw: bool = False, calibrated: bool = True) -> torch.Tensor:
        """Density of every mask: (M, N, 1, H/8, W/8); ``raw`` as in ``head``.

        ``calibrated`` applies the camera's ``count_scale`` (what is served);
        without it the density is in the source's units, as in training.
        """
        m = self.config.masks
        x, _ = self.trunk(image)
        n = x.shape[0]
        # Masksembles gives the k-th contiguous chunk of the batch mask k, so
        # tiling the batch M times evaluates every frame under every mask.
        y = self.head(self.masksembles(x.repeat(m, 1, 1, 1)), raw=raw)
        if calibrated and self.config.count_scale != 1.0:
            y = y * self.config.count_scale
        return y.reshape(m, n, *y.shape[1:])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ensemble_mean_std(self.ensemble(image))

    def naive_ensemble(self, image: torch.Tensor) -> torch.Tensor:
        """Reference: a full forward pass per mask, masks applied by hand. Slow; for tests."""
        outs = []
        for k in range(self.config.masks):
            x, _ = self.trunk(image)
            mask = self.masksembles.masks[k].view(1, -1, 1, 1)
            outs.append(self.head(x * mask) * self.config.count_scale)
        return torch.stack(outs)


def flip_head(channels: int, rows: int) -> nn.Sequential:
    """Upright/upside-down classifier: 1x1 conv, then an average per horizontal band."""
    return nn.Sequential(
        nn.Conv2d(channels, 128, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((rows, 1)), nn.Flatten(), nn.Linear(128 * rows, 2)
    )


def training_mode(model: nn.Module, freeze_bn: bool) -> nn.Module:
    """``model.train()``; with ``freeze_bn`` every BatchNorm layer stays in eval mode (its affine weights still learn).

    Adaptation batches are small and real-only in places, so training-mode BN
    would drag the running statistics to the target, which alone moves counts
    more than anything the stages learn (research/NOTEBOOK.md, research/bn_stats.py).
    """
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def check_input(image: torch.Tensor) -> None:
    """Raise ValueError unless ``image`` fits the model contract."""
    if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"model input must be uint8 (N, H, W, 3); found {tuple(image.shape)} {image.dtype}")
    h, w = image.shape[1:3]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
        raise ValueError(f"model input height and width must be positive multiples of {INPUT_MULTIPLE}; found {h}x{w}")
