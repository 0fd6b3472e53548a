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


def transport_line(config: Config) -> str:
    """The endpoints' kind and what protects them."""
    t = config.transport
    if not t.uses_tcp:
        return "ipc:// (file permissions)"
    if t.insecure_tcp:
        return "tcp:// WITHOUT CURVE (insecure = true): plaintext, any host that reaches the ports may send frames"
    c = t.curve
    return (f"tcp:// with CURVE: infer admits the client keys in ${c.allowed_clients_env}; keys from ${c.server_public_env}, "
            f"${c.server_secret_env}, ${c.client_public_env}, ${c.client_secret_env}")


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
    print(f"  transport: {transport_line(config)}")
    for warning in config.warnings:  # of this machine: the file may be meant for another
        verb = "refuses" if len(warning.stops) == 1 else "refuse"
        stops = f" ({warning.stops_text()} {verb} to start)" if warning.stops else ""
        print(f"crowdwatch config: warning: {warning}{stops}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
