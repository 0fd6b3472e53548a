"""The ``crowdwatch`` entry point: one thin dispatcher over per-command modules.

Each command of the learning side lives in ``adapt/commands/`` and exposes
``main(argv: list[str] | None) -> int``. Modules are imported lazily so that
``crowdwatch --help`` and the online stages do not pay for torch.
"""

from __future__ import annotations

import importlib
import sys

from streamer.pdeath import watch_parent

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamer.supervisor", "everything on one machine, supervised"),
    "ingest": ("streamer.ingest", "decode one camera and publish its frames"),
    "infer": ("streamer.infer", "density inference stage with metrics"),
    "web": ("streamer.web", "live overlay and JSON API"),
    "synth": ("adapt.commands.synth", "render a labelled synthetic crowd dataset"),
    "train": ("adapt.commands.train", "train the density network on labelled data"),
    "eval": ("adapt.commands.eval", "MAE and RMSE on a labelled dataset"),
    "export": ("adapt.commands.export", "write the ONNX model"),
    "adapt": ("adapt.commands.adapt", "self-supervised adaptation of one camera's model"),
    "models": ("adapt.commands.models", "list or roll back per-camera model versions"),
    "label": ("adapt.commands.label", "click the heads on a few frames of a camera, for the gate"),
    "calibrate": ("adapt.commands.calibrate", "fit a camera's count scale on its labelled frames"),
    "config": ("crowdwatch.commands.config", "check a config file, or print its JSON Schema"),
    "deploy": ("crowdwatch.commands.deploy", "generate the Kubernetes manifests of a config file"),
    "keys": ("crowdwatch.commands.keys", "create the CURVE keys that tcp:// endpoints need"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: crowdwatch [--version] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'crowdwatch COMMAND --help' for a command's options."]
    return "\n".join(lines)


def version() -> str:
    """The installed distribution's version ("unknown" when run from a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("crowdwatch")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"crowdwatch {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"crowdwatch: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("adapt.", "crowdwatch.", "streamer.")):
            print(f"crowdwatch: command {name!r} is not available in this build ({exc.name} missing)", file=sys.stderr)
            return 2
        raise
    watch_parent()  # a stage of crowdwatch run ends with it, even one stuck in a library call
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
