"""``crowdwatch eval``: MAE and RMSE of counts on a labelled dataset (adapt/training/evaluate.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from adapt.model.checkpoint import CheckpointError
from adapt.store.locations import registry_root
from adapt.training.evaluate import evaluate_dataset
from crowdwatch.config import CONFIG_HELP, command_config


def main(argv: list[str] | None = None) -> int:
    from adapt.data.datasets import FORMATS, DatasetError
    from adapt.store.registry import RegistryError, default_base_checkpoint

    p = argparse.ArgumentParser(prog="crowdwatch eval", description="MAE and RMSE of counts on a labelled dataset.")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP + "; its [model] registry holds the base model")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--format", choices=FORMATS, default="shanghaitech")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (.pt); default: the shipped base model")
    p.add_argument("--json", type=Path, default=None, help='write the summary ({"mae", "rmse", "n", "mean_uncertainty", "mean_pred", "mean_true", ...}) here')
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="per-image CSV, scatter plot and density views")
    p.add_argument("--max-side", type=int, default=1024, help="downscale larger images so the longer side fits")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    config = command_config("crowdwatch eval", args.config)
    try:
        model_path = args.model or default_base_checkpoint(registry_root(config))
        s = evaluate_dataset(model_path, args.dataset, args.format, args.out, args.limit, args.max_side, args.device)
    except (CheckpointError, DatasetError, RegistryError) as exc:
        print(f"crowdwatch eval: {exc}", file=sys.stderr)
        return 1
    print(f"{s.dataset}: n={s.n}  MAE {s.mae:.2f}  RMSE {s.rmse:.2f} (papers call this MSE)  mean count std {s.mean_uncertainty:.2f}  "
          f"rank corr(std, |error|) {s.uncertainty_error_spearman:.2f}  mean count {s.mean_pred:.1f} (true {s.mean_true:.1f})  skipped {s.skipped}")
    print(f"per-image CSV, scatter plot and density views in {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(s), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
