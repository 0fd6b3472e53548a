"""How far do synthetic-only (L_s) steps move the source model's count calibration?

    python -m research.source_drift [--base PATH] [--synthetic DIR] [--synth-crop PX] [--synth-batch N] [--seeds 0,1,2]
        [--variant NAME:[synth_batch=N,]flip.FIELD=VALUE,...] ... [--val DIR] [--real DIR] [--real-limit N]
        [--out runs/source-drift]

Every adaptation step also trains on labelled renders (L_s), so every real-
target result carries whatever those steps alone do to the counts. This runs
the flip stage with its flip loss off (λ = 0: L_s only) from the parent, once
per variant and seed, and measures each result's mean count and MAE on the
synthetic validation renders and on a labelled real set. A variant whose
results scatter across seeds, or sit away from the parent, moves the
calibration by itself; a real-target gain smaller than that scatter is not
evidence of adaptation. Each set also gets the mean count std across the
Masksembles masks, which the gate requires to drop: what the synthetic steps
alone do to it is the baseline for the real frames' effect. Prints a
markdown table; ``rows.json`` keeps each run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(model_path: Path, dataset: Path, fmt: str, limit: int | None, max_side: int, device: str) -> dict:
    from adapt.training.evaluate import evaluate_dataset

    s = evaluate_dataset(model_path, dataset, fmt, None, limit, max_side, device)
    return {"mae": s.mae, "rmse": s.rmse, "n": s.n, "mean_count": s.mean_pred, "true_mean": s.mean_true, "std": s.mean_uncertainty}


def parse_variant(spec: str) -> tuple[str, list[str], int | None]:
    """``ema:synth_batch=16,flip.ema_decay=0.99`` -> ("ema", ["flip.ema_decay=0.99"], 16); no synth_batch: None."""
    name, _, sets = spec.partition(":")
    if not name:
        raise SystemExit(f"--variant {spec!r}: expected NAME[:[synth_batch=N,]flip.FIELD=VALUE,...]")
    items, batch = [], None
    for item in (s for s in sets.split(",") if s):
        key, _, value = item.partition("=")
        if key != "synth_batch":
            items.append(item)
        elif value.isdigit() and int(value) > 0:
            batch = int(value)
        else:
            raise SystemExit(f"--variant {spec!r}: synth_batch takes a positive whole number")
    return name, items, batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=None, help="parent checkpoint (default: the shipped base model)")
    p.add_argument("--synthetic", type=Path, default=None, help="labelled renders L_s trains on (default: adapt's var/synth-source)")
    p.add_argument("--synth-crop", type=int, default=None)
    p.add_argument("--synth-batch", type=int, default=None, help="renders per L_s step (default: AdaptConfig.synth_batch)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME[:[synth_batch=N,]flip.FIELD=VALUE,...]",
                   help="settings to test: the L_s batch and flip-stage fields (repeatable; λ is forced to 0); default: the adaptation's own")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--val", type=Path, default=Path("data/synth-val"), help="labelled renders (shanghaitech format)")
    p.add_argument("--real", type=Path, default=None, help="labelled real set (shanghaitech format), e.g. ShanghaiTech B train_data")
    p.add_argument("--real-limit", type=int, default=None)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("runs/source-drift"))
    args = p.parse_args()

    from adapt.model.checkpoint import load_checkpoint, save_checkpoint
    from adapt.selfsup.adaptation import AdaptConfig, ensure_synthetic, synthetic_batches
    from adapt.store.registry import default_base_checkpoint
    from adapt.training.engine import seed_everything, select_device
    from research.adaptation import parse_overrides
    from research.stages import ResearchFlipConfig, research_config, run_flip_stage

    base = args.base or default_base_checkpoint()
    defaults = AdaptConfig(camera="bench")
    synthetic = ensure_synthetic(args.synthetic or defaults.synthetic, defaults.synthetic_n, defaults.seed)
    crop = args.synth_crop or defaults.synth_crop
    batch = args.synth_batch or defaults.synth_batch
    device = select_device(args.device)
    variants = [parse_variant(v) for v in args.variant] or [("default", [], None)]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    def evaluate(path: Path) -> dict:
        out = {"val": measure(path, args.val, "shanghaitech", None, args.max_side, args.device)}
        if args.real is not None:
            out["real"] = measure(path, args.real, "shanghaitech", args.real_limit, args.max_side, args.device)
        return out

    rows = [{"variant": "parent", "seed": None, "sets": [], **evaluate(base)}]
    print(json.dumps(rows[-1]), flush=True)
    for name, sets, variant_batch in variants:
        flip = research_config(defaults.flip, ResearchFlipConfig, **parse_overrides(sets)["flip"], lam=0.0)
        for seed in seeds:
            seed_everything(seed)
            model = load_checkpoint(base).build(device)
            t0 = time.time()
            run_batch = variant_batch or batch
            synth = synthetic_batches(synthetic, run_batch, crop, seed)
            stats = run_flip_stage(model, synth, iter(()), flip, device)
            path = args.out / f"{name}-seed{seed}.pt"
            save_checkpoint(path, model, {"version": f"source-drift-{name}-seed{seed}", "flip": sets})
            rows.append({"variant": name, "seed": seed, "sets": sets, "synth_batch": run_batch, "train_s": round(time.time() - t0), "final_loss_s": stats["final_loss_s"], **evaluate(path)})
            print(json.dumps(rows[-1]), flush=True)
            (args.out / "rows.json").write_text(json.dumps(rows, indent=2))

    parent = rows[0]
    sets_ = ["val"] + (["real"] if args.real is not None else [])
    print(f"\n# parent {base}, L_s on {synthetic} ({batch} {crop}-px crops a step unless a variant says), seeds {seeds}, device {device}")
    head = " | ".join(f"{s} mean count | {s} MAE | {s} count std" for s in sets_)
    print(f"| variant | renders a step | seed | {head} |")
    print("|---|---|---|" + "---|---|---|" * len(sets_))
    for r in rows:
        cells = " | ".join(f"{r[s]['mean_count']:.1f} | {r[s]['mae']:.2f} | {r[s]['std']:.3f}" for s in sets_)
        print(f"| {r['variant']} {' '.join(r['sets'])} | {r.get('synth_batch', '-')} | {'-' if r['seed'] is None else r['seed']} | {cells} |")
    print("\nparent: " + ", ".join(f"{s} true mean {parent[s]['true_mean']:.1f}" for s in sets_))
    for name, _, _ in variants:
        runs = [r for r in rows if r["variant"] == name]
        summary = ", ".join(
            f"{s} mean count {np.mean([r[s]['mean_count'] for r in runs]):.1f} (range {min(r[s]['mean_count'] for r in runs):.1f}-{max(r[s]['mean_count'] for r in runs):.1f}),"
            f" MAE {np.mean([r[s]['mae'] for r in runs]):.2f} (range {min(r[s]['mae'] for r in runs):.2f}-{max(r[s]['mae'] for r in runs):.2f})"
            for s in sets_
        )
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
