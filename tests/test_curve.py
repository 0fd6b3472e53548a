"""CURVE, the default for tcp:// endpoints: keys from the environment, an allow-list, refusals counted.

Real ZeroMQ sockets throughout: an allow-listed client's frames get through to
the inference stage; a client with another key, without CURVE, or with the
wrong server key is refused, counted in crowd_transport_refused_total and
logged. Keys missing from the environment stop each stage at load with the
variable's name; turning CURVE off for tcp:// needs `insecure = true` and
warns at every start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from crowdwatch.commands import keys as keys_command
from crowdwatch.config import ConfigError, load_config, load_stage_config, parse_config
from crowdwatch.config.errors import ConfigWarning
from crowdwatch.config.transport import CurveKeys
from crowdwatch.fit import Fit
from crowdwatch.handshake import REFUSED, RefusalWatch
from crowdwatch.wire import (
    AdaptationRun,
    CurveServer,
    FrameMessage,
    client_curve,
    decode_inbound,
    encode_adaptation,
    encode_frame,
    encode_result,
    open_socket,
    send_once,
    send_parts,
    server_curve,
)
from streamer.cli import main as cli
from streamer.exporter import Metrics

ENV_NAMES = ("CROWDWATCH_CURVE_SERVER_PUBLIC", "CROWDWATCH_CURVE_SERVER_SECRET", "CROWDWATCH_CURVE_CLIENT_PUBLIC",
             "CROWDWATCH_CURVE_CLIENT_SECRET", "CROWDWATCH_CURVE_ALLOWED_CLIENTS")  # fmt: skip
FIT = Fit.plan(128, 96, 128, 96)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def key_env(folder: Path) -> dict[str, str]:
    """The five variables, from the files `crowdwatch keys generate` writes."""
    keys_command.generate(folder)
    return {env: (folder / name).read_text() for name, env in zip(keys_command.FILES, ENV_NAMES, strict=True)}


def site(tmp_path: Path, transport: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config whose registry serves its camera; tcp:// endpoints on free local ports unless ``transport`` says otherwise."""
    from adapt.store.registry import BASE, Registry

    if not (tmp_path / "models").exists():
        (tmp_path / "m.pt").write_bytes(b"checkpoint")
        Registry(tmp_path / "models").publish(BASE, {"model.pt": tmp_path / "m.pt"}, {}, "b1")
    if transport is None:
        frames, results = free_ports(2)
        transport = {"frames": f"tcp://127.0.0.1:{frames}", "results": f"tcp://127.0.0.1:{results}"}
    return {
        "paths": {"var": str(tmp_path / "var"), "run": str(tmp_path / "run")},
        "model": {"registry": str(tmp_path / "models"), "providers": ["CPUExecutionProvider"]},
        "log": {"files": False},
        "transport": transport,
        "cameras": {"lobby": {"url": "synthetic://", "width": 128, "height": 96}},
    }


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    def toml(table: dict[str, Any], prefix: str = "") -> list[str]:
        scalars = [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
                   for k, v in table.items() if not isinstance(v, dict)]  # fmt: skip
        out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
        for k, v in table.items():
            if isinstance(v, dict):
                out += toml(v, f"{prefix}.{k}" if prefix else k)
        return out

    path = tmp_path / "config.toml"
    path.write_text("\n".join(toml(data)) + "\n")
    return path


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = key_env(tmp_path / "curve")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# --------------------------------------------------------------------------- the config


def test_tcp_endpoints_get_curve_by_default_and_ipc_stays_as_it_is(tmp_path: Path, keys: dict[str, str]) -> None:
    config = parse_config(site(tmp_path), base_dir=tmp_path)
    t = config.transport
    assert t.curve.enabled and t.curve_on and not t.insecure_tcp
    assert config.warnings == ()  # every key is in the environment
    server, allowed = server_curve(t)  # type: ignore[misc]
    client = client_curve(t)
    assert server.public.decode() == keys["CROWDWATCH_CURVE_SERVER_PUBLIC"] and client is not None
    assert client.server_public == server.public and allowed == {client.public}
    assert "secret=***" in repr(client) and client.secret.decode() not in repr(client)
    # ipc:// endpoints: file permissions, no CURVE, no keys needed
    ipc = parse_config(site(tmp_path, transport={}), base_dir=tmp_path, environ={})
    assert not ipc.transport.curve_on and server_curve(ipc.transport) is None and client_curve(ipc.transport) is None
    assert ipc.warnings == ()


@pytest.mark.parametrize("stage, path, variable", [
    ("infer", "transport.curve.server_public_env", "CROWDWATCH_CURVE_SERVER_PUBLIC"),
    ("ingest", "transport.curve.client_public_env", "CROWDWATCH_CURVE_CLIENT_PUBLIC"),
    ("web", "transport.curve.client_public_env", "CROWDWATCH_CURVE_CLIENT_PUBLIC"),
    ("supervisor", "transport.curve.server_public_env", "CROWDWATCH_CURVE_SERVER_PUBLIC"),
])  # fmt: skip
def test_missing_keys_are_a_load_error_naming_the_variable(tmp_path: Path, stage: str, path: str, variable: str) -> None:
    config_file = write_config(tmp_path, site(tmp_path))
    with pytest.raises(ConfigWarning) as info:
        load_config(config_file, environ={}, stage=stage)
    err = info.value
    assert err.path == path and stage in err.stops
    assert str(err) == (f"{config_file}: {path}: expected the environment variable {variable} to hold the CURVE "
                        f"{'server' if 'SERVER' in variable else 'client'}'s public key (40 Z85 characters, as crowdwatch "
                        "keys generate writes), found it unset")  # fmt: skip
    # `config check` and the commands that do not serve load it: a file may be meant for another machine
    assert load_config(config_file, environ={}).transport.curve_on


def test_each_side_needs_only_its_own_keys(tmp_path: Path) -> None:
    env = key_env(tmp_path / "curve")
    config_file = write_config(tmp_path, site(tmp_path))
    server_only = {k: env[k] for k in ("CROWDWATCH_CURVE_SERVER_PUBLIC", "CROWDWATCH_CURVE_SERVER_SECRET", "CROWDWATCH_CURVE_ALLOWED_CLIENTS")}
    client_only = {k: env[k] for k in ("CROWDWATCH_CURVE_SERVER_PUBLIC", "CROWDWATCH_CURVE_CLIENT_PUBLIC", "CROWDWATCH_CURVE_CLIENT_SECRET")}
    load_config(config_file, environ=server_only, stage="infer")  # the infer pod holds no client secret
    for stage in ("ingest", "web"):
        load_config(config_file, environ=client_only, stage=stage)  # nor a client pod the server's
        with pytest.raises(ConfigWarning, match="CROWDWATCH_CURVE_CLIENT_PUBLIC"):
            load_config(config_file, environ=server_only, stage=stage)
    with pytest.raises(ConfigWarning, match="CROWDWATCH_CURVE_SERVER_SECRET"):
        load_config(config_file, environ=client_only, stage="infer")
    for stage in ("supervisor", "infer", "ingest", "web"):
        load_config(config_file, environ=env, stage=stage)


@pytest.mark.parametrize("variable, value, path, found", [
    ("CROWDWATCH_CURVE_SERVER_SECRET", "short-and-secret", "server_secret_env", "found 16 characters in it"),
    ("CROWDWATCH_CURVE_SERVER_SECRET", "~" * 40, "server_secret_env", "found characters that are not Z85 in it"),
    ("CROWDWATCH_CURVE_SERVER_SECRET", "", "server_secret_env", "found it empty"),
    ("CROWDWATCH_CURVE_SERVER_PUBLIC", None, "server_public_env", "found the public key of another pair in CROWDWATCH_CURVE_SERVER_PUBLIC"),
    ("CROWDWATCH_CURVE_ALLOWED_CLIENTS", "", "allowed_clients_env", "found it empty"),
    ("CROWDWATCH_CURVE_ALLOWED_CLIENTS", None, "allowed_clients_env", "found item 2 of 2, 8 characters, not a Z85 key"),
])  # fmt: skip
def test_malformed_keys_name_the_variable_and_never_show_a_secret(tmp_path: Path, variable: str, value: str | None, path: str,
                                                                  found: str) -> None:  # fmt: skip
    env = key_env(tmp_path / "curve")
    if value is None:  # a key of another pair; a second allow-list entry that is no key
        value = zmq.curve_keypair()[0].decode() if path == "server_public_env" else env[variable] + ",nonsense"
    env[variable] = value
    with pytest.raises(ConfigWarning) as info:
        load_config(write_config(tmp_path, site(tmp_path)), environ=env, stage="infer")
    assert info.value.path == f"transport.curve.{path}" and str(info.value).endswith(found), str(info.value)
    assert variable in str(info.value) or path == "server_public_env"
    secret = env["CROWDWATCH_CURVE_SERVER_SECRET"]
    assert "short-and-secret" not in str(info.value) and (not secret or secret not in str(info.value))


def test_crowdwatch_run_needs_its_own_clients_on_the_allow_list(tmp_path: Path) -> None:
    env = key_env(tmp_path / "curve")
    env["CROWDWATCH_CURVE_ALLOWED_CLIENTS"] = zmq.curve_keypair()[0].decode()  # someone else only
    config_file = write_config(tmp_path, site(tmp_path))
    load_config(config_file, environ=env, stage="infer")  # a separate infer may well admit other clients
    with pytest.raises(ConfigWarning) as info:
        load_config(config_file, environ=env, stage="supervisor")
    assert info.value.path == "transport.curve.allowed_clients_env"
    assert "the client's public key (CROWDWATCH_CURVE_CLIENT_PUBLIC) among the keys in CROWDWATCH_CURVE_ALLOWED_CLIENTS" in str(info.value)


@pytest.mark.parametrize("curve, path, expected", [
    ({"enabled": False}, "transport.curve.insecure", "expected insecure = true beside enabled = false"),
    ({"insecure": True}, "transport.curve.insecure", "expected insecure = true only beside enabled = false, found True"),
    ({"authorized_clients": "clients"}, "transport.curve.authorized_clients", "key files are not read"),
    ({"server_cert": "server.key_secret"}, "transport.curve.server_cert", "CURVE keys in environment variables"),
])  # fmt: skip
def test_turning_curve_off_for_tcp_needs_insecure(tmp_path: Path, curve: dict[str, Any], path: str, expected: str) -> None:
    data = site(tmp_path)
    data["transport"]["curve"] = curve
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.toml", base_dir=tmp_path)
    assert info.value.path == path and str(info.value).startswith(f"test.toml: {path}: expected "), str(info.value)
    assert expected in str(info.value) and ", found " in str(info.value)


def test_explicit_opt_out_loads_without_keys_and_warns_at_every_start(tmp_path: Path, no_keys: None, restore_logging: None,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = site(tmp_path)
    data["transport"]["curve"] = {"enabled": False, "insecure": True}
    config_file = write_config(tmp_path, data)
    for stage in ("supervisor", "infer", "ingest", "web"):
        config = load_stage_config(f"crowdwatch {stage}", config_file, log_format="json", stage=stage)
        assert config is not None and not config.transport.curve_on and config.transport.insecure_tcp
        assert client_curve(config.transport) is None and server_curve(config.transport) is None
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        (line,) = [x for x in lines if x.get("event") == "insecure_transport"]
        assert line["level"] == "WARNING" and line["stage"] == stage and "plaintext" in line["message"], line
    # ipc:// with curve off is not insecure (nothing to acknowledge, nothing to warn about)
    data = site(tmp_path, transport={"curve": {"enabled": False}})
    assert not parse_config(data, base_dir=tmp_path).transport.insecure_tcp


@pytest.mark.parametrize("command", [["ingest", "--camera", "lobby"], ["web"], ["run"], ["infer"]])
def test_a_stage_without_its_keys_stops_with_one_line(tmp_path: Path, no_keys: None, command: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    config_file = write_config(tmp_path, site(tmp_path))
    started = time.monotonic()
    assert cli([command[0], "--config", str(config_file), *command[1:]]) == 2
    assert time.monotonic() - started < 30  # no retry loop
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    side = "client" if command[0] in ("ingest", "web") else "server"
    assert err[0].startswith(f"crowdwatch {command[0]}: {config_file}: transport.curve.{side}_public_env: expected the environment "
                             f"variable CROWDWATCH_CURVE_{side.upper()}_PUBLIC")  # fmt: skip


def test_config_check_names_what_each_stage_lacks(tmp_path: Path, no_keys: None, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = write_config(tmp_path, site(tmp_path))
    assert cli(["config", "--config", str(config_file), "check"]) == 0
    out = capsys.readouterr()
    assert "transport: tcp:// with CURVE: infer admits the client keys in $CROWDWATCH_CURVE_ALLOWED_CLIENTS" in out.out
    warnings = out.err.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert "transport.curve.server_public_env" in warnings[0] and warnings[0].endswith("(crowdwatch run and infer refuse to start)")
    assert "transport.curve.client_public_env" in warnings[1] and warnings[1].endswith("(crowdwatch run, ingest and web refuse to start)")


# --------------------------------------------------------------------------- keys generate


def test_keys_generate_writes_a_working_set_and_says_where_it_goes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "curve"
    assert cli(["keys", "generate", "--dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(keys_command.FILES)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all((folder / name).stat().st_mode & 0o777 == 0o600 for name in keys_command.FILES)
    for name in ENV_NAMES:
        assert f"export {name}=" in out
    assert f"kubectl -n crowdwatch create secret generic crowdwatch-curve --from-file={folder}/" in out
    for name in ("server-secret", "client-secret"):
        assert (folder / name).read_text() not in out  # secrets stay in their files
    pub, sec = (folder / "server-public").read_bytes(), (folder / "server-secret").read_bytes()
    assert zmq.curve_public(sec) == pub and len(pub) == 40
    assert (folder / "allowed-clients").read_bytes() == (folder / "client-public").read_bytes()
    # the set loads for every stage
    env = {env: (folder / name).read_text() for name, env in zip(keys_command.FILES, ENV_NAMES, strict=True)}
    for stage in ("supervisor", "infer", "ingest", "web"):
        load_config(write_config(tmp_path, site(tmp_path)), environ=env, stage=stage)
    # keys are never replaced by accident
    assert cli(["keys", "generate", "--dir", str(folder)]) == 2
    assert "--force" in capsys.readouterr().err and (folder / "server-public").read_bytes() == pub
    # one more client, with a pair of its own, on the allow-list
    assert cli(["keys", "generate", "--dir", str(folder), "--client", "cam-2"]) == 0
    allowed = (folder / "allowed-clients").read_bytes().split()
    assert allowed == [(folder / "client-public").read_bytes(), (folder / "client-cam-2-public").read_bytes()]
    assert cli(["keys", "generate", "--dir", str(folder), "--client", "Bad Name"]) == 2


def test_keys_generate_prints_the_variables_the_config_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = site(tmp_path)
    data["transport"]["curve"] = {"server_secret_env": "INFER_CURVE_SECRET"}
    config_file = write_config(tmp_path, data)
    assert cli(["keys", "--config", str(config_file), "generate", "--dir", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert f'export INFER_CURVE_SECRET="$(cat {tmp_path / "k" / "server-secret"})"' in out and "CROWDWATCH_CURVE_SERVER_SECRET" not in out


# --------------------------------------------------------------------------- real sockets


def refused(metrics: Metrics, socket: str, reason: str) -> float:
    return metrics.registry.get_sample_value("crowd_transport_refused_total", {"stage": "infer", "socket": socket, "reason": reason}) or 0.0


def wait_for(cond, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_curve_server_admits_the_allow_list_and_counts_every_refusal(ctx: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    server_pub, server_sec = zmq.curve_keypair()
    allowed_pub, allowed_sec = zmq.curve_keypair()
    other_pub, other_sec = zmq.curve_keypair()
    counts: dict[str, int] = {}
    guard = CurveServer(ctx, [allowed_pub], lambda sock, reason: counts.__setitem__(reason, counts.get(reason, 0) + 1))
    pull = open_socket(ctx, "pull", "tcp://127.0.0.1:0", bind=True, curve=CurveKeys(server_pub, server_sec))
    endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    guard.watch(pull, "frames")
    guard.start()
    try:
        with caplog.at_level(logging.WARNING, logger="crowdwatch.curve"):
            for name, keys in (("other key", CurveKeys(other_pub, other_sec, server_pub)), ("plaintext", None),
                               ("wrong server key", CurveKeys(allowed_pub, allowed_sec, zmq.curve_keypair()[0]))):  # fmt: skip
                push = open_socket(ctx, "push", endpoint, bind=False, curve=keys)
                send_parts(push, [name.encode()])  # never blocks: a refused client may have no pipe to queue on
                time.sleep(0.5)
                push.close(linger=0)
            good = open_socket(ctx, "push", endpoint, bind=False, curve=CurveKeys(allowed_pub, allowed_sec, server_pub))
            assert send_parts(good, [b"allowed"])
            assert pull.poll(5000) and pull.recv() == b"allowed"
            assert not pull.poll(300)  # nothing of the refused clients got through
            good.close(linger=0)
            # the other key on the allow-list's side; no CURVE and the wrong server key fail the handshake
            assert wait_for(lambda: counts.get("not_allowed") == 1 and counts.get("bad_handshake", 0) >= 2), counts
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert f"its CURVE key {other_pub.decode()} is not on the allow-list" in logged and "from 127.0.0.1" in logged
        assert "refused a connection on the frames socket" in logged
    finally:
        guard.stop()
        pull.close(linger=0)


@pytest.fixture
def curve_stage(tmp_path: Path, keys: dict[str, str]) -> Iterator[tuple[Any, Metrics, Any]]:
    """The inference stage on tcp:// with CURVE, keys from the environment."""
    from adapt.model.checkpoint import save_checkpoint
    from adapt.store.registry import BASE, Registry
    from streamer.infer import InferStage
    from tests.test_network import perturbed_model

    save_checkpoint(tmp_path / "m.pt", perturbed_model(), {"version": "b1"})
    Registry(tmp_path / "reg").publish(BASE, {"model.pt": tmp_path / "m.pt"}, {}, "b1")
    data = site(tmp_path)
    data["model"] = {"registry": str(tmp_path / "reg"), "backend": "torch", "max_batch": 4, "max_wait_ms": 50}
    config = parse_config(data, base_dir=tmp_path)
    metrics = Metrics(process_metrics=False)
    ctx = zmq.Context()
    stage = InferStage(config, metrics, ctx)
    yield stage, metrics, config
    stage.close()
    ctx.destroy(linger=0)


def test_infer_takes_frames_from_allowed_clients_only_and_counts_the_others(curve_stage: tuple[Any, Metrics, Any]) -> None:
    stage, metrics, config = curve_stage
    t = config.transport
    ctx = stage.ctx
    assert all(refused(metrics, s, r) == 0 for s in ("frames", "results") for r in REFUSED)  # exported from the start
    img = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)

    def frame(seq: int) -> list:
        return encode_frame(FrameMessage("lobby", seq, time.time_ns(), img, fit=FIT))

    # another key pair, and no CURVE at all: refused, counted, nothing processed
    other_pub, other_sec = zmq.curve_keypair()
    stranger = open_socket(ctx, "push", t.frames, bind=False, curve=CurveKeys(other_pub, other_sec, t.curve.server_keys().public))
    plain = open_socket(ctx, "push", t.frames, bind=False)
    eavesdropper = open_socket(ctx, "sub", t.results, bind=False, curve=CurveKeys(other_pub, other_sec, t.curve.server_keys().public))
    for seq, sock in enumerate((stranger, plain), 1):
        send_parts(sock, frame(seq))  # never blocks: a refused client may have no pipe to queue on
    assert wait_for(lambda: refused(metrics, "frames", "not_allowed") >= 1 and refused(metrics, "frames", "bad_handshake") >= 1
                    and refused(metrics, "results", "not_allowed") >= 1)  # fmt: skip
    assert sum(stage.step() for _ in range(3)) == 0
    assert metrics.registry.get_sample_value("crowd_frames_total", {"camera": "lobby", "stage": "infer"}) in (None, 0)

    # the allow-listed client (the keys in the environment): its frames become results, which its subscription gets
    push = open_socket(ctx, "push", t.frames, bind=False, curve=client_curve(t))
    sub = open_socket(ctx, "sub", t.results, bind=False, curve=client_curve(t))
    time.sleep(0.5)
    assert send_parts(push, frame(10))
    assert wait_for(lambda: stage.step() > 0, timeout=20)
    assert metrics.registry.get_sample_value("crowd_frames_total", {"camera": "lobby", "stage": "infer"}) == 1
    assert sub.poll(5000) and not eavesdropper.poll(500)
    for sock in (stranger, plain, eavesdropper, push, sub):
        sock.close(linger=0)


# --------------------------------------------------------------------------- a client that infer refuses learns it


@contextlib.contextmanager
def infer_sockets(ctx: zmq.Context, config: Any, *, allow: bool, later: list[Callable[[], None]] | None = None,
                  ) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:  # fmt: skip
    """infer's two CURVE sockets at the config's endpoints, admitting the environment's client key only if ``allow``
    (``later`` receives a function that admits it from then on, as an infer restarted with a new allow-list would)."""
    keys, allowed = server_curve(config.transport)  # type: ignore[misc]
    guard = CurveServer(ctx, allowed if allow else [zmq.curve_keypair()[0]])
    if later is not None:
        later.append(lambda: setattr(guard, "allowed", frozenset(allowed)))
    pull = open_socket(ctx, "pull", config.transport.frames, bind=True, curve=keys)
    pub = open_socket(ctx, "pub", config.transport.results, bind=True, curve=keys)
    guard.watch(pull, "frames")
    guard.watch(pub, "results")
    guard.start()
    try:
        yield pull, pub
    finally:
        guard.stop()
        pull.close(linger=0)
        pub.close(linger=0)


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "transport_refused" and r.levelno == logging.ERROR]


def terminates(ctx: zmq.Context, timeout: float = 5.0) -> bool:
    """ctx.term() returns: every socket, monitor sockets included, was closed."""
    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive()


@pytest.fixture
def no_monitor_left() -> Iterator[None]:
    yield
    assert [t.name for t in threading.enumerate() if t.name == "zmq-monitor"] == []


def start_ingest(config: Any) -> Callable[[], None]:
    from streamer.ingest import run_ingest

    ctx, stop = zmq.Context(), threading.Event()
    t = config.transport
    thread = threading.Thread(target=run_ingest, args=(config.cameras["lobby"], t.frames, t.hwm, None, stop, client_curve(t)),
                              kwargs={"ctx": ctx}, daemon=True)  # fmt: skip
    thread.start()
    return lambda: (stop.set(), thread.join(10), terminates(ctx))


def start_web(config: Any) -> Callable[[], None]:
    from streamer.web import WebServer, WebSettings

    return WebServer(config, WebSettings(port=0)).start().stop


def start_uncertainty_feed(config: Any) -> Callable[[], None]:
    from streamer.scheduler import UncertaintyFeed

    stop = threading.Event()
    thread = UncertaintyFeed([config.transport.results], {"lobby": 10.0}, curve=client_curve(config.transport)).start(stop)
    return lambda: (stop.set(), thread.join(10))


def start_announcement(config: Any) -> Callable[[], None]:
    sent: list[bool] = []
    parts = encode_adaptation(AdaptationRun("lobby", time.time(), "succeeded"))
    thread = threading.Thread(target=lambda: sent.append(send_once(config.transport.frames, parts, client_curve(config.transport),
                                                                   log=logging.getLogger("crowdwatch.adapt"))), daemon=True)  # fmt: skip
    thread.start()
    return lambda: (thread.join(10), sent == [False] or pytest.fail(f"send_once said {sent}, not False"))


CLIENTS = {"ingest": start_ingest, "web": start_web, "uncertainty feed": start_uncertainty_feed, "adapt announcement": start_announcement}


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_that_infer_refuses_logs_one_line_saying_what_to_check(
        client: str, tmp_path: Path, keys: dict[str, str], ctx: zmq.Context, caplog: pytest.LogCaptureFixture,
        no_monitor_left: None) -> None:  # fmt: skip
    config = parse_config(site(tmp_path), base_dir=tmp_path)
    endpoint = config.transport.frames if client in ("ingest", "adapt announcement") else config.transport.results
    with infer_sockets(ctx, config, allow=False) as (pull, _), caplog.at_level(logging.ERROR):
        stop = CLIENTS[client](config)
        try:
            assert wait_for(lambda: refusal_lines(caplog)), f"{client} logged no refusal"
            assert not pull.poll(300)  # nothing got through
        finally:
            stop()
    (line,) = refusal_lines(caplog)
    assert line.getMessage().startswith(f"the CURVE server at {endpoint} refused this client's connection to its "
                                        f"{'frames' if endpoint == config.transport.frames else 'results'} socket (not_allowed): "
                                        "this client's public key (transport.curve.client_public_env) is not on infer's allow-list")  # fmt: skip
    assert keys["CROWDWATCH_CURVE_CLIENT_SECRET"] not in line.getMessage()


@pytest.mark.parametrize("allow", [False, True])
def test_web_counts_the_refusals_of_its_subscription(allow: bool, tmp_path: Path, keys: dict[str, str], ctx: zmq.Context,
                                                     caplog: pytest.LogCaptureFixture, no_monitor_left: None) -> None:  # fmt: skip
    from streamer.web import WebServer, WebSettings
    from tests.test_web import make_result

    config = parse_config(site(tmp_path), base_dir=tmp_path)

    def count(reason: str) -> float | None:
        labels = {"stage": "web", "socket": "results", "reason": reason}
        return web.metrics.registry.get_sample_value("crowd_transport_client_refused_total", labels)

    with infer_sockets(ctx, config, allow=allow) as (_, pub), caplog.at_level(logging.ERROR):
        web = WebServer(config, WebSettings(port=0)).start()
        try:
            if allow:  # it subscribed: a result gets through, and nothing was refused
                assert wait_for(lambda: send_parts(pub, encode_result(make_result("lobby"))) and web.store.received > 0)
            else:
                assert wait_for(lambda: count("not_allowed") == 1)
        finally:
            web.stop()
    assert count("not_allowed") == (0 if allow else 1) and count("bad_handshake") == 0  # both exported from the start
    assert len(refusal_lines(caplog)) == (0 if allow else 1)


def test_a_refused_subscription_gets_its_results_once_its_key_is_allowed(tmp_path: Path, keys: dict[str, str], ctx: zmq.Context,
                                                                       no_monitor_left: None) -> None:  # fmt: skip
    """libzmq never connects again after a key refusal: web's receiver does (RefusalWatch.heal), after 2 s."""
    from streamer.web import WebServer, WebSettings
    from tests.test_web import make_result

    config = parse_config(site(tmp_path), base_dir=tmp_path)
    allow: list[Callable[[], None]] = []
    with infer_sockets(ctx, config, allow=False, later=allow) as (_, pub):
        web = WebServer(config, WebSettings(port=0)).start()
        try:
            labels = {"stage": "web", "socket": "results", "reason": "not_allowed"}
            assert wait_for(lambda: web.metrics.registry.get_sample_value("crowd_transport_client_refused_total", labels) == 1)
            allow[0]()  # infer now admits web's key; web is not restarted
            assert wait_for(lambda: send_parts(pub, encode_result(make_result("lobby"))) and web.store.received > 0, timeout=15)
        finally:
            web.stop()


def test_a_key_still_refused_is_tried_again_after_a_wait_that_doubles(ctx: zmq.Context, no_monitor_left: None) -> None:
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    guard = CurveServer(ctx, [])
    pull = open_socket(ctx, "pull", "tcp://127.0.0.1:0", bind=True, curve=CurveKeys(server_pub, server_sec))
    endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    guard.watch(pull, "frames")
    guard.start()
    now = [0.0]
    refused: list[str] = []
    try:
        with RefusalWatch(lambda socket, reason: refused.append(reason), clock=lambda: now[0]) as watch:
            push = open_socket(ctx, "push", endpoint, bind=False, curve=CurveKeys(client_pub, client_sec, server_pub), watch=watch)
            try:
                for n, wait in enumerate([2.0, 4.0, 8.0], start=1):
                    assert wait_for(lambda n=n: len(refused) == n), refused
                    assert watch.refused == [("frames", endpoint)]
                    assert watch.heal() == 0 and not wait_for(lambda n=n: len(refused) > n, timeout=0.5)  # libzmq alone: never again
                    now[0] += wait - 0.01
                    assert watch.heal() == 0
                    now[0] += 0.01
                    assert watch.heal() == 1
                assert wait_for(lambda: len(refused) == 4)
                guard.allowed = frozenset([client_pub])
                now[0] += 16.0
                assert watch.heal() == 1
                assert wait_for(lambda: send_parts(push, [b"in"]) and pull.poll(100) > 0)
                assert pull.recv() == b"in"
                assert wait_for(lambda: watch.refused == [])  # its handshake cleared the wait
            finally:
                push.close(linger=0)
    finally:
        guard.stop()
        pull.close(linger=0)
    assert set(refused) == {"not_allowed"}


def test_an_allowed_announcement_is_delivered_without_a_word(tmp_path: Path, keys: dict[str, str], ctx: zmq.Context,
                                                             caplog: pytest.LogCaptureFixture, no_monitor_left: None) -> None:  # fmt: skip
    config = parse_config(site(tmp_path), base_dir=tmp_path)
    with infer_sockets(ctx, config, allow=True) as (pull, _), caplog.at_level(logging.ERROR):
        run = AdaptationRun("lobby", time.time(), "succeeded")
        assert send_once(config.transport.frames, encode_adaptation(run), client_curve(config.transport))
        assert pull.poll(5000) and decode_inbound(pull.recv_multipart()) == run
    assert refusal_lines(caplog) == []


def test_a_client_with_the_wrong_server_key_is_refused_again_and_again_but_said_once_a_minute(
        ctx: zmq.Context, caplog: pytest.LogCaptureFixture, no_monitor_left: None) -> None:  # fmt: skip
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    guard = CurveServer(ctx, [client_pub])
    pull = open_socket(ctx, "pull", "tcp://127.0.0.1:0", bind=True, curve=CurveKeys(server_pub, server_sec))
    endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    refused: list[tuple[str, str]] = []
    try:
        with caplog.at_level(logging.ERROR), RefusalWatch(lambda socket, reason: refused.append((socket, reason))) as watch:
            push = open_socket(ctx, "push", endpoint, bind=False, curve=CurveKeys(client_pub, client_sec, zmq.curve_keypair()[0]),
                               watch=watch)  # fmt: skip
            try:
                assert wait_for(lambda: len(refused) >= 3)  # libzmq tries again after this kind of refusal
            finally:
                push.close(linger=0)
    finally:
        guard.stop()
        pull.close(linger=0)
    assert set(refused) == {("frames", "bad_handshake")}
    (line,) = refusal_lines(caplog)
    assert f"the CURVE server at {endpoint} refused" in line.getMessage()
    assert "check that transport.curve.server_public_env holds infer's public key" in line.getMessage()
