"""Static checks of the deployment files (deploy/, .dockerignore, docs/DEPLOY.md).

Nothing is built or started. Every YAML and JSON file parses; the compose and
Kubernetes configs load with crowdwatch.config; every `crowdwatch COMMAND --flag`
in the manifests, the Dockerfile and the deploy docs is a flag that COMMAND's
argparse defines; the Grafana dashboard queries only metrics that
streamer/exporter.py exports; the manifests agree with the config (cameras,
ports, CURVE variables). External validators run when installed and skip
otherwise: promtool (Debian `prometheus`, installed by CI), amtool (Debian
`prometheus-alertmanager`), `kubectl kustomize` and `kubernetes-validate
--strict` (the dev extra). The Kubernetes manifests under deploy/k8s/generated
must be what `crowdwatch deploy k8s` makes of deploy/k8s/config.toml.

PyYAML is not a dependency: YAML is parsed with it when importable, else with
a system python3 that has it, else only a conservative structural check runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from crowdwatch.commands import deploy
from crowdwatch.config import load_config
from crowdwatch.config.transport import KEY_FILES
from streamer.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "crowdwatch.json"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_CONFIG = DEPLOY / "config.compose.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
K8S_CONFIG = K8S / "config.toml"
GENERATED = K8S / "generated"
K8S_FILES = sorted(K8S.glob("*.yaml")) + sorted(GENERATED.glob("*.yaml"))
TEMPLATES = sorted((K8S / "templates").glob("*.yaml.in"))
# Files whose `crowdwatch COMMAND --flag` lines are checked (docs: code only).
COMMAND_FILES = [DOCKERFILE, COMPOSE, *K8S_FILES, *TEMPLATES]


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# --------------------------------------------------------------------------- YAML


def _pythons_with_yaml() -> list[str]:
    seen, out = {os.path.realpath(sys.executable)}, []
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for d in dirs:
        exe = shutil.which("python3", path=d) if d else None
        if not exe or os.path.realpath(exe) in seen:
            continue
        seen.add(os.path.realpath(exe))
        try:
            ok = subprocess.run([exe, "-c", "import yaml"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            out.append(exe)
    return out


@functools.cache
def yaml_docs() -> dict[str, list] | None:
    """{relative path: [documents]} for every YAML file under deploy/, or None without a YAML parser."""
    texts = {rel(p): p.read_text() for p in YAML_FILES}
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        pass
    else:
        return {k: list(yaml.safe_load_all(t)) for k, t in texts.items()}
    for exe in _pythons_with_yaml():
        code = (
            "import json, sys, yaml\n"
            "texts = json.load(sys.stdin)\n"
            "out = {}\n"
            "for k, t in texts.items():\n"
            "    try:\n"
            "        out[k] = {'docs': list(yaml.safe_load_all(t))}\n"
            "    except yaml.YAMLError as e:\n"
            "        out[k] = {'error': str(e)}\n"
            "json.dump(out, sys.stdout, default=str)\n"
        )
        res = subprocess.run([exe, "-c", code], input=json.dumps(texts), capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            parsed = json.loads(res.stdout)
            errors = {k: v["error"] for k, v in parsed.items() if "error" in v}
            assert not errors, errors
            return {k: v["docs"] for k, v in parsed.items()}
    return None


def needs_yaml() -> dict[str, list]:
    docs = yaml_docs()
    if docs is None:
        pytest.skip("no YAML parser (PyYAML in this or a system python3)")
    return docs


def k8s_objects() -> list[dict]:
    docs = needs_yaml()
    return [d for f in K8S_FILES for d in docs[rel(f)] if d]


def containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_structure(path: Path) -> None:
    """Always runs: no tabs, and each Kubernetes document names apiVersion, kind and metadata."""
    text = path.read_text()
    assert "\t" not in text, f"{rel(path)}: tab character (YAML indentation must be spaces)"
    if path.parent in (K8S, GENERATED) and path.name != "kustomization.yaml":
        for i, doc in enumerate(re.split(r"^---\s*$", text, flags=re.M)):
            if not re.search(r"^\w", doc, flags=re.M):
                continue  # only comments
            for key in ("apiVersion", "kind", "metadata"):
                assert re.search(rf"^{key}:", doc, flags=re.M), f"{rel(path)} document {i}: no top-level {key}"


def test_yaml_parses() -> None:
    docs = needs_yaml()
    assert set(docs) == {rel(p) for p in YAML_FILES}
    for name, file_docs in docs.items():
        assert any(d is not None for d in file_docs), f"{name}: empty"


# --------------------------------------------------------------------------- crowdwatch command lines


@functools.cache
def command_flags(command: str) -> frozenset[str]:
    """The --flags a command's module defines (grepped, not imported: torch is heavy)."""
    module = COMMANDS[command][0]
    src = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    flags = {"--help"}
    for call in re.findall(r"add_argument\(([^)]*)\)", src):
        flags.update(re.findall(r"[\"'](--[a-z0-9][a-z0-9-]*)[\"']", call))
    assert len(flags) > 1 or command == "synth", f"no flags found for {command} in {module}"
    return frozenset(flags)


def test_command_flag_grep_sees_real_flags() -> None:
    assert {"--config", "--camera", "--models", "--buffer", "--json", "--record"} <= command_flags("adapt")
    assert {"--camera", "--config"} <= command_flags("ingest")
    assert "--config" in command_flags("infer")
    assert "--config" in command_flags("web")
    assert "--no-adapt" in command_flags("run")


_SHELL_CMD = re.compile(r"(?<![\w/.-])crowdwatch[ \t]+(?=([a-z][\w-]*))")
_LIST_CMD = re.compile(r"\[\s*\"([a-z][\w-]*)\"\s*((?:,\s*\"[^\"]*\"\s*)*)\]")


def command_uses(text: str) -> list[tuple[str, list[str], str]]:
    """(command, [--flags], source line) for shell lines `crowdwatch CMD ...` and lists ["CMD", "--flag", ...]."""
    uses = []
    for line in text.splitlines():
        for m in _SHELL_CMD.finditer(line):
            cmd = m.group(1)
            if cmd not in COMMANDS:
                continue
            rest = re.split(r"[;|&)`]|\$\(", line[m.end():])[0]
            flags = [t.split("=", 1)[0] for t in rest.split() if t.startswith("--")]
            uses.append((cmd, flags, line.strip()))
        for m in _LIST_CMD.finditer(line):
            cmd = m.group(1)
            if cmd in COMMANDS:
                items = re.findall(r"\"([^\"]*)\"", m.group(2))
                uses.append((cmd, [t.split("=", 1)[0] for t in items if t.startswith("--")], line.strip()))
    return uses


def doc_code(text: str) -> str:
    """Fenced code blocks and inline code spans of a Markdown file."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


@pytest.mark.parametrize("path", [*COMMAND_FILES, DEPLOY_DOC], ids=rel)
def test_crowdwatch_flags_are_real(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".md":
        text = doc_code(text)
    bad = [(cmd, f, line) for cmd, flags, line in command_uses(text) for f in flags if f not in command_flags(cmd)]
    assert not bad, "flags that the command does not define: " + "; ".join(f"crowdwatch {c} {f} (in: {line})" for c, f, line in bad)


def test_manifests_run_the_expected_commands() -> None:
    found = {cmd for p in COMMAND_FILES for cmd, _, _ in command_uses(p.read_text())}
    assert {"run", "infer", "ingest", "web", "adapt"} <= found, found


def test_k8s_container_args() -> None:
    """Structurally: a container whose args start with a command gets only that command's flags."""
    seen = set()
    for obj in k8s_objects():
        for c in containers(obj):
            args = c.get("args") or []
            if c.get("command") or not args or args[0] not in COMMANDS:
                continue
            seen.add(args[0])
            bad = [a for a in args[1:] if a.startswith("--") and a.split("=", 1)[0] not in command_flags(args[0])]
            assert not bad, f"{obj['metadata']['name']}/{c['name']}: {args[0]} has no {bad}"
            assert "/etc/crowdwatch/config.toml" in args, f"{obj['metadata']['name']}: no --config /etc/crowdwatch/config.toml"
    assert {"infer", "ingest", "web", "adapt"} <= seen


# --------------------------------------------------------------------------- configs


def _env_refs(text: str) -> dict[str, str]:
    return {name: "placeholder" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}


def test_compose_config_loads_and_binds_all_interfaces() -> None:
    text = COMPOSE_CONFIG.read_text()
    cfg = load_config(COMPOSE_CONFIG, environ=_env_refs(text))
    assert cfg.server.metrics_host == "0.0.0.0" and cfg.server.web_host == "0.0.0.0"
    assert str(cfg.paths.var) == "/app/var" and str(cfg.model.registry) == "/app/models"
    assert cfg.transport.frames.startswith("ipc:///app/var/run/")


def test_compose_config_keeps_the_repo_cameras() -> None:
    repo = tomllib.loads((ROOT / "config.toml").read_text())
    comp = tomllib.loads(COMPOSE_CONFIG.read_text())
    assert comp["cameras"] == repo["cameras"]
    assert comp["defaults"] == repo["defaults"]
    assert comp["transport"] == repo["transport"]
    # the repo's own defaults stay on loopback
    assert repo["server"]["metrics_host"] == "127.0.0.1" and repo["server"]["web_host"] == "127.0.0.1"
    assert {k: v for k, v in comp["server"].items() if "host" not in k} == {k: v for k, v in repo["server"].items() if "host" not in k}


@functools.cache
def k8s_config():
    return deploy.load(K8S_CONFIG)  # as the pods read it: ${VAR}s kept, paths under /etc/crowdwatch


def test_generated_configmap_is_the_config_file() -> None:
    docs = needs_yaml()
    (cm,) = [d for d in docs[rel(GENERATED / "configmap.yaml")] if d]
    assert cm["metadata"]["name"] == "crowdwatch-config" and cm["data"]["config.toml"] == K8S_CONFIG.read_text()


def test_k8s_config_loads() -> None:
    cfg = k8s_config()
    t = cfg.transport
    assert cfg.server.metrics_host == "0.0.0.0" and cfg.server.web_host == "0.0.0.0"
    # worker N is the pod crowdwatch-infer-N of the StatefulSet, named by its headless Service
    assert cfg.server.infer_workers == 2 and {cfg.shard_of(c) for c in cfg.cameras} == {0, 1}
    for shard in range(cfg.server.infer_workers):
        assert cfg.endpoint("frames", shard) == f"tcp://crowdwatch-infer-{shard}.crowdwatch-infer:5555"
        assert cfg.endpoint("results", shard) == f"tcp://crowdwatch-infer-{shard}.crowdwatch-infer:5556"
    assert t.frames_bind.startswith("tcp://0.0.0.0:") and t.results_bind.startswith("tcp://0.0.0.0:")
    assert t.curve.enabled and t.frame_encoding == "jpeg"
    assert str(cfg.model.registry) == "/app/models" and str(cfg.paths.var) == "/app/var"
    assert cfg.cameras


def test_k8s_cameras_exist_in_config() -> None:
    cameras = set(k8s_config().cameras)
    text = "\n".join(p.read_text() for p in K8S_FILES)
    named = set(re.findall(r"\"--camera\",\s*\"([a-z0-9_-]+)\"", text)) | set(re.findall(r"^\s*CAMERA=([a-z0-9_-]+)\s*$", text, flags=re.M))
    assert named == cameras, f"the manifests' cameras {sorted(named)} are not the config's {sorted(cameras)}"


def _env_names(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


def test_k8s_curve_env_and_ports_match_config() -> None:
    cfg = k8s_config()
    curve = cfg.transport.curve
    port = lambda endpoint: int(endpoint.rsplit(":", 1)[1])  # noqa: E731
    by_cmd: dict[str, list[dict]] = {}
    services = {}
    for obj in k8s_objects():
        if obj["kind"] == "Service":
            services[obj["metadata"]["name"]] = {p["name"]: p["port"] for p in obj["spec"]["ports"]}
        for c in containers(obj):
            args = c.get("args") or []
            if args and args[0] in COMMANDS and not c.get("command"):
                by_cmd.setdefault(args[0], []).append(c)
    (infer,) = by_cmd["infer"]
    assert infer["args"][-2:] == ["--shard", "$(POD_NAME)"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in infer["env"]
    assert {curve.server_public_env, curve.server_secret_env, curve.allowed_clients_env} <= _env_names(infer)
    assert not {curve.client_secret_env} & _env_names(infer)
    for c in by_cmd["ingest"] + by_cmd["web"] + by_cmd["adapt"]:  # adapt announces its runs to infer
        assert {curve.server_public_env, curve.client_public_env, curve.client_secret_env} <= _env_names(c)
        assert curve.server_secret_env not in _env_names(c), "the CURVE server secret belongs to infer only"
    # every CURVE variable comes from the Secret's key that `crowdwatch keys generate` writes for it
    files = {getattr(curve, field): file for field, file in KEY_FILES.items()}
    for c in [infer] + by_cmd["ingest"] + by_cmd["web"] + by_cmd["adapt"]:
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        for name in files.keys() & refs.keys():
            assert refs[name] == {"name": "crowdwatch-curve", "key": files[name]}, (name, refs[name])
    ports = {p["name"]: p["containerPort"] for p in infer["ports"]}
    assert ports == {"metrics": cfg.server.metrics_port, "frames": port(cfg.transport.frames_bind), "results": port(cfg.transport.results_bind)}
    assert services["crowdwatch-infer"] == {"metrics": cfg.server.metrics_port, "frames": port(cfg.transport.frames), "results": port(cfg.transport.results)}
    assert infer["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert infer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert infer["resources"]["limits"]["nvidia.com/gpu"] == 1
    (web,) = by_cmd["web"]
    assert {p["containerPort"] for p in web["ports"]} == {cfg.server.web_port}
    assert services["crowdwatch-web"] == {"http": cfg.server.web_port}


def test_k8s_pods_run_as_non_root() -> None:
    for obj in k8s_objects():
        if obj["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
            continue
        spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for c in containers(obj):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]


def test_adapt_cronjobs() -> None:
    """One CronJob per camera: the scheduler's command, with the config from the ConfigMap, no shell, no inline Python."""
    cfg = k8s_config()
    jobs = [o for o in k8s_objects() if o["kind"] == "CronJob"]
    assert sorted(o["metadata"]["labels"]["crowdwatch.io/camera"] for o in jobs) == sorted(map(deploy.k8s_name, cfg.cameras))
    for cj in jobs:
        assert cj["spec"]["concurrencyPolicy"] == "Forbid"
        (c,) = containers(cj)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "command" not in c, "the image's entrypoint (crowdwatch) runs the job"
        camera = c["args"][4]
        assert c["args"] == ["adapt", "--config", "/etc/crowdwatch/config.toml", "--camera", camera, "--record", "/app/var"]
        assert cj["spec"]["schedule"] == deploy.cron_schedule(camera, cfg.cameras[camera].adapt)
        assert cj["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == cfg.cameras[camera].adapt.timeout_s
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert {"/etc/crowdwatch", "/app/models", "/app/var"} <= set(mounts)
        volumes = {v["name"]: v for v in cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts["/etc/crowdwatch"]]["configMap"]["name"] == "crowdwatch-config"
        assert {"secretRef": {"name": "crowdwatch-cameras"}} in c.get("envFrom", []), "the config's ${VAR}s are expanded on load"
    # the paths the jobs read and write are the mounted volumes
    assert cfg.model.registry == Path("/app/models") and cfg.paths.var == Path("/app/var")


# --------------------------------------------------------------------------- generated manifests


def test_generated_manifests_are_up_to_date(tmp_path: Path) -> None:
    assert deploy.main(["k8s", "--config", str(K8S_CONFIG), "--out", str(tmp_path)]) == 0
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    kept = {p.name: p.read_text() for p in GENERATED.iterdir()}
    assert fresh == kept, "deploy/k8s/generated is stale: crowdwatch deploy k8s --config deploy/k8s/config.toml --out deploy/k8s/generated"


def kubernetes_validate() -> str:
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    if not os.access(exe, os.X_OK):
        pytest.skip("kubernetes-validate not installed (the dev extra)")
    return exe


def validate_strict(*files: Path) -> None:
    out = subprocess.run([kubernetes_validate(), "--strict", "--quiet", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_manifests_validate_strict() -> None:
    validate_strict(*(p for p in K8S_FILES if p.name not in ("kustomization.yaml", "servicemonitor.yaml")))


def _site(tmp_path: Path, cameras: str, workers: int = 2) -> Path:
    text = K8S_CONFIG.read_text().split("[cameras.lobby]")[0].replace("infer_workers = 2", f"infer_workers = {workers}")
    path = tmp_path / "config.toml"
    path.write_text(text + cameras)
    return path


def test_two_workers_split_the_cameras_in_the_generated_manifests(tmp_path: Path) -> None:
    cams = "".join(f'[cameras.{name}]\nurl = "synthetic://"\n' for name in ("lobby", "concourse", "gate", "hall", "front_door"))
    cfg_path = _site(tmp_path, cams + '[cameras.gate.adapt]\ninterval = "6h"\n[cameras.hall.adapt]\nenabled = false\n')
    out = tmp_path / "out"
    assert deploy.main(["k8s", "--config", str(cfg_path), "--out", str(out)]) == 0
    validate_strict(*(p for p in out.glob("*.yaml") if p.name != "kustomization.yaml"))
    cfg = deploy.load(cfg_path)
    by_worker = {s: cfg.shard_cameras(s) for s in range(2)}
    assert all(by_worker.values()) and sorted(sum(by_worker.values(), [])) == sorted(cfg.cameras), by_worker
    text = {p.name: p.read_text() for p in out.glob("*.yaml")}
    assert re.search(r"^  replicas: 2$", text["infer.yaml"], flags=re.M) and "clusterIP: None" in text["infer.yaml"]
    # every camera has its ingest; each sends to its worker's pod (crowdwatch-infer-N), which serves it
    for camera in cfg.cameras:
        assert f'"--camera", "{camera}"' in text[f"ingest-{deploy.k8s_name(camera)}.yaml"]
        assert cfg.endpoint("frames", cfg.shard_of(camera)) == f"tcp://crowdwatch-infer-{cfg.shard_of(camera)}.crowdwatch-infer:5555"
    assert "ingest-front-door-" in "".join(text) and "adapt-hall.yaml" not in text  # a Kubernetes name; adaptation off: no CronJob
    assert re.search(r'schedule: "\d+ \d+-23/6 \* \* \*"', text["adapt-gate.yaml"])
    assert sorted(re.findall(r"^  - (\S+)$", text["kustomization.yaml"], flags=re.M)) == sorted(n for n in text if n != "kustomization.yaml")

    # a camera removed: its files go, what is not generated stays
    (out / "notes.yaml").write_text("kept: true\n")
    _site(tmp_path, cams.replace('[cameras.gate]\nurl = "synthetic://"\n', "") + "[cameras.hall.adapt]\nenabled = false\n")
    assert deploy.main(["k8s", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert not (out / "ingest-gate.yaml").exists() and not (out / "adapt-gate.yaml").exists() and (out / "notes.yaml").exists()


def test_curve_variables_follow_the_config_and_go_with_curve(tmp_path: Path) -> None:
    cams = '[cameras.lobby]\nurl = "synthetic://"\n'
    renamed = _site(tmp_path, cams)
    renamed.write_text(renamed.read_text().replace('server_secret_env = "CROWDWATCH_CURVE_SERVER_SECRET"', 'server_secret_env = "INFER_SECRET"'))
    text = deploy.render(renamed)
    assert "INFER_SECRET" in text["infer.yaml"] and "CROWDWATCH_CURVE_SERVER_SECRET" not in text["infer.yaml"]
    # CURVE turned off (insecure): no key, no Secret to create, and the manifests stay valid
    insecure = tmp_path / "insecure.toml"
    insecure.write_text(re.sub(r"^\[transport\.curve\].*$", "[transport.curve]\nenabled = false\ninsecure = true", renamed.read_text(), flags=re.M))
    out = tmp_path / "out"
    assert deploy.main(["k8s", "--config", str(insecure), "--out", str(out)]) == 0
    files = [p for p in out.glob("*.yaml") if p.name != "kustomization.yaml"]
    assert not any("crowdwatch-curve" in p.read_text() for p in files if p.name != "configmap.yaml")
    assert "[]  # no CURVE keys" in (out / "ingest-lobby.yaml").read_text()
    validate_strict(*files)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: re.search(r'config-hash: "(\w+)"', p.read_text()).group(1) for p in folder.glob("*.yaml") if "config-hash:" in p.read_text()}


def test_a_config_change_rolls_only_the_pods_it_touches(tmp_path: Path) -> None:
    cams = '[cameras.lobby]\nurl = "synthetic://"\n[cameras.concourse]\nurl = "synthetic://"\n'
    cfg_path = _site(tmp_path, cams)
    assert deploy.main(["k8s", "--config", str(cfg_path), "--out", str(tmp_path / "a")]) == 0
    _site(tmp_path, cams.replace('[cameras.lobby]\nurl = "synthetic://"\n', '[cameras.lobby]\nurl = "synthetic://"\nfps = 2\n'))
    assert deploy.main(["k8s", "--config", str(cfg_path), "--out", str(tmp_path / "b")]) == 0
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert set(a) == {"infer.yaml", "web.yaml", "ingest-lobby.yaml", "ingest-concourse.yaml"}
    assert {n for n in a if a[n] != b[n]} == {"infer.yaml", "web.yaml", "ingest-lobby.yaml"}


def test_cron_schedules_and_kubernetes_names() -> None:
    from crowdwatch.config.adaptation import AdaptConfig
    from crowdwatch.config.errors import ConfigError

    assert deploy.cron_schedule("x", AdaptConfig.model_validate({"daily": "03:30"})) == "30 3 * * *"
    assert re.fullmatch(r"\d+-59/15 \* \* \* \*", deploy.cron_schedule("x", AdaptConfig.model_validate({"interval": "15m"})))
    assert re.fullmatch(r"\d+ \* \* \* \*", deploy.cron_schedule("x", AdaptConfig.model_validate({"interval": "1h"})))
    assert re.fullmatch(r"\d+ \d+ \* \* \*", deploy.cron_schedule("x", AdaptConfig.model_validate({"interval": "24h"})))
    assert re.fullmatch(r"\d+ \d+ \* \* [0-6]", deploy.cron_schedule("x", AdaptConfig.model_validate({"interval": "7d"})))
    assert deploy.cron_schedule("a", AdaptConfig()) != deploy.cron_schedule("b", AdaptConfig())  # staggered
    with pytest.raises(ConfigError, match=r"cameras\.x\.adapt\.interval: expected an interval a CronJob can keep"):
        deploy.cron_schedule("x", AdaptConfig.model_validate({"interval": "5h"}))
    assert deploy.k8s_name("lobby-2") == "lobby-2"
    for odd in ("front_door", "-x", "a" * 40):
        name = deploy.k8s_name(odd)
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) and len(name) <= 35, name
    assert deploy.k8s_name("front_door") != deploy.k8s_name("front-door_")


def test_kustomize_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    try:
        out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("kubectl kustomize timed out")
    assert out.returncode == 0, out.stderr
    kinds = re.findall(r"^kind: (\w+)$", out.stdout, flags=re.M)
    assert {"Namespace", "ConfigMap", "StatefulSet", "Deployment", "CronJob", "Service", "PersistentVolumeClaim"} <= set(kinds)
    assert "image: crowdwatch-" not in out.stdout, "an image placeholder is not mapped in kustomization.yaml"
    built = tmp_path / "built.yaml"
    built.write_text(out.stdout)
    validate_strict(built)


# --------------------------------------------------------------------------- compose, Dockerfile


def test_compose_file() -> None:
    text = COMPOSE.read_text()
    assert "./config.compose.toml:/etc/crowdwatch/config.toml" in text
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml" in text
    assert "./prometheus/prometheus.compose.yml:/etc/prometheus/prometheus.yml" in text
    assert "./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml" in text
    for published in re.findall(r"^\s*-\s*\"([^\"]*:\d+:\d+)\"", text, flags=re.M):
        assert published.startswith("127.0.0.1:"), f"compose publishes {published} beyond loopback"
    assert "driver: nvidia" in text and "capabilities: [gpu]" in text
    docs = yaml_docs()
    if docs is not None:
        (compose,) = docs[rel(COMPOSE)]
        svc = compose["services"]
        assert svc["crowdwatch"]["profiles"] == ["gpu"] and svc["crowdwatch-cpu"]["profiles"] == ["cpu"]
        assert "deploy" not in svc["crowdwatch-cpu"]
        for name in ("crowdwatch", "crowdwatch-cpu"):
            assert svc[name]["command"][0] == "run"
            assert svc[name]["networks"]["default"]["aliases"] == ["crowdwatch"]
        for name, s in svc.items():
            for p in s.get("ports", []):
                assert str(p).startswith("127.0.0.1:"), (name, p)


def test_no_literal_secrets() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for p in files:
        text = p.read_text()
        for pw in re.findall(r"://[^/\s:@\"']+:([^@\s\"']+)@", text):
            assert pw.startswith("${"), f"{rel(p)}: literal password in a URL"
        for m in re.finditer(r"GF_SECURITY_ADMIN_PASSWORD:\s*(\S+)", text):
            assert m.group(1).startswith("${"), f"{rel(p)}: literal Grafana password"
    assert "url_file:" in (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    cuda_image = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, flags=re.M).group(1)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda_image)
    assert m, cuda_image
    cu_index = re.search(r"download\.pytorch\.org/whl/cu(\d+)", text).group(1)
    assert cu_index.startswith(m.group(1)), f"torch's CUDA (cu{cu_index}) differs from the base image's CUDA {m.group(1)}"
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, flags=re.M)
    assert re.search(r"^ARG ORT_VERSION=1\.31\.", text, flags=re.M)
    user = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^VOLUME \[\"/app/var\", \"/app/models\"\]$", text, flags=re.M)
    assert re.search(r"^ENTRYPOINT \[\"crowdwatch\"\]$", text, flags=re.M)
    port = load_config(COMPOSE_CONFIG, environ=_env_refs(COMPOSE_CONFIG.read_text())).server.metrics_port
    assert f"CROWDWATCH_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz" in text
    assert re.search(r"^HEALTHCHECK .*", text, flags=re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".venv", "var", "**/*.env", ".git"):
        assert entry in ignore, f".dockerignore lacks {entry}"
    assert "!deploy/config.compose.toml" in ignore


# --------------------------------------------------------------------------- Prometheus, Alertmanager


def test_compose_scrape_targets_match_config() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.compose.yml").read_text()
    cfg = load_config(COMPOSE_CONFIG, environ=_env_refs(COMPOSE_CONFIG.read_text()))
    assert f'"crowdwatch:{cfg.server.metrics_port}"' in text
    assert f'"crowdwatch:{cfg.server.web_port}"' in text
    assert re.search(r"job_name: crowdwatch\s", text), "CrowdwatchTargetDown expects job=\"crowdwatch\""
    assert '"alertmanager:9093"' in text


def test_promtool_check_compose_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus); CI installs it")
    # promtool insists that the token file exists; compose writes it in the container at start
    (tmp_path / "crowdwatch_token").write_text("token")
    for name in ("prometheus.compose.yml", "alerts.yml"):
        text = (DEPLOY / "prometheus" / name).read_text()
        (tmp_path / name).write_text(text.replace("/prometheus/crowdwatch_token", str(tmp_path / "crowdwatch_token")))
    out = subprocess.run([promtool, "check", "config", "prometheus.compose.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_amtool_check_config(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (apt-get install -y prometheus-alertmanager)")
    src = DEPLOY / "alertmanager" / "alertmanager.yml"
    out = subprocess.run([amtool, "check-config", str(src)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "url_file" in out.stdout + out.stderr:
        # amtool < 0.26 (Debian bookworm's 0.25) predates webhook url_file; check the rest.
        copy = tmp_path / "alertmanager.yml"
        copy.write_text(re.sub(r"url_file: \S+", "url: http://127.0.0.1:9/placeholder", src.read_text()))
        out = subprocess.run([amtool, "check-config", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- Grafana


@functools.cache
def exported_metrics() -> dict[str, str]:
    """Exposed sample names -> base metric, from the Gauge/Counter/Histogram calls in exporter.py."""
    src = (ROOT / "streamer" / "exporter.py").read_text()
    out = {}
    for kind, name in re.findall(r"\b(Gauge|Counter|Histogram)\(\s*\"(crowd_[a-z0-9_]+)\"", src):
        if kind == "Gauge":
            out[name] = name
        elif kind == "Counter":
            out[name + "_total"] = name
        else:
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = name
    assert "crowd_people" in out and "crowd_frames_total" in out and "crowd_frame_latency_seconds_bucket" in out
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            out.append((f"variable {var['name']}", q["query"]))
    return out


def test_dashboard_uses_only_exported_metrics() -> None:
    known = exported_metrics()
    builtins = {"up", "ALERTS"}
    used = set()
    for title, expr in dashboard_exprs():
        for name in re.findall(r"(?<![\w:$])(crowd_[a-z0-9_]+)", expr):
            assert name in known, f"panel {title!r}: {name} is not exported by streamer/exporter.py"
            used.add(known[name])
        for name in re.findall(r"(?<![\w:$])([A-Za-z_][A-Za-z0-9_]*)\s*\{", expr):
            assert name.startswith("crowd_") or name in builtins, f"panel {title!r}: unexpected series {name}"
    required = {
        "crowd_people", "crowd_people_threshold", "crowd_people_truth", "crowd_zone_people", "crowd_count_uncertainty",
        "crowd_density_peak_per_m2", "crowd_close_pairs", "crowd_close_pairs_threshold", "crowd_area_over_density_ratio",
        "crowd_frames", "crowd_frames_dropped", "crowd_camera_up", "crowd_camera_reconnects", "crowd_frame_latency_seconds",
        "crowd_inference_seconds", "crowd_batch_size", "crowd_model_info", "crowd_adaptation_runs",
        "crowd_adaptation_last_success_timestamp_seconds", "crowd_buffer_frames",
    }
    assert required <= used, f"dashboard lacks {sorted(required - used)}"


def test_dashboard_camera_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert "camera" in names and names["camera"]["multi"] and names["camera"]["includeAll"]
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    ids = []
    for title, expr in dashboard_exprs():
        per_camera = re.search(r"crowd_(?!inference_seconds|batch_size)[a-z0-9_]+\{", expr)
        if per_camera and 'camera=""' not in expr and title != "variable camera":
            assert '$camera' in expr, f"panel {title!r} ignores the camera selector: {expr}"
    for p in dash["panels"]:
        ids.append(p["id"])
        assert p["type"] == "row" or p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_grafana_provisioning_matches_compose() -> None:
    compose = COMPOSE.read_text()
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "crowdwatch.yml").read_text()
    path = re.search(r"path: (\S+)", provider).group(1)
    assert f"./grafana/dashboards:{path}:ro" in compose
    assert f"{path}/{DASHBOARD.name}" in compose  # the home dashboard
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource
