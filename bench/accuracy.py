"""Counting accuracy against peers on the same frames: our model, OpenCV's HOG people detector, constants.

    python bench/accuracy.py --dataset PATH:FORMAT [--dataset PATH:FORMAT ...] [--model model.pt]
        [--methods model,hog,mean,median] [--limit N] [--max-side 1024] [--hog-max-side N]
        [--hog-nms IOU] [--hog-grey] [--out DIR]

FORMAT is what ``crowdwatch eval --format`` accepts (``json``, ``shanghaitech``,
...). For every labelled frame of every dataset:

- ``model``: our density network (default: the shipped base model, resolved
  through ``models/base/current``), run by ``adapt.training.evaluate.run_eval`` on the
  frames ``crowdwatch eval`` would see (longer side at most ``--max-side``,
  1024 as in eval), so its MAE equals ``crowdwatch eval``'s;
- ``hog``: OpenCV's default HOG people detector on the BGR frame as decoded
  (``bench/peers.py`` documents the parameters and the merging of overlapping
  windows), optionally downscaled to ``--hog-max-side``;
- ``mean`` / ``median``: the mean / median true count of the scored frames
  for every frame. Oracles: they use the labels they are scored against.

Constants are scored on the frames every image method that ran could read.
Unreadable frames and unusable label files are counted as skips, never a crash.
Writes ``DIR/accuracy.json`` (summaries and per-image counts) and prints a
markdown table per dataset. Wall time per method includes decoding the
frames; "device" is where the method ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings, as the other bench scripts do
from peers import HogParams, constant_prediction, cpu_name, hog_count, people_detector, score  # noqa: E402

from adapt.data.datasets import FORMATS, read_dataset  # noqa: E402
from adapt.data.images import BadImage, DatasetError, load_image  # noqa: E402
from adapt.model.checkpoint import CheckpointError, load_model  # noqa: E402

METHODS = ("model", "hog", "mean", "median")


def parse_dataset(spec: str) -> tuple[Path, str]:
    path, sep, fmt = spec.rpartition(":")
    if not sep or not path or fmt not in FORMATS:
        raise argparse.ArgumentTypeError(f"--dataset wants PATH:FORMAT with FORMAT one of {FORMATS}, found {spec!r}")
    return Path(path), fmt


def run_model(model, device, items, max_side: int | None) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """name -> (true, predicted) from the project's evaluation loop, and reasons for unreadable frames."""
    import torch

    from adapt.data.crowd_dataset import CrowdDataset
    from adapt.training.evaluate import run_eval

    unreadable: list[str] = []
    try:
        dataset = CrowdDataset(items, None, max_side=max_side)
        with torch.inference_mode():  # no autograd bookkeeping; the counts are the same as crowdwatch eval's
            results, _ = run_eval(model, dataset, device, None, unreadable)
    except DatasetError as e:  # no item at all, or every image unreadable
        return {}, unreadable + [str(e)] * max(1, len(items) - len(unreadable))
    return {r.image: (r.true_count, r.pred_count) for r in results}, unreadable


def run_hog(items, params: HogParams) -> tuple[dict[str, tuple[float, float]], list[str]]:
    detector = people_detector()
    out: dict[str, tuple[float, float]] = {}
    unreadable: list[str] = []
    for ann in items:
        try:
            bgr = cv2.cvtColor(load_image(ann.image_path), cv2.COLOR_RGB2BGR)  # back to the order cv2 decoded
            out[Path(ann.image_path).name] = (float(ann.count), float(hog_count(bgr, params, detector)))
        except BadImage as e:
            unreadable.append(e.reason)
        except cv2.error as e:
            unreadable.append(f"HOG failed: {str(e).strip().splitlines()[-1]}")
    return out, unreadable


def model_device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({cpu_name()}, {torch.get_num_threads()} torch threads)"


def bench_dataset(root: Path, fmt: str, methods: list[str], args, model, device) -> dict:
    index = read_dataset(root, fmt, limit=args.limit)
    entry: dict = {
        "dataset": str(root), "format": fmt, "frames_indexed": len(index.items),
        "label_skips": [f"{p.name}: {why}" for p, why in index.skipped], "methods": {},
    }
    per_method: dict[str, dict[str, tuple[float, float]]] = {}
    hog_params = HogParams(max_side=args.hog_max_side, nms_iou=args.hog_nms, grey=args.hog_grey)
    for m in methods:
        if m not in ("model", "hog"):
            continue
        t0 = time.perf_counter()
        if m == "model":
            got, bad = run_model(model, device, index.items, args.max_side)
            dev = model_device_name(device)
            extra = {"checkpoint": str(args.model), "max_side": args.max_side}
        else:
            got, bad = run_hog(index.items, hog_params)
            dev = f"cpu ({cpu_name()}, OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads)"
            extra = {"params": hog_params.describe()}
        wall = time.perf_counter() - t0
        per_method[m] = got
        t = np.array([v[0] for v in got.values()])
        p = np.array([v[1] for v in got.values()])
        entry["methods"][m] = {**score(t, p), "wall_s": wall, "device": dev, "unreadable": len(bad), "unreadable_reasons": sorted(set(bad)), **extra}
        print(f"{root} [{m}]: n={len(got)} MAE {entry['methods'][m]['mae']:.2f} in {wall:.1f} s", file=sys.stderr)

    # constants: on the frames every image method read; with none run, on every indexed frame
    if per_method:
        names = set.intersection(*(set(d) for d in per_method.values()))
        any_d = next(iter(per_method.values()))
        truth = {n: any_d[n][0] for n in names}
    else:
        truth = {Path(a.image_path).name: float(a.count) for a in index.items}
    order = [Path(a.image_path).name for a in index.items if Path(a.image_path).name in truth]
    t = np.array([truth[n] for n in order], dtype=np.float64)
    for m in methods:
        if m in ("mean", "median"):
            t0 = time.perf_counter()
            p = constant_prediction(t, m)
            entry["methods"][m] = {**score(t, p), "wall_s": time.perf_counter() - t0, "device": f"cpu ({cpu_name()})",
                                   "unreadable": len(index.items) - len(t), "oracle": True, "constant": float(p[0]) if p.size else None}
            per_method[m] = {n: (truth[n], float(v)) for n, v in zip(order, p)}
    entry["per_image"] = [
        {"image": Path(a.image_path).name, "true": float(a.count),
         **{m: per_method[m][Path(a.image_path).name][1] for m in per_method if Path(a.image_path).name in per_method[m]}}
        for a in index.items
    ]
    return entry


LABELS = {"model": "our model", "hog": "OpenCV HOG", "mean": "mean of true counts (oracle)", "median": "median of true counts (oracle)"}


def markdown(entry: dict) -> str:
    lines = [f"### {entry['dataset']} ({entry['format']}, {entry['frames_indexed']} labelled frames, {len(entry['label_skips'])} label files skipped)", "",
             '| method | MAE | RMSE (papers: "MSE") | mean count / true | frames | unreadable | wall time | device |',
             "|---|---|---|---|---|---|---|---|"]
    for m, s in entry["methods"].items():
        lines.append(f"| {LABELS[m]} | {s['mae']:.2f} | {s['rmse']:.2f} | {s['mean_pred']:.2f} / {s['mean_true']:.2f} | {s['n']} | "
                     f"{s['unreadable']} | {s['wall_s']:.1f} s | {s['device']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=parse_dataset, action="append", required=True, metavar="PATH:FORMAT")
    p.add_argument("--model", type=Path, default=None, help="model.pt; default: the shipped base model (models/base/current)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--limit", type=int, default=None, help="only the first N labelled frames of each dataset")
    p.add_argument("--max-side", type=int, default=1024, help="our model: downscale so the longer side fits (as crowdwatch eval)")
    p.add_argument("--hog-max-side", type=int, default=None, help="HOG: downscale so the longer side fits (default: frames as they are)")
    p.add_argument("--hog-nms", type=float, default=None, metavar="IOU",
                   help="HOG: merge raw windows by greedy NMS at this IoU instead of OpenCV's grouping (groupThreshold=2)")
    p.add_argument("--hog-grey", action="store_true", help="HOG: detect on the grey frame")
    p.add_argument("--device", default="auto", help="torch device for our model")
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        p.error(f"--methods must be a subset of {METHODS}, found {args.methods!r}")

    model = device = None
    if "model" in methods:
        from adapt.store.registry import RegistryError, default_base_checkpoint
        from adapt.train import select_device

        try:
            args.model = args.model or default_base_checkpoint()
            device = select_device(args.device)
            model, _ = load_model(args.model, device)
        except (CheckpointError, RegistryError) as e:
            print(f"bench/accuracy.py: {e}", file=sys.stderr)
            return 1

    report = {"command": " ".join(["python", "bench/accuracy.py", *(sys.argv[1:] if argv is None else argv)]),
              "methods": methods, "datasets": []}
    for root, fmt in args.dataset:
        try:
            entry = bench_dataset(root, fmt, methods, args, model, device)
        except DatasetError as e:
            print(f"bench/accuracy.py: {e}", file=sys.stderr)
            return 1
        report["datasets"].append(entry)
        print(markdown(entry) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'accuracy.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
