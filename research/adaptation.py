"""Does self-supervised adaptation help? NoAdapt / flip only / pseudo-labels only / both.

    python -m research.adaptation --frames DIR --labels DIR [--format shanghaitech] [--base PATH]
        [--rows noadapt,flip,pseudo,both] [--flip-steps N] [--rounds K] [--steps-per-round N]
        [--set STAGE.FIELD=VALUE ...]
        [--max-frames N] [--max-side PX] [--synthetic DIR] [--synth-crop PX] [--synth-batch N] [--seed N] [--out runs/bench-adapt]

The frames are the unlabeled target buffer; the labels of the same images are
used only to measure each row afterwards (MAE, RMSE, and the rank correlation
between per-image uncertainty and absolute error). Every row starts from the
same parent and seed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

ROWS = {"noadapt": (), "flip": ("flip",), "pseudo": ("pseudo",), "both": ("flip", "pseudo")}
NAMES = {"noadapt": "NoAdapt", "flip": "flip only", "pseudo": "pseudo-labels only", "both": "flip + pseudo-labels"}
ADAPTED = {key: name for key, name in NAMES.items() if ROWS[key]}  # rows that save <key>.pt and <key>.json


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``flip.head_rows=4`` -> {"flip": {"head_rows": 4}}, typed by the config dataclass."""
    from dataclasses import fields

    from adapt.selfsup.gate import GateConfig
    from research.stages import ResearchFlipConfig, ResearchPseudoConfig

    classes = {"flip": ResearchFlipConfig, "pseudo": ResearchPseudoConfig, "gate": GateConfig}
    out: dict[str, dict] = {k: {} for k in classes}
    for item in items:
        key, _, value = item.partition("=")
        stage, _, name = key.partition(".")
        types = {f.name: f.type for f in fields(classes[stage])} if stage in classes else {}
        if name not in types or not value:
            raise SystemExit(f"--set {item!r}: expected STAGE.FIELD=VALUE with STAGE in {sorted(classes)} and a field of its config")
        spelled = types[name] if isinstance(types[name], str) else types[name].__name__
        kind = spelled.split("|")[0].strip()
        if "None" in spelled and value.lower() == "none":
            out[stage][name] = None
            continue
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--set {item!r}: {name} takes true or false")
            out[stage][name] = value.lower() == "true"
        else:
            out[stage][name] = {"int": int, "float": float}.get(kind, str)(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--format", default="shanghaitech")
    p.add_argument("--base", type=Path, default=None)
    p.add_argument("--rows", default="noadapt,flip,pseudo,both")
    p.add_argument("--flip-steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps-per-round", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=400)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--synthetic", type=Path, default=None,
                   help="labelled source renders for L_s (default: adapt's all-style set); a day-only source benchmark must pass day-only renders here")
    p.add_argument("--synth-crop", type=int, default=None, help="side of the synthetic crops L_s trains on (default: AdaptConfig.synth_crop)")
    p.add_argument("--synth-batch", type=int, default=None, help="synthetic crops per L_s step (default: AdaptConfig.synth_batch)")
    p.add_argument("--seed", type=int, default=0, help="AdaptConfig.seed: batch order, crops and augmentation of every stage")
    p.add_argument("--keep-count", action=argparse.BooleanOptionalAction, default=None, help="AdaptConfig.keep_count (default: its default)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-adapt"))
    p.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                   help="override a stage or gate setting, e.g. flip.head_rows=4, pseudo.crop=none, gate.min_count_ratio=0.5 (repeatable)")
    args = p.parse_args()
    overrides = parse_overrides(args.set)

    from adapt.selfsup.adaptation import AdaptConfig, adapt_camera
    from adapt.store.registry import default_base_checkpoint
    from adapt.training.evaluate import evaluate_dataset
    from research.stages import ResearchFlipConfig, ResearchPseudoConfig, install, research_config

    install()  # adapt_camera runs the stage loops that honour the research switches (research/stages.py)

    base = args.base or default_base_checkpoint()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in args.rows.split(","):
        t0 = time.time()
        report = None
        model_path = base
        if ROWS[key]:
            cfg = AdaptConfig(camera="bench", frames=args.frames, base=base, stages=ROWS[key], publish=False, device=args.device, seed=args.seed,
                              max_frames=args.max_frames, max_side=args.max_side, save_candidate=args.out / f"{key}.pt",
                              registry_root=args.out / "models", buffer_root=args.out / "buffer")
            if args.keep_count is not None:
                cfg.keep_count = args.keep_count
            if args.synthetic is not None:
                cfg.synthetic = args.synthetic
            if args.synth_crop is not None:
                cfg.synth_crop = args.synth_crop
            if args.synth_batch is not None:
                cfg.synth_batch = args.synth_batch
            if args.flip_steps is not None:
                cfg.flip = replace(cfg.flip, steps=args.flip_steps)
            pl = {k: v for k, v in {"rounds": args.rounds, "steps_per_round": args.steps_per_round}.items() if v is not None}
            cfg.pseudo = replace(cfg.pseudo, max_side=args.max_side, **pl)
            cfg.flip = research_config(cfg.flip, ResearchFlipConfig, **overrides["flip"])
            cfg.pseudo = research_config(cfg.pseudo, ResearchPseudoConfig, **overrides["pseudo"])
            cfg.gate = replace(cfg.gate, **overrides["gate"])
            report = adapt_camera(cfg)
            (args.out / f"{key}.json").write_text(json.dumps(report, indent=2, default=str))
            model_path = cfg.save_candidate
        adapt_s = time.time() - t0
        s = evaluate_dataset(model_path, args.labels, args.format, args.out / f"eval-{key}", None, args.max_side, args.device)
        rows.append({
            "row": NAMES[key], "mae": s.mae, "rmse": s.rmse, "spearman": s.uncertainty_error_spearman, "mean_std": s.mean_uncertainty,
            "rounds": len(report["pseudo_label_rounds"]) if report and "pseudo_label_rounds" in report else 0,
            "flip_acc": report["candidate_stats"]["flip_accuracy"] if report else None,
            "verdict": report["validation"]["verdict"] if report else "-",
            "adapt_s": round(adapt_s), "device": report["device"] if report else "-",
        })
        (args.out / "rows.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n# frames {args.frames}, labels {args.labels} ({args.format}), parent {base}, synthetic {args.synthetic or 'default'}")
    print("| row | MAE | RMSE | rank corr(std, abs err) | mean count std | PL rounds | held-out flip acc | gate | adapt wall time | device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fa = "-" if r["flip_acc"] is None else f"{r['flip_acc']:.2f}"
        print(f"| {r['row']} | {r['mae']:.2f} | {r['rmse']:.2f} | {r['spearman']:.2f} | {r['mean_std']:.2f} | {r['rounds']} | {fa} | {r['verdict']} | {r['adapt_s']} s | {r['device']} |")


if __name__ == "__main__":
    main()
