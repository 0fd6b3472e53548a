"""How much do a few labelled frames fix? crowdwatch calibrate on N frames, measured on the rest.

    python -m research.calibration --labels DIR [--format shanghaitech] [--model PATH] [--n 8] [--subsets 10]
        [--max-side PX] [--out runs/bench-calibration]

Each subset is N frames drawn at random (seeded) from a labelled dataset and
written as a ``crowdwatch label`` folder (JSON points; images linked, not
copied). ``adapt.selfsup.calibration.calibrate_camera`` fits, judges and publishes
into ``OUT/models``, exactly as the command does. The other frames measure
the result: MAE and RMSE before and after, from one evaluation of the parent
(``crowdwatch eval``) with every count multiplied by the published factor.
That is exact, because the factor multiplies the served density and nothing
else (tests/test_calibration.py); the first accepted subset's published
checkpoint is also evaluated directly, to show it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def write_label_set(root: Path, items) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for item in items:
        link = root / "images" / item.image_path.name
        if not link.exists():
            link.symlink_to(item.image_path.resolve())
        (root / "labels" / f"{item.image_path.stem}.json").write_text(json.dumps({"points": np.asarray(item.points).tolist()}))
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--format", default="shanghaitech")
    p.add_argument("--model", type=Path, default=None, help="checkpoint to calibrate (default: the shipped base model)")
    p.add_argument("--n", type=int, default=8, help="labelled frames per subset (crowdwatch label's default)")
    p.add_argument("--subsets", type=int, default=10)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("runs/bench-calibration"))
    args = p.parse_args()

    import csv

    from adapt.data.datasets import read_dataset
    from adapt.selfsup.calibration import calibrate_camera
    from adapt.store.registry import Registry, default_base_checkpoint
    from adapt.training.evaluate import count_errors as errors
    from adapt.training.evaluate import evaluate_dataset

    model = args.model or default_base_checkpoint()
    args.out.mkdir(parents=True, exist_ok=True)
    items = read_dataset(args.labels, args.format).items
    evaluate_dataset(model, args.labels, args.format, args.out / "eval-parent", None, args.max_side, "auto")
    per_image = {r["image"]: r for r in csv.DictReader((args.out / "eval-parent" / "per_image.csv").open())}
    names = [it.image_path.name for it in items]
    pred = np.array([float(per_image[n]["pred_count"]) for n in names])
    true = np.array([float(per_image[n]["true_count"]) for n in names])

    rows, checked = [], None
    for r in range(args.subsets):
        pick = np.sort(np.random.default_rng(r).choice(len(items), args.n, replace=False))
        labels = write_label_set(args.out / f"labels-{r}", [items[i] for i in pick])
        report = calibrate_camera(f"subset{r}", labels, args.out / "models", model, args.max_side, "auto")
        c = report["calibration"]
        rest = np.setdiff1d(np.arange(len(items)), pick)
        factor = c["scale"] if report["published"] else 1.0
        before, after = errors(true[rest], pred[rest]), errors(true[rest], factor * pred[rest])
        rows.append({"subset": r, "frames": [names[i] for i in pick], "factor": c["scale"], "mae_loo": c["mae_leave_one_out"],
                     "mae_labelled_before": c["mae_before"], "verdict": report["validation"]["verdict"],
                     "reasons": report["validation"]["reasons"], "rest": len(rest),
                     "rest_before": before, "rest_after": after})
        print(json.dumps(rows[-1]), flush=True)
        if checked is None and report["published"]:
            served = Registry(args.out / "models").current(f"subset{r}").checkpoint
            direct = evaluate_dataset(served, args.labels, args.format, None, None, args.max_side, "auto")
            checked = {"subset": r, "all_frames_mae_direct": direct.mae, "all_frames_mae_scaled": errors(true, factor * pred)[0]}
            print(json.dumps(checked), flush=True)
    (args.out / "rows.json").write_text(json.dumps({"parent": str(model), "rows": rows, "direct_check": checked}, indent=2))

    print(f"\n# {args.labels}: {len(items)} frames, parent {model}, {args.n} labelled frames a subset")
    print("| subset | factor | MAE on the labelled frames: none -> leave-one-out | verdict | other frames: MAE / RMSE before | after |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['subset']} | {row['factor']:.3f} | {row['mae_labelled_before']:.2f} -> {row['mae_loo']:.2f} | {row['verdict']} | "
              f"{row['rest_before'][0]:.2f} / {row['rest_before'][1]:.2f} | {row['rest_after'][0]:.2f} / {row['rest_after'][1]:.2f} |")
    after = np.array([row["rest_after"][0] for row in rows])
    print(f"\nafter, over subsets: median MAE {np.median(after):.2f}, range {after.min():.2f} - {after.max():.2f}; "
          f"worse than before in {sum(row['rest_after'][0] > row['rest_before'][0] for row in rows)} of {len(rows)}")
    if checked:
        print(f"direct check, subset {checked['subset']} on all frames: published checkpoint MAE {checked['all_frames_mae_direct']:.3f}, "
              f"parent counts x factor {checked['all_frames_mae_scaled']:.3f}")


if __name__ == "__main__":
    main()
