"""What a training run needs to resume exactly where it stopped, mid-epoch included.

A run's batches are fixed by ``(seed, epoch)``: :class:`EpochBatchSampler`
draws each epoch's order from them alone, and every sample's crop is drawn
from ``(seed, epoch, index)`` (adapt/data/crowd_dataset.py). So a resumed run
that skips the batches it already did sees the same remaining batches in the
same order. :class:`RunState` is the rest: where the run is, the epoch's
running loss, the best score so far and the history; it travels in the
checkpoint's ``train_state`` with the optimiser and GradScaler states (plain
tensors and numbers, so ``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

# a spawn key of its own keeps the batch order independent of the samples' (seed, epoch, index) streams
ORDER_STREAM = 1


class ResumeError(ValueError):
    pass


class EpochBatchSampler(Sampler[list[int]]):
    """Full batches of one epoch, in an order fixed by ``(seed, epoch)``; ``start`` skips the batches done.

    The last partial batch is dropped (every batch must split evenly across
    the Masksembles masks).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, found {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start must be in [0, {self.steps_per_epoch}], found {start}")
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> np.ndarray:
        seq = np.random.SeedSequence([self.seed, epoch], spawn_key=(ORDER_STREAM,))
        return np.random.default_rng(seq).permutation(self.n)

    def __iter__(self) -> Iterator[list[int]]:
        order, b = self.order(self.epoch), self.batch_size
        for i in range(self.start, self.steps_per_epoch):
            yield order[i * b : (i + 1) * b].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start


@dataclass(frozen=True)
class DataKey:
    """What fixes the batches; a run resumed mid-epoch must find the same."""

    images: int
    batch_size: int
    seed: int


@dataclass
class RunState:
    epoch: int = 0               # the epoch of the next batch
    step: int = 0                # batches of that epoch already trained
    loss_sum: float = 0.0        # the epoch's loss so far, summed over its images
    seen: int = 0                # images behind loss_sum
    seconds: float = 0.0         # the epoch's training time so far, over every session
    best: float = math.inf       # the best score of a finished epoch
    history: list[dict] = field(default_factory=list)

    def add_batch(self, loss: float, images: int, seconds: float) -> None:
        self.step += 1
        self.loss_sum += loss * images
        self.seen += images
        self.seconds += seconds

    @property
    def epoch_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def next_epoch(self) -> None:
        self.epoch, self.step, self.loss_sum, self.seen, self.seconds = self.epoch + 1, 0, 0.0, 0, 0.0

    def where(self, steps_per_epoch: int) -> str:
        return f"epoch {self.epoch} step {self.step}/{steps_per_epoch}"


def train_state(state: RunState, data: DataKey, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict:
    """The checkpoint's ``train_state``: the run, its data and the optimiser and GradScaler states."""
    return {**asdict(state), "data": asdict(data), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}


def restore_run(ts: dict, data: DataKey, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, history_file: Path) -> RunState:
    """Load the optimiser and GradScaler from ``ts`` and return the run's state.

    A checkpoint of the format before mid-epoch resume (epoch = the last
    finished one, history in ``history.json``) resumes at the next epoch.
    """
    optimizer.load_state_dict(ts["optimizer"])
    if ts.get("scaler") and scaler.is_enabled():  # a CPU run's scaler is off and empty; a GPU run starts a fresh one
        scaler.load_state_dict(ts["scaler"])
    if "step" not in ts:
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        return RunState(epoch=int(ts["epoch"]) + 1, best=float(ts.get("best", math.inf)), history=history)
    state = RunState(**{k: ts[k] for k in RunState.__dataclass_fields__})
    saved = DataKey(**ts["data"])
    if state.step and saved != data:
        raise ResumeError(
            f"the checkpoint stopped mid-epoch on {saved.images} images, batch size {saved.batch_size}, seed {saved.seed}; "
            f"now {data.images}, {data.batch_size}, {data.seed}: resume with the same data and settings, or start over with --no-resume"
        )
    return state


class Interval:
    """True once every ``seconds`` (every call for 0): how often a run saves mid-epoch."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"checkpoint interval must be >= 0 seconds, found {seconds}")
        self.seconds, self._last = seconds, time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        self._last = time.monotonic()
