"""Counting accuracy on a labelled dataset (``crowdwatch eval``).

Reports MAE and RMSE of the per-image count. Crowd-counting papers call the
RMSE "MSE"; we name it for what it is. Also writes a per-image CSV, a
predicted-vs-true scatter plot and density visualisations.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from adapt.model.checkpoint import load_model
from adapt.model.network import ensemble_mean_std
from adapt.training.progress import progress


@dataclass
class ImageResult:
    image: str
    true_count: float
    pred_count: float
    abs_error: float
    count_std: float          # std of the count across the Masksembles masks
    mean_cell_std: float      # mean per-cell uncertainty


@dataclass
class EvalSummary:
    mae: float
    rmse: float
    n: int
    mean_uncertainty: float   # mean over images of the count std across masks
    # Spearman rank correlation between per-image count std and absolute error:
    # how well the ensemble knows when it is wrong (1 = perfect ranking)
    uncertainty_error_spearman: float
    skipped: int
    model: str
    dataset: str
    # the means say which way a model is off: MAE alone hides a global over- or undercount
    mean_true: float = float("nan")
    mean_pred: float = float("nan")


def count_errors(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(MAE, RMSE) of counts."""
    e = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if e.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(e).mean()), float(np.sqrt((e**2).mean()))


def run_eval(model, dataset, device, limit: int | None = None, unreadable: list[str] | None = None) -> tuple[list[ImageResult], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-image results, plus (image, predicted density, true density) for visualisation.

    Reasons for unreadable images are appended to ``unreadable``.
    """
    unreadable = [] if unreadable is None else unreadable
    from adapt.data.crowd_dataset import collate, readable_batches
    from adapt.training.engine import predict_counts

    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=1, collate_fn=collate)
    results, views = [], []
    for batch in progress(readable_batches(loader, unreadable), "eval", total=len(dataset)):
        image = batch["image"].to(device)
        count, count_std, per_mask = predict_counts(model, image)
        idx = int(batch["index"][0]) if "index" in batch else len(results)
        name = Path(dataset.items[idx].image_path).name
        mean_map, cell_std = (t[0, 0].cpu().numpy() for t in ensemble_mean_std(per_mask))
        true = float(batch["count"][0])
        results.append(ImageResult(name, true, float(count[0]), abs(float(count[0]) - true), float(count_std[0]), float(cell_std.mean())))
        views.append((batch["image"][0].numpy(), mean_map, batch["density"][0, 0].numpy()))
        if limit and len(results) >= limit:
            break
    return results, views


def rank_correlation(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def write_csv(results: list[ImageResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(results[0]).keys()) if results else ["image"])
        w.writeheader()
        for r in results:
            w.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(r).items()})


def plot_scatter(results: list[ImageResult], summary: EvalSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r.true_count for r in results])
    p = np.array([r.pred_count for r in results])
    s = np.array([r.count_std for r in results])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.errorbar(t, p, yerr=s, fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
    hi = max(t.max(initial=1), p.max(initial=1)) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="true count", ylabel="predicted count (±1 std across masks)")
    ax.set_title(f"{summary.dataset}\nMAE {summary.mae:.2f}  RMSE {summary.rmse:.2f}  n={summary.n}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_density_views(views, results: list[ImageResult], out_dir: Path, k: int = 6) -> None:
    """The k worst and the first images: frame, true density, predicted density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    worst = sorted(range(len(results)), key=lambda i: -results[i].abs_error)[:k]
    for i in dict.fromkeys(list(range(min(2, len(results)))) + worst):
        image, pred, true = views[i]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=90)
        axes[0].imshow(image)
        axes[0].set_title(results[i].image, fontsize=8)
        vmax = max(float(true.max()), float(pred.max()), 1e-6)
        axes[1].imshow(true, cmap="jet", vmin=0, vmax=vmax)
        axes[1].set_title(f"true {results[i].true_count:.1f}", fontsize=8)
        axes[2].imshow(pred, cmap="jet", vmin=0, vmax=vmax)
        axes[2].set_title(f"pred {results[i].pred_count:.1f} ± {results[i].count_std:.1f}", fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / f"{Path(results[i].image).stem}.png")
        plt.close(fig)


def evaluate_dataset(model_path: Path, dataset_dir: Path, fmt: str, out_dir: Path | None, limit: int | None, max_side: int | None, device_name: str = "auto") -> EvalSummary:
    from adapt.data.crowd_dataset import CrowdDataset
    from adapt.data.datasets import read_dataset
    from adapt.training.engine import select_device

    device = select_device(device_name)
    model, _ = load_model(model_path, device)
    index = read_dataset(dataset_dir, fmt, limit=limit)
    dataset = CrowdDataset(index.items, None, max_side=max_side)
    unreadable: list[str] = []
    results, views = run_eval(model, dataset, device, limit, unreadable)
    mae, rmse = count_errors(np.array([r.true_count for r in results]), np.array([r.pred_count for r in results]))
    summary = EvalSummary(
        mae=mae, rmse=rmse, n=len(results),
        mean_uncertainty=float(np.mean([r.count_std for r in results])) if results else float("nan"),
        uncertainty_error_spearman=rank_correlation([r.count_std for r in results], [r.abs_error for r in results]),
        skipped=len(index.skipped) + len(unreadable), model=str(model_path), dataset=str(dataset_dir),
        mean_true=float(np.mean([r.true_count for r in results])) if results else float("nan"),
        mean_pred=float(np.mean([r.pred_count for r in results])) if results else float("nan"),
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(results, out_dir / "per_image.csv")
        if results:
            plot_scatter(results, summary, out_dir / "scatter.png")
            save_density_views(views, results, out_dir / "density")
    return summary
