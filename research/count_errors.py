"""Split count errors into one global scale and the rest, and see where confidence points.

    python -m research.count_errors EVAL_DIR [EVAL_DIR ...] [--quartiles] [--every K [--rest]]

Each EVAL_DIR is the ``--out`` folder of ``crowdwatch eval`` (its
``per_image.csv``). For each it prints MAE, RMSE, the mean predicted and true
counts, the correlation of predicted with true counts, and the MAE left after
multiplying every prediction by the one factor that makes the mean prediction
equal the mean truth. That factor needs labels, so no label-free method can
learn it from the target; what is left after it is the part of the error that
per-image structure can still fix.

``--quartiles`` also splits the images into quartiles of relative
uncertainty (count std across the masks / predicted count) and prints how
much each quartile over- or undercounts: the pseudo-label stage trusts the
confident ones.

``--every K`` keeps only the images in rows 0, K, 2K, ... of the CSV (the
frames a K-spaced diagnosis looked at); with ``--rest``, only the others.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def load(folder: Path) -> dict[str, np.ndarray]:
    """The per-image columns of ``crowdwatch eval --out FOLDER``, in the CSV's (dataset) order."""
    path = folder / "per_image.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run crowdwatch eval with --out {folder})")
    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise SystemExit(f"{path}: no images")
    out = {k: np.array([float(r[k]) for r in rows]) for k in ("true_count", "pred_count", "count_std")}
    out["image"] = np.array([r["image"] for r in rows])
    return out


def summary(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from adapt.selfsup.calibration import fit_scale
    from adapt.training.evaluate import count_errors

    scale = fit_scale(pred, true)
    mae, rmse = count_errors(true, pred)
    return {
        "mae": mae,
        "rmse": rmse,
        "mean_pred": float(pred.mean()),
        "mean_true": float(true.mean()),
        "corr": float(np.corrcoef(pred, true)[0, 1]) if len(true) > 1 else float("nan"),
        "scale": float(scale),
        "mae_rescaled": float(np.abs(pred * scale - true).mean()),
    }


def quartiles(true: np.ndarray, pred: np.ndarray, std: np.ndarray) -> list[dict[str, float]]:
    rel = std / np.maximum(pred, 1e-9)
    order = np.argsort(rel, kind="stable")
    out = []
    for q, idx in enumerate(np.array_split(order, 4)):
        out.append({"quartile": q + 1, "rel_std": float(rel[idx].mean()), "pred_over_true": float(pred[idx].sum() / true[idx].sum()),
                    "mae": float(np.abs(pred[idx] - true[idx]).mean())})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--quartiles", action="store_true")
    p.add_argument("--every", type=int, default=None, help="keep rows 0, K, 2K, ... only")
    p.add_argument("--rest", action="store_true", help="with --every: keep the other rows instead")
    args = p.parse_args()
    print("| eval | MAE | RMSE | mean predicted | mean true | corr(pred, true) | best global scale | MAE after it |")
    print("|---|---|---|---|---|---|---|---|")
    data = {folder: load(folder) for folder in args.folders}
    if args.every:
        for folder, d in data.items():
            picked = (np.arange(len(d["image"])) % args.every == 0) != args.rest
            data[folder] = {k: v[picked] for k, v in d.items()}
    for folder, d in data.items():
        s = summary(d["true_count"], d["pred_count"])
        print(f"| {folder} | {s['mae']:.2f} | {s['rmse']:.2f} | {s['mean_pred']:.1f} | {s['mean_true']:.1f} | {s['corr']:.3f} | {s['scale']:.3f} | {s['mae_rescaled']:.2f} |")
    if args.quartiles:
        print("\n| eval | quartile of count std / count | mean std / count | predicted / true | MAE |")
        print("|---|---|---|---|---|")
        for folder, d in data.items():
            for q in quartiles(d["true_count"], d["pred_count"], d["count_std"]):
                print(f"| {folder} | {q['quartile']} | {q['rel_std']:.4f} | {q['pred_over_true']:.3f} | {q['mae']:.1f} |")


if __name__ == "__main__":
    main()
