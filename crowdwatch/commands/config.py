"""``crowdwatch config``: check a configuration file, or print its JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crowdwatch.config import Config, ConfigError, json_schema, load_config


def summary(config: Config) -> list[str]:
    """One line per camera: what an operator checks after an edit."""
    lines = []
    for name, cam in config.cameras.items():
        a = cam.adapt
        if not a.enabled:
            schedule = "adapt off"
        elif a.daily is not None:
            schedule = f"adapt daily {a.daily[0]:02d}:{a.daily[1]:02d}"
        else:
            schedule = f"adapt every {a.interval_s:g}s"
        worker = f", infer worker {config.shard_of(name)}" if config.server.infer_workers > 1 else ""
        lines.append(
            f"{name}: {cam.source_kind} {cam.redacted_url()}, {cam.fps:g} fps, {cam.width}x{cam.height}, "
            f"{len(cam.zones)} zones, {'calibrated' if cam.calibration is not None else 'uncalibrated'}, {schedule}{worker}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch config", description="Check a configuration file or print its schema.")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="the TOML file that check reads (default: config.toml)")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="load and validate a config; one line per camera, a warning per thing this machine lacks "
                           "(exit 2 on an error)")
    # SUPPRESS: `crowdwatch config --config F check` keeps F (a subparser default would replace it)
    check.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="the TOML file (default: config.toml)")
    sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"crowdwatch config: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: {len(config.cameras)} cameras")
    for line in summary(config):
        print(f"  {line}")
    for warning in config.warnings:  # of this machine: the file may be meant for another
        stops = " (crowdwatch run and infer refuse to start)" if warning.serving else ""
        print(f"crowdwatch config: warning: {warning}{stops}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
