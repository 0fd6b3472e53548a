"""``crowdwatch adapt``: self-supervised adaptation of one camera's model (adapt/selfsup/adaptation.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from adapt.model.checkpoint import CheckpointError
from adapt.selfsup.adaptation import AdaptConfig, AdaptError, TooFewFrames, adapt_camera
from adapt.selfsup.flip_stage import FlipStageConfig
from adapt.selfsup.gate import GateConfig
from adapt.selfsup.pseudo_label import RULES, PseudoLabelConfig
from adapt.selfsup.settings import adaptation_config
from adapt.store.names import InvalidCameraName, validate_camera_name
from adapt.store.registry import RegistryError
from crowdwatch import logs
from crowdwatch.config import CAMERA_NAME_RE, CONFIG_HELP, Config, ConfigError, load_command_config
from crowdwatch.config.units import parse_duration

log = logging.getLogger("crowdwatch.adapt")


def record(args, config: Config | None, result: str, detail: str) -> None:
    """With --record: the run into runs.jsonl, and announced to infer on the config's transport."""
    if args.record is None:
        return
    from adapt.store.runs import record_run

    try:
        record_run(args.record, validate_camera_name(args.camera), result, reason="command", detail=detail, config=config)
    except (InvalidCameraName, OSError) as exc:
        print(f"crowdwatch adapt: could not record the run: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch adapt", description="Adapt one camera's model to its own frames, without labels.")
    p.add_argument("--config", type=Path, default=None, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--camera", required=True, help="a camera of the config: its [cameras.X.adapt] and [cameras.X.buffer] settings apply")
    p.add_argument("--frames", type=Path, help="folder of images or a video file (default: the camera's buffer); "
                   "a camera the config does not name runs once on [defaults]")
    p.add_argument("--base", type=Path, help="parent checkpoint (default: the camera's current model, else base)")
    p.add_argument("--json", type=Path, help="write the report (stages, per-round statistics, verdict) here")
    p.add_argument("--stages", default="flip,pseudo", help="comma list from: flip, pseudo")
    p.add_argument("--synthetic", type=Path, default=None, help="labelled synthetic source set for L_s (default: <[paths] var>/synth-source, rendered once)")
    p.add_argument("--labels", type=Path, help="JSON-points frames of this camera: MAE on them decides the gate (default: the camera's adapt.labels)")
    g = GateConfig()
    p.add_argument("--min-count-ratio", type=float, default=None,
                   help=f"gate: the candidate's mean count over the parent's must be at least this (default: the camera's adapt.gate, {g.min_count_ratio})")
    p.add_argument("--max-count-ratio", type=float, default=None,
                   help=f"gate: ... and at most this (default: the camera's adapt.gate, {g.max_count_ratio})")
    p.add_argument("--per-person-uncertainty", action=argparse.BooleanOptionalAction, default=None,
                   help=f"gate: the count std per counted person must drop too (default: the camera's adapt.gate, {'on' if g.per_person_uncertainty else 'off'})")
    p.add_argument("--scene", action=argparse.BooleanOptionalAction, default=None,
                   help="adapt with the camera's scene model: composites on its empty scene, empty static cells, moving people, "
                        f"the empty-scene gate (default: the camera's adapt.scene, {'on' if AdaptConfig.scene else 'off'}; docs/ADAPTATION.md)")
    p.add_argument("--keep-count", action=argparse.BooleanOptionalAction, default=None,
                   help=f"hold the parent's mean count on the training frames (default: the camera's adapt.keep_count, {'on' if AdaptConfig.keep_count else 'off'}; docs/ADAPTATION.md)")
    p.add_argument("--time-budget", type=budget_arg, default=None, metavar="DURATION",
                   help='wall time the run may take, e.g. "25m"; "none": every step (default: the camera\'s adapt.time_budget)')
    p.add_argument("--flip-steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None, help="pseudo-label rounds at most (K)")
    p.add_argument("--steps-per-round", type=int, default=None)
    p.add_argument("--keep-fraction", type=float, default=None, help="pseudo labels: keep this lowest-uncertainty fraction of cells")
    p.add_argument("--pseudo-rule", choices=RULES, default=None, help=f"pseudo labels: how confident cells are chosen (default: {PseudoLabelConfig.rule}; docs/ADAPTATION.md)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-side", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=Path, default=None, help="registry directory (default: [model] registry of the config, else models/)")
    p.add_argument("--buffer", type=Path, default=None, help="adapter buffer root (default: <[paths] var>/buffer of the config, else var/buffer)")
    p.add_argument("--no-publish", action="store_true", help="measure and validate only")
    p.add_argument("--record", type=Path, default=None, metavar="VAR",
                   help="append the run's result to VAR/adapt/CAMERA/runs.jsonl and announce it to infer (crowd_adaptation_runs_total), "
                        "and without --json write the report beside it (what the scheduler and the CronJob do)")
    p.add_argument("--save-candidate", type=Path, default=None, help="also save the candidate checkpoint here, whatever the verdict")
    return p


NO_BUDGET = float("inf")


def budget_arg(text: str) -> float:
    """--time-budget: a duration, or "none" (every step runs)."""
    if text.strip().lower() == "none":
        return NO_BUDGET
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a duration such as "25m" or "none", found {text!r}') from None


def build_config(args: argparse.Namespace, config: Config | None) -> AdaptConfig:
    """The run's AdaptConfig: the camera's settings in ``config`` (adaptation_config), then the flags given."""
    if config is not None and args.camera not in config.cameras and args.frames is None:
        raise AdaptError(f"camera {args.camera!r} is not in {config.source}: add [cameras.{args.camera}], or give --frames for a one-off run")
    pseudo = {"rounds": args.rounds, "steps_per_round": args.steps_per_round, "keep_fraction": args.keep_fraction,
              "rule": args.pseudo_rule, "max_side": args.max_side}
    cfg = adaptation_config(
        config, args.camera,
        frames=args.frames, base=args.base, labels=args.labels, device=args.device, seed=args.seed, publish=not args.no_publish,
        save_candidate=args.save_candidate, stages=tuple(s for s in args.stages.split(",") if s), keep_count=args.keep_count,
        scene=args.scene, min_count_ratio=args.min_count_ratio, max_count_ratio=args.max_count_ratio,
        per_person_uncertainty=args.per_person_uncertainty, max_side=args.max_side, max_frames=args.max_frames,
        registry_root=args.models, buffer_root=args.buffer, synthetic=args.synthetic, time_budget_s=args.time_budget,
        flip=FlipStageConfig() if args.flip_steps is None else replace(FlipStageConfig(), steps=args.flip_steps),
        pseudo=replace(PseudoLabelConfig(), **{k: v for k, v in pseudo.items() if v is not None}),
    )  # fmt: skip
    return replace(cfg, time_budget_s=None) if args.time_budget == NO_BUDGET else cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stderr: stdout is the run's one-line summary. Under `crowdwatch run` the scheduler sets
    # $CROWDWATCH_LOG_FORMAT=json and $CROWDWATCH_LOG_LEVEL and logs these lines again itself.
    with contextlib.suppress(ValueError):
        logs.setup("adapt", camera=args.camera if CAMERA_NAME_RE.fullmatch(args.camera or "") else None, stream=sys.stderr)
    try:
        config = load_command_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"crowdwatch adapt: {exc}", file=sys.stderr)
        record(args, None, "failed", str(exc))
        return 2
    try:
        if args.json is None and args.record is not None:  # the report beside runs.jsonl, as the scheduler writes it
            args.json = args.record / "adapt" / validate_camera_name(args.camera) / f"{int(time.time())}.json"
        cfg = build_config(args, config)
        if config is not None and args.camera not in config.cameras:
            print(f"crowdwatch adapt: {args.camera} is not in {config.source}: a one-off run with its [defaults]", file=sys.stderr)
        report = adapt_camera(cfg)
    except (AdaptError, CheckpointError, RegistryError, InvalidCameraName, ValueError, FloatingPointError) as exc:
        print(f"crowdwatch adapt: {exc}; nothing was published", file=sys.stderr)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"camera": args.camera, "error": str(exc), "published": None}, indent=2))
        skipped = isinstance(exc, TooFewFrames)
        record(args, config, "skipped" if skipped else "failed", str(exc))
        return 4 if skipped else 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    v = report["validation"]
    logs.event(log, "adaptation_verdict", "%s: %s%s; %s", report["camera"], v["verdict"],
               f" ({'; '.join(v['reasons'])})" if v["reasons"] else "",
               f"published {report['published']}" if report["published"] else "nothing published", camera=report["camera"])
    record(args, config, "succeeded" if v["verdict"] == "accept" and (report["published"] or not cfg.publish) else "rejected", "; ".join(v["reasons"]) or (report["published"] or ""))
    cuts = report.get("time_budget", {}).get("cut")
    print(f"{report['camera']}: {v['verdict']}" + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "") + (f"; published {report['published']}" if report["published"] else "; nothing published")
          + (f"; cut short by the time budget: {', '.join(cuts)}" if cuts else ""))
    return 0 if v["verdict"] == "accept" else 3


if __name__ == "__main__":
    sys.exit(main())
