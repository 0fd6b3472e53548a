"""Training speed of a recipe's settings: seconds per step, measured on a few steps.

Trains with the recipe's model, batch, crop, workers and device on a small
labelled set (rendered with the recipe's first synthetic spec unless --data
is given) and times each step between the hooks of consecutive batches of one
epoch: data loading, forward, backward and the optimiser step. The first
--warmup steps are dropped. Validation and the checkpoints written at an
epoch's end are not in the figure. Prints the median and the wall time of the
recipe's epochs at that rate.

    .venv/bin/python bench/train_speed.py --recipe base --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings, as the other bench scripts do

from peers import cpu_name  # noqa: E402

from adapt.data.datasets import read_dataset  # noqa: E402
from adapt.training.engine import render_if_missing, select_device  # noqa: E402
from adapt.training.resume import RunState  # noqa: E402
from adapt.training.train import load_recipe, parse_dataset_spec, train  # noqa: E402


class Enough(Exception):
    pass


class StepClock:
    """Wall and main-process CPU time of each step, from one batch's hook to the next within an epoch."""

    def __init__(self, steps: int, warmup: int) -> None:
        self.steps, self.warmup = steps, warmup
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[int, float, float] | None = None
        self._seen = 0

    def __call__(self, _model: torch.nn.Module, state: RunState) -> None:
        now, cpu = time.monotonic(), time.process_time()
        if self._last is not None and self._last[0] == state.epoch:
            self._seen += 1
            if self._seen > self.warmup:
                self.wall.append(now - self._last[1])
                self.cpu.append(cpu - self._last[2])
                print(f"step {len(self.wall)}: {self.wall[-1]:.3f} s, main-process CPU {self.cpu[-1]:.3f} s", flush=True)
        self._last = (state.epoch, now, cpu)
        if len(self.wall) >= self.steps:
            raise Enough


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="base")
    p.add_argument("--data", help="labelled set DIR[:format] (default: render --images with the recipe's first synthetic spec)")
    p.add_argument("--images", type=int, default=32, help="renders when --data is not given (default 32)")
    p.add_argument("--steps", type=int, default=8, help="timed steps (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--device", help="override the recipe's device")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    cfg = load_recipe(args.recipe)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        if args.data:
            data = args.data
        else:
            spec = cfg.synth[0]
            root = render_if_missing(
                Path(tmp) / "data", n=args.images, seed=int(spec.get("seed", 0)) + 1000, width=int(spec.get("width", 640)),
                height=int(spec.get("height", 480)), styles=list(spec.get("styles", ["day"])),
                count_range=tuple(spec.get("count", [0, 300])), workers=int(spec.get("workers", 2)),
            )
            data = f"{root}:shanghaitech"
        images = len(read_dataset(*parse_dataset_spec(data)).items)
        steps_per_epoch = images // cfg.batch_size
        if steps_per_epoch < 2:
            p.error(f"{images} images give {steps_per_epoch} steps an epoch at batch {cfg.batch_size}: nothing to time")
        recipe_images = sum(int(s["n"]) for s in cfg.synth if s["out"] in {str(parse_dataset_spec(t)[0]) for t in cfg.train})
        recipe_epochs = cfg.epochs
        cfg.train, cfg.val, cfg.synth, cfg.out = [data], None, [], str(Path(tmp) / "run")
        cfg.epochs, cfg.resume, cfg.publish, cfg.checkpoint_every_s = 1_000, False, False, 1e9
        if args.device:
            cfg.device = args.device
        clock = StepClock(args.steps, args.warmup)
        try:
            train(cfg, on_batch=clock)
        except Enough:
            pass
    wall, cpu = statistics.median(clock.wall), statistics.median(clock.cpu)
    result = {
        "recipe": args.recipe, "device": str(select_device(cfg.device)), "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size, "crop": cfg.crop, "workers": cfg.workers, "model": cfg.model, "timed_steps": len(clock.wall),
        "seconds_per_step_median": round(wall, 3), "steps_per_second": round(1 / wall, 3),
        "main_process_cpu_seconds_per_step_median": round(cpu, 3),
        "seconds_per_step_all": [round(w, 3) for w in clock.wall],
        "cpu": cpu_name(),
        "loadavg_1_5_15_start": load_start, "loadavg_1_5_15_end": os.getloadavg(),  # other jobs on the machine
    }
    if recipe_images:
        steps = recipe_images // cfg.batch_size
        result["recipe_steps"] = {"images": recipe_images, "per_epoch": steps, "epochs": recipe_epochs}
        result["recipe_training_hours_at_this_rate"] = round(steps * recipe_epochs * wall / 3600, 2)
    print(json.dumps(result, indent=2))
    print("command: .venv/bin/python bench/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
