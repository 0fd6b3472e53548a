"""``crowdwatch train``: train the density network on labelled data (adapt/training/train.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapt.model.checkpoint import CheckpointError
from adapt.store.locations import registry_root
from adapt.training.interrupt import TrainingInterrupted
from adapt.training.train import TrainConfig, load_recipe, train
from crowdwatch.config import CONFIG_HELP, command_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crowdwatch train", description="Train the density network on labelled data.")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP + "; --publish registers in its [model] registry")
    p.add_argument("--recipe", help="a named recipe (adapt/recipes/NAME.toml) or a TOML file; flags below override it")
    p.add_argument("--data", action="append", help="training dataset DIR[:format] (repeatable); formats: shanghaitech, ucf, gcc, json")
    p.add_argument("--val", help="validation dataset DIR[:format]")
    p.add_argument("--out", help="run directory for checkpoints and history")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--crop", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (a CUDA GPU when there is one, else Apple MPS, else the CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt and start over")
    p.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="also save OUT/last.pt this often within an epoch (default 300; SIGTERM and Ctrl-C save it too)")
    p.add_argument("--publish", action="store_true", help="register the best checkpoint as the base model")
    args = p.parse_args(argv)
    config = command_config("crowdwatch train", args.config)
    try:
        cfg = load_recipe(args.recipe) if args.recipe else TrainConfig()
        if cfg.registry is None and config is not None:
            cfg.registry = str(registry_root(config))
        overrides = {
            "train": args.data, "val": args.val, "out": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "crop": args.crop, "workers": args.workers, "seed": args.seed, "device": args.device, "init": args.init,
            "checkpoint_every_s": args.checkpoint_every,
        }
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        if args.no_resume:
            cfg.resume = False
        if args.publish:
            cfg.publish = True
        if not cfg.train and not cfg.synth:
            p.error("give --data DIR[:format] or a --recipe")
        if cfg.crop % 32:
            p.error(f"--crop must be a multiple of 32, found {cfg.crop}")
        best = train(cfg)
    except TrainingInterrupted as exc:
        print(f"crowdwatch train: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, CheckpointError, FloatingPointError) as exc:
        print(f"crowdwatch train: {exc}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
