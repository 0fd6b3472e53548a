"""``crowdwatch keys generate``: a set of CURVE keys for tcp:// endpoints (docs/DEPLOY.md, Secrets).

    crowdwatch keys generate --dir curve

writes one file per key into the folder (mode 0700, files 0600), each a Z85
string: ``server-public``, ``server-secret``, ``client-public``,
``client-secret`` and ``allowed-clients`` (the allow-list: the client's public
key; one key per line; ``--client NAME`` adds a pair of its own for one more
client). The file names are the
keys of the Kubernetes Secret ``crowdwatch-curve`` that the generated manifests
read (``kubectl create secret generic crowdwatch-curve --from-file=curve/``),
and the command prints which environment variable each stage reads them from:
the names in ``[transport.curve]`` of ``--config``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import zmq

from adapt.store.atomic import atomic_write
from crowdwatch.config import CurveConfig, command_config
from crowdwatch.config.transport import KEY_FILES, ROLE_KEYS

# file (= Secret key) -> the [transport.curve] key naming its environment variable
FILES = {file: field for field, file in KEY_FILES.items()}
CLIENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
SERVER = tuple(KEY_FILES[field] for field in ROLE_KEYS["server"])  # infer
CLIENT = tuple(KEY_FILES[field] for field in ROLE_KEYS["client"])  # ingest, web, adapt


def generate(folder: Path, *, force: bool = False) -> dict[str, bytes]:
    """Write a server pair, a client pair and an allow-list holding the client; returns file name -> content.
    Existing key files are kept (FileExistsError) unless ``force``."""
    there = [name for name in FILES if (folder / name).exists()]
    if there and not force:
        raise FileExistsError(f"{folder} holds keys already ({', '.join(there)}); --force replaces them all")
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = {"server-public": server_public, "server-secret": server_secret, "client-public": client_public,
            "client-secret": client_secret, "allowed-clients": client_public}  # fmt: skip
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, key in keys.items():
        _write(folder / name, key)
    return keys


def _write(path: Path, content: bytes) -> None:
    # mode 0600 (a temp file renamed over the old one: a crash never leaves half an allow-list);
    # no newline: Secret keys and environment values take the file as it is
    atomic_write(path, content)


def add_client(folder: Path, name: str, *, force: bool = False) -> bytes:
    """A key pair of its own for one more client (``client-NAME-public``, ``client-NAME-secret``), its public
    key added to ``allowed-clients``; returns the public key."""
    if not CLIENT_NAME_RE.fullmatch(name):
        raise ValueError(f"a client name must match {CLIENT_NAME_RE.pattern}, found {name!r}")
    files = [folder / f"client-{name}-public", folder / f"client-{name}-secret"]
    there = [p.name for p in files if p.exists()]
    if there and not force:
        raise FileExistsError(f"{folder} holds keys of client {name} already ({', '.join(there)}); --force replaces them")
    public, secret = zmq.curve_keypair()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(files[0], public)
    _write(files[1], secret)
    allowed = folder / "allowed-clients"
    keys = allowed.read_bytes().split() if allowed.exists() else []
    _write(allowed, b"\n".join([*keys, public]))
    return public


def client_instructions(folder: Path, name: str, curve: CurveConfig) -> str:
    q = shlex.quote
    allowed = folder / "allowed-clients"
    return "\n".join([
        f"wrote client-{name}-public and client-{name}-secret to {folder}/, and added the public key to {allowed}",
        "",
        f"The client {name} (ingest, web or adapt) reads:",
        f'  export {curve.client_public_env}="$(cat {q(str(folder / f"client-{name}-public"))})"',
        f'  export {curve.client_secret_env}="$(cat {q(str(folder / f"client-{name}-secret"))})"',
        f'  export {curve.server_public_env}="$(cat {q(str(folder / "server-public"))})"',
        f"infer admits it once its {curve.allowed_clients_env} holds the new {allowed.name} (restart infer; on Kubernetes,",
        "create the Secret again from the folder, point the client's env at its own keys, and roll the infer pods).",
    ])


def instructions(folder: Path, curve: CurveConfig, source: str) -> str:
    env = {name: getattr(curve, field) for name, field in FILES.items()}
    q = shlex.quote
    lines = [
        f"wrote {', '.join(FILES)} to {folder}/ (Z85 CURVE keys; keep the secrets out of git)",
        "",
        f"Each stage reads its keys from the environment ([transport.curve] of {source}):",
        f"  infer (the CURVE server):  {', '.join(env[n] for n in SERVER)}",
        f"  ingest, web, adapt:        {', '.join(env[n] for n in CLIENT)}",
        "  crowdwatch run:            all five",
        "",
        "On one machine (crowdwatch run), in the shell that starts it:",
        *(f'  export {env[name]}="$(cat {q(str(folder / name))})"' for name in FILES),
        "",
        "Kubernetes (the generated manifests read these keys of the Secret crowdwatch-curve):",
        f"  kubectl -n crowdwatch create secret generic crowdwatch-curve --from-file={q(str(folder))}/",
        "",
        f"infer admits only the clients whose public keys are in {env['allowed-clients']}: to admit another,",
        "give it a key pair of its own: crowdwatch keys generate --dir DIR --client NAME adds one to the allow-list.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdwatch keys", description="Create the CURVE keys that tcp:// endpoints need (docs/DEPLOY.md).")
    config_help = "config whose [transport.curve] names the environment variables (default: config.toml when there is one)"
    p.add_argument("--config", type=Path, default=None, help=config_help)
    sub = p.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write a server key pair, a client key pair and the allow-list into a folder")
    # SUPPRESS: `crowdwatch keys --config F generate` keeps F (a subparser default would replace it)
    gen.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    gen.add_argument("--dir", type=Path, required=True, help="folder to write the key files into (created with mode 0700)")
    gen.add_argument("--client", metavar="NAME", default=None,
                     help="only a key pair for one more client (client-NAME-public, client-NAME-secret), added to allowed-clients")
    gen.add_argument("--force", action="store_true", help="replace the keys already in the folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = command_config("crowdwatch keys", args.config)
    curve = config.transport.curve if config is not None else CurveConfig()
    try:
        if args.client is not None:
            add_client(args.dir, args.client, force=args.force)
        else:
            generate(args.dir, force=args.force)
    except (OSError, ValueError) as exc:
        print(f"crowdwatch keys: {exc}", file=sys.stderr)
        return 2
    if args.client is not None:
        print(client_instructions(args.dir, args.client, curve))
    else:
        print(instructions(args.dir, curve, config.source if config is not None else "the built-in defaults"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
