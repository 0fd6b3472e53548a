"""Where does the count go during one pseudo-label round? A step-by-step trace.

    python -m research.pseudo_round_trace --frames DIR --model CKPT [--set pseudo.FIELD=VALUE ...]
        [--probe 12] [--every 25] [--synthetic DIR] [--max-side PX] [--json OUT]

Makes the round-start pseudo labels exactly as the stage does, then fine-tunes
one round and, every N steps, predicts a fixed set of probe frames (whole
frames, eval mode, all masks) and splits their count by cell kind:

- kept occupied: cells the loss trains towards their label;
- unkept occupied: cells with a positive label the loss leaves free;
- empty: label 0 (kept or not).

It also reports the round's own loss on the probe frames' kept cells, and
sums each probe frame's per-mask outputs in eval mode against the same masks
in training mode (``forward_train``, what the loss sees): they should agree
when BatchNorm is frozen. The trace follows the live weights; with
``ema_decay`` > 0 the round ends on their average instead, so pass
``--set pseudo.ema_decay=0`` to trace what the round would keep.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from adapt.model.checkpoint import load_checkpoint
from adapt.model.network import training_mode
from adapt.selfsup.adaptation import AdaptConfig, collect_frames, split_holdout, synthetic_batches
from adapt.selfsup.pseudo_label import PseudoLabelled, load_padded, predict_frames
from adapt.training.engine import loop_forever
from research.adaptation import parse_overrides
from research.stages import ResearchPseudoConfig, finetune_round


@torch.inference_mode()
def probe(model, images: list[torch.Tensor], labels: list[np.ndarray], keeps: list[np.ndarray], freeze_bn: bool) -> dict:
    """Eval-mode counts of the probe frames by cell kind, and the train-mode/eval-mode per-mask gap."""
    model.eval()
    sums = {"kept_occupied": 0.0, "unkept_occupied": 0.0, "empty": 0.0}
    eval_masks, train_masks, loss = 0.0, 0.0, 0.0
    scale = model.config.density_scale
    m = model.config.masks
    for image, label, keep in zip(images, labels, keeps):
        per_mask = model.ensemble(image)[:, 0, 0].cpu().numpy()
        density = per_mask.mean(0)
        occupied = label > 0
        sums["kept_occupied"] += float(density[keep & occupied].sum())
        sums["unkept_occupied"] += float(density[~keep & occupied].sum())
        sums["empty"] += float(density[~occupied].sum())
        eval_masks += float(per_mask.sum())
        # the round's own objective, every mask against the label on the kept cells
        loss += float((((per_mask - label) * scale) ** 2 * keep).sum() / max(keep.sum() * m, 1))
        training_mode(model, freeze_bn)
        train_masks += float(model.forward_train(image.repeat(m, 1, 1, 1)).sum())
        model.eval()
    n = len(images)
    out = {k: v / n for k, v in sums.items()}
    out["total"] = sum(out.values())
    out["probe_loss_pseudo"] = loss / n
    out["eval_vs_train_per_mask"] = eval_masks / max(train_masks, 1e-9)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="parent checkpoint of the round")
    p.add_argument("--synthetic", type=Path, default=Path("var/synth-source"))
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--max-frames", type=int, default=400)
    p.add_argument("--holdout-every", type=int, default=5)
    p.add_argument("--probe", type=int, default=12, help="probe frames, spread over the training frames")
    p.add_argument("--every", type=int, default=25, help="probe every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="pseudo.FIELD=VALUE")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    cfg = ResearchPseudoConfig(**{"max_side": args.max_side, **parse_overrides(args.set)["pseudo"]})
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    model = load_checkpoint(args.model).build().to(device)

    train_paths, _ = split_holdout(collect_frames(AdaptConfig(camera="trace", frames=args.frames, max_frames=args.max_frames)), args.holdout_every)
    labels = predict_frames(model, train_paths, device, cfg)
    pick = np.linspace(0, len(labels.paths) - 1, args.probe).round().astype(int)
    images = [torch.from_numpy(load_padded(labels.paths[i], cfg.max_side)[0])[None] for i in pick]
    label_maps = [labels.mean[i] for i in pick]
    keeps = [labels.keep[i] for i in pick]
    occupied = [lab > 0 for lab in label_maps]
    start = {
        "kept_occupied": float(np.mean([lab[k & o].sum() for lab, k, o in zip(label_maps, keeps, occupied)])),
        "unkept_occupied": float(np.mean([lab[~k & o].sum() for lab, k, o in zip(label_maps, keeps, occupied)])),
    }
    print(f"# {len(labels.paths)} frames, mean count {labels.mean_count():.2f}, kept {labels.kept_fraction():.3f}; "
          f"probe labels: kept occupied {start['kept_occupied']:.2f}, unkept occupied {start['unkept_occupied']:.2f}", flush=True)

    synth = synthetic_batches(args.synthetic, AdaptConfig.synth_batch, AdaptConfig.synth_crop, args.seed)
    real = loop_forever(torch.utils.data.DataLoader(PseudoLabelled(labels, cfg.crop, cfg.max_side, seed=args.seed),
                                                    batch_size=cfg.real_batch, shuffle=True, drop_last=True))
    trace = [{"step": 0, **probe(model, images, label_maps, keeps, cfg.freeze_bn)}]
    window: list[dict] = []

    def on_step(step: int, losses: dict) -> None:
        window.append(losses)
        if (step + 1) % args.every == 0 or step + 1 == cfg.steps_per_round:
            row = {"step": step + 1, **probe(model, images, label_maps, keeps, cfg.freeze_bn),
                   **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            window.clear()
            training_mode(model, cfg.freeze_bn)  # probe() left it in eval mode
            trace.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in trace[0].items()}), flush=True)
    finetune_round(model, synth, real, cfg, device, on_step=on_step)
    if args.json:
        args.json.write_text(json.dumps({"config": vars(cfg), "labels": start, "trace": trace}, indent=2, default=str))


if __name__ == "__main__":
    main()
