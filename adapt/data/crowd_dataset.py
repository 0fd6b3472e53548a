"""Torch datasets for training and evaluating the density network.

Samples follow the model contract: ``image`` is uint8 RGB (H, W, 3) with H and
W multiples of 32; ``density`` is float32 (1, H/8, W/8) in people per cell, so
``density.sum() == count`` for training crops.

Determinism
    Every random draw for a sample comes from a numpy Generator seeded with
    ``(seed, epoch, index)``, so a sample depends only on those three numbers,
    never on the DataLoader worker count or order. Call ``set_epoch`` on the
    dataset object the DataLoader was built with, before iterating the loader
    for that epoch; the epoch lives in shared memory, so persistent workers
    see it too.

Unreadable images
    An image that fails to load at ``__getitem__`` time does not end the epoch:
    it is logged once (per process), remembered, and the next index (wrapping
    around) is returned instead, drawn with that index's own random stream.
    Each time a sample is replaced, its reason is counted in ``skipped``
    (a Counter of reason -> replacements, in the process that loaded it) and
    listed in the sample's ``"skipped"`` entry. With DataLoader workers the
    dataset object's own Counter stays in the workers, so callers should count
    ``batch["skipped"]`` / ``batch["replaced"]`` (built by :func:`collate`).
    A stand-in duplicates another item: harmless in training, but evaluation
    must drop samples with ``replaced`` set, or that image counts twice.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from adapt.data.datasets import Annotation, DatasetError, list_images
from adapt.data.density import STRIDE, density_map, kernel_sigmas
from adapt.data.images import BadImage, load_image

log = logging.getLogger(__name__)

PAD_MULTIPLE = 32  # the network's input size constraint
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (256, 256)  # (h, w), multiples of 32
    scale_range: tuple[float, float] = (0.6, 1.4)
    hflip: bool = True
    color_jitter: float = 0.3  # brightness/contrast/saturation factors drawn from [1 - j, 1 + j]
    gray_prob: float = 0.1

    def __post_init__(self) -> None:
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        if min(self.crop) <= 0 or self.crop[0] % PAD_MULTIPLE or self.crop[1] % PAD_MULTIPLE:
            raise ValueError(f"crop must be positive multiples of {PAD_MULTIPLE}, found {self.crop}")
        lo, hi = self.scale_range
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must satisfy 0 < low <= high, found {self.scale_range}")
        if not (0 <= self.color_jitter < 1):
            raise ValueError(f"color_jitter must be in [0, 1), found {self.color_jitter}")
        if not (0 <= self.gray_prob <= 1):
            raise ValueError(f"gray_prob must be in [0, 1], found {self.gray_prob}")


# --------------------------------------------------------------------------- pure image maths


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample; independent of workers and call order."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize to (h, w); area averaging when shrinking avoids aliasing."""
    h, w = hw
    if (h, w) == img.shape[:2]:
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def pad_to(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Zero-pad bottom/right to (h, w); the model sees black where there is no image."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return np.ascontiguousarray(img)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[: img.shape[0], : img.shape[1]] = img
    return out


def padded_hw(hw: tuple[int, int], multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return (math.ceil(hw[0] / multiple) * multiple, math.ceil(hw[1] / multiple) * multiple)


def fit_max_side(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """Size with the longer side at most ``max_side`` (aspect kept, never upscaled)."""
    h, w = hw
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def color_jitter(img: np.ndarray, factors: np.ndarray, gray: bool) -> np.ndarray:
    """Brightness, contrast and saturation by ``factors`` (3,), then optional greyscale."""
    x = img.astype(np.float32)
    b, c, s = (float(f) for f in factors)
    x *= b
    luma = x @ GRAY_WEIGHTS
    mean = float(luma.mean()) if luma.size else 0.0
    x = (x - mean) * c + mean
    luma = (luma - mean) * c + mean  # luma is linear, so it follows the contrast change
    x = (x - luma[..., None]) * s + luma[..., None]
    if gray:
        x[...] = (x @ GRAY_WEIGHTS)[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class CropPlan:
    """One random draw of the training geometry and colour."""

    box: tuple[int, int, int, int]  # source region (y0, x0, h, w), inside the image
    out_hw: tuple[int, int]  # size of the region after rescaling; <= crop
    flip: bool
    jitter: np.ndarray  # (3,) brightness, contrast, saturation factors
    gray: bool

    @property
    def scale_yx(self) -> tuple[float, float]:
        """Exact scale of the resize actually applied (rounding makes it differ slightly from the draw)."""
        return self.out_hw[0] / self.box[2], self.out_hw[1] / self.box[3]


def plan_crop(image_hw: tuple[int, int], cfg: AugmentConfig, rng: np.random.Generator) -> CropPlan:
    """Draw scale, crop position, flip and colour for one sample.

    The crop is chosen in the source image (crop / scale pixels) and only that
    region is resized, which is much cheaper than rescaling the whole frame.
    Draws happen in a fixed order whatever the image, so the stream stays
    aligned across samples.
    """
    h, w = image_hw
    ch, cw = cfg.crop
    s = float(rng.uniform(*cfg.scale_range))
    u = rng.random(2)
    flip = bool(rng.random() < 0.5) and cfg.hflip
    jitter = rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter, size=3)
    gray = bool(rng.random() < cfg.gray_prob)
    bh, bw = min(h, max(1, round(ch / s))), min(w, max(1, round(cw / s)))
    y0 = min(int(u[0] * (h - bh + 1)), h - bh)
    x0 = min(int(u[1] * (w - bw + 1)), w - bw)
    out_hw = (min(ch, max(1, round(bh * s))), min(cw, max(1, round(bw * s))))
    return CropPlan(box=(y0, x0, bh, bw), out_hw=out_hw, flip=flip, jitter=jitter, gray=gray)


def render_crop(img: np.ndarray, plan: CropPlan, cfg: AugmentConfig) -> np.ndarray:
    """Apply a plan: crop, rescale, jitter (before padding, so the padding stays black), pad. No flip."""
    y0, x0, bh, bw = plan.box
    region = resize(img[y0 : y0 + bh, x0 : x0 + bw], plan.out_hw)
    if cfg.color_jitter > 0 or plan.gray:  # factors are exactly 1 when color_jitter == 0
        region = color_jitter(region, plan.jitter, plan.gray)
    return pad_to(region, cfg.crop)


def _inside(points: np.ndarray, y0: float, x0: float, h: float, w: float) -> np.ndarray:
    return (points[:, 0] >= x0) & (points[:, 0] < x0 + w) & (points[:, 1] >= y0) & (points[:, 1] < y0 + h)


def _to_tensor_image(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img))


# --------------------------------------------------------------------------- datasets


class _SkippingDataset(Dataset):
    """Shared epoch/seed handling and the replace-unreadable-image policy."""

    def __init__(self, n: int, seed: int) -> None:
        if n == 0:
            raise DatasetError(f"{type(self).__name__} needs at least one item")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, found {seed}")
        self.seed = int(seed)
        # Shared memory, so that set_epoch in the main process reaches persistent DataLoader
        # workers too (a plain int would stay frozen in each worker's copy of the dataset).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.skipped: Counter[str] = Counter()
        self._bad: dict[int, str] = {}  # index -> reason, for images already known unreadable
        self._n = n

    def __len__(self) -> int:
        return self._n

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random streams; call before iterating the DataLoader for that epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, found {epoch}")
        self._epoch.fill_(int(epoch))

    def _path(self, index: int) -> Path:
        raise NotImplementedError

    def _make(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._n <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} items")
        index %= self._n
        replaced: list[str] = []
        for step in range(self._n):
            i = (index + step) % self._n
            reason = self._bad.get(i)
            if reason is None:
                try:
                    image = load_image(self._path(i))
                except BadImage as e:
                    reason = self._bad[i] = e.reason
                    log.warning("unreadable image %s (%s); replaced by the next item in every epoch", e.path, e.reason)
            if reason is not None:
                self.skipped[reason] += 1
                replaced.append(reason)
                continue
            sample = self._make(i, image, sample_rng(self.seed, int(self._epoch), i))
            sample["skipped"] = replaced
            return sample
        raise DatasetError(f"all {self._n} images of {type(self).__name__} are unreadable: {dict(self.skipped)}")


class CrowdDataset(_SkippingDataset):
    """Labelled images for training (``augment`` given) or evaluation (``augment`` None).

    Training sample: ``image`` uint8 (h, w, 3) = ``augment.crop``, ``density``
    float32 (1, h/8, w/8), ``count`` float32 scalar = points inside the crop
    (equal to ``density.sum()``). The crop is taken at a random scale; images
    smaller than the crop after rescaling are zero-padded bottom/right.

    Evaluation sample: the whole image, downscaled so its longer side is at
    most ``max_side`` (if given), zero-padded bottom/right to multiples of 32;
    ``count`` is the number of labelled points (including any lying outside
    the image, which the density map cannot hold), plus ``index`` and
    ``valid_hw`` (the unpadded size). ``max_side`` is ignored in training.

    Sigmas are computed once per item on the full-resolution points (so a crop
    never changes a head's kernel) and scaled with the image.
    """

    def __init__(
        self,
        items: Sequence[Annotation],
        augment: AugmentConfig | None,
        seed: int = 0,
        max_side: int | None = None,
    ) -> None:
        super().__init__(len(items), seed)
        if max_side is not None and max_side < PAD_MULTIPLE:
            raise ValueError(f"max_side must be >= {PAD_MULTIPLE}, found {max_side}")
        self.items = list(items)
        self.augment = augment
        self.max_side = max_side
        self._sigmas: dict[int, np.ndarray] = {}

    def _path(self, index: int) -> Path:
        return self.items[index].image_path

    def sigmas(self, index: int) -> np.ndarray:
        sig = self._sigmas.get(index)
        if sig is None:
            ann = self.items[index]
            sig = self._sigmas[index] = kernel_sigmas(ann.points, ann.head_sizes)
        return sig

    def _make(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        ann = self.items[index]
        points = ann.points.astype(np.float64)
        sig = self.sigmas(index)
        if self.augment is None:
            return self._eval_sample(index, image, points, sig, ann.count)
        return self._train_sample(image, points, sig, rng)

    def _train_sample(self, image: np.ndarray, points: np.ndarray, sig: np.ndarray, rng: np.random.Generator) -> dict:
        cfg = self.augment
        assert cfg is not None
        plan = plan_crop(image.shape[:2], cfg, rng)
        y0, x0, bh, bw = plan.box
        # Keep only heads inside the source box: a label outside the image must not land in the padding.
        keep = _inside(points, y0, x0, bh, bw)
        sy, sx = plan.scale_yx
        pts = (points[keep] - (x0, y0)) * (sx, sy)
        res = density_map(pts, cfg.crop, sigmas=sig[keep] * math.sqrt(sx * sy))
        img = render_crop(image, plan, cfg)
        dens = res.density
        if plan.flip:  # flip the map, not the points: cells mirror exactly since w % 8 == 0
            img, dens = img[:, ::-1], dens[:, ::-1]
        return {
            "image": _to_tensor_image(img),
            "density": torch.from_numpy(np.ascontiguousarray(dens)[None]),
            "count": torch.tensor(float(len(pts) - res.outside), dtype=torch.float32),
        }

    def _eval_sample(self, index: int, image: np.ndarray, points: np.ndarray, sig: np.ndarray, count: int) -> dict:
        h, w = image.shape[:2]
        nh, nw = fit_max_side((h, w), self.max_side)
        image = resize(image, (nh, nw))
        sy, sx = nh / h, nw / w
        keep = _inside(points, 0, 0, h, w)
        pts = points[keep] * (sx, sy)
        ph, pw = padded_hw((nh, nw))
        res = density_map(pts, (ph, pw), sigmas=sig[keep] * math.sqrt(sx * sy))
        return {
            "image": _to_tensor_image(pad_to(image, (ph, pw))),
            "density": torch.from_numpy(res.density[None]),
            "count": torch.tensor(float(count), dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
            "valid_hw": torch.tensor((nh, nw), dtype=torch.int64),
        }


class FrameFolder(_SkippingDataset):
    """Unlabelled real frames for the self-supervised stages.

    Training (``augment`` given): random-scale crops with flip and colour
    jitter, exactly as :class:`CrowdDataset` draws them, without density.
    Evaluation: the whole frame, downscaled to ``max_side`` if given and
    zero-padded to multiples of 32, with ``valid_hw``. Both carry ``index``.
    Unreadable frames are replaced as described in the module docstring.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        augment: AugmentConfig | None,
        seed: int = 0,
        max_side: int | None = None,
    ) -> None:
        super().__init__(len(paths), seed)
        if max_side is not None and max_side < PAD_MULTIPLE:
            raise ValueError(f"max_side must be >= {PAD_MULTIPLE}, found {max_side}")
        self.paths = [Path(p) for p in paths]
        self.augment = augment
        self.max_side = max_side

    @classmethod
    def from_folder(cls, folder: str | Path, augment: AugmentConfig | None, **kwargs: Any) -> FrameFolder:
        """All .jpg/.jpeg/.png files directly in ``folder``, in natural order."""
        paths = list_images(Path(folder))
        if not paths:
            raise DatasetError(f"no .jpg/.jpeg/.png frames in {folder}")
        return cls(paths, augment, **kwargs)

    def _path(self, index: int) -> Path:
        return self.paths[index]

    def _make(self, index: int, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        if self.augment is not None:
            plan = plan_crop(image.shape[:2], self.augment, rng)
            img = render_crop(image, plan, self.augment)
            if plan.flip:
                img = img[:, ::-1]
            return {"image": _to_tensor_image(img), "index": torch.tensor(index, dtype=torch.int64)}
        nh, nw = fit_max_side(image.shape[:2], self.max_side)
        img = pad_to(resize(image, (nh, nw)), padded_hw((nh, nw)))
        return {
            "image": _to_tensor_image(img),
            "index": torch.tensor(index, dtype=torch.int64),
            "valid_hw": torch.tensor((nh, nw), dtype=torch.int64),
        }


STACKED = ("image", "density", "count", "index", "valid_hw")


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: image (B, h, w, 3) uint8, density (B, 1, h/8, w/8), count (B,),
    index (B,), valid_hw (B, 2) where present. ``skipped`` is the flat list of
    reasons for the unreadable images met while building the batch, and
    ``replaced`` (B,) bool marks samples standing in for an unreadable image.
    Evaluation should drop replaced samples (the stand-in is evaluated again
    at its own index) and count one unreadable image per replaced sample.

    Evaluation images of different sizes cannot share a batch: use batch_size=1
    for datasets with mixed sizes.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in STACKED:
        if key not in batch[0]:
            continue
        tensors = [b[key] for b in batch]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {key!r} of different shapes {sorted(shapes)}; use batch_size=1")
        out[key] = torch.stack(tensors)
    out["skipped"] = [r for b in batch for r in b.get("skipped", ())]
    out["replaced"] = torch.tensor([bool(b.get("skipped")) for b in batch], dtype=torch.bool)
    return out


def readable_batches(loader, unreadable: list[str] | None = None):
    """Batches of one whole frame from ``loader``, without stand-ins for unreadable frames.

    Evaluation loops use this so that a stand-in (the next frame, loaded in
    place of an unreadable one) is not scored twice; each dropped stand-in's
    reason is appended to ``unreadable``.
    """
    for batch in loader:
        replaced = batch.get("replaced")
        if replaced is not None and bool(replaced.any()):
            if unreadable is not None:
                unreadable.append(batch["skipped"][0] if batch["skipped"] else "unreadable")
            continue
        yield batch


__all__ = [
    "AugmentConfig",
    "CropPlan",
    "CrowdDataset",
    "FrameFolder",
    "PAD_MULTIPLE",
    "STRIDE",
    "collate",
    "color_jitter",
    "fit_max_side",
    "pad_to",
    "padded_hw",
    "plan_crop",
    "readable_batches",
    "render_crop",
    "resize",
    "sample_rng",
]
