"""The reliability suite: faults injected into one running `crowdwatch run`, watched by a real Prometheus and Alertmanager.

One site serves the whole module (starting one costs more than most faults): `crowdwatch run`
with two synthetic cameras (east, west) and one RTSP camera (door, served by the GStreamer RTSP
server of tests/rtsp_server.py), scraped every second by Debian's `prometheus` with the real
rules of deploy/prometheus/alerts.yml (their `for:` shortened to 1 s), which sends to Debian's
`prometheus-alertmanager` with the real routes and inhibitions of deploy/alertmanager/alertmanager.yml
(its waits shortened to 1 s), whose webhook is a small HTTP server here. west's adapter buffer
lies on a 64 KiB tmpfs (when this process may mount one; else every stage runs under a 4 KiB
RLIMIT_FSIZE, so each buffered frame fails to be written).

The tests run in file order on that site, each fault after the last:
Prometheus scrapes it and a crowd alert reaches the webhook; 20 kills and restarts of door's RTSP
server; door taken down for good (CrowdCameraDown, no crowd alert); SIGKILL of infer, then of an
ingest; SIGSTOP of infer and of an ingest; 10,000 fuzzed wire messages; the full buffer disk;
SIGKILL of the supervisor, then a restart with a corrupt model for east.
Faults tested elsewhere in isolation (tests/test_supervisor.py, test_hot_swap.py, test_wire.py,
test_infer.py, test_rtsp.py) are not repeated; here they hit real processes under one supervisor.

A test whose tools are missing skips with the reason (Prometheus and Alertmanager: Debian's
`prometheus` and `prometheus-alertmanager`; the RTSP camera: see tests/rtsp_server.py). No network,
no GPU, no ../shared. The figures measured (seconds to recover and so on) are written as JSON to
$CROWDWATCH_RELIABILITY_REPORT when it is set; docs/RELIABILITY.md ("The reliability suite") quotes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from streamer.pdeath import STOP_GRACE_S
from tests.conftest import REPO, free_port, kill_run, pid_alive, scrape, site_toml, stage_pids, value, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="prometheus and prometheus-alertmanager not installed (apt-get install -y prometheus prometheus-alertmanager); CI installs them",
)
DEPLOY = REPO / "deploy"
FIGURES: dict[str, object] = {}   # what this run measured, for $CROWDWATCH_RELIABILITY_REPORT
RESTARTS = 20
FUZZED = 10_000
BUFFER_TMPFS = "64k"
FSIZE_LIMIT = 4096                # bytes: below any buffered JPEG, above every other file the stages write
STALL_RESTART_S = 10              # short, for the SIGSTOP tests; a starved CI machine may still pause a stage for a few seconds


# --------------------------------------------------------------------------- the site


class Webhook:
    """Alertmanager's receiver: every alert of every notification, as (status, labels)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.alerts += [(a["status"], a["labels"]) for a in body.get("alerts", [])]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, alertname: str, camera: str | None = None, status: str = "firing") -> bool:
        return any(s == status and labels.get("alertname") == alertname and (camera is None or labels.get("camera") == camera)
                   for s, labels in list(self.alerts))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


class Site:
    """`crowdwatch run` on east, west (synthetic) and door (RTSP), with Prometheus, Alertmanager and the webhook."""

    def __init__(self, root: Path, rtsp, disk: str) -> None:
        self.root, self.rtsp, self.disk = root, rtsp, disk
        self.mport, self.wport = free_port(), free_port()
        self.cfg = root / "config.toml"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.rtsp_missing: str | None = None  # why there is no RTSP camera
        self.prom_port: int | None = None
        self.webhook: Webhook | None = None
        self._procs: list[subprocess.Popen] = []

    # -- crowdwatch run

    def write_config(self) -> None:
        door = f'[cameras.door]\nurl = "{self.rtsp.url}"\n[cameras.door.thresholds]\npeople = 0\n' if self.rtsp else ""
        self.cfg.write_text(site_toml(self.root, self.mport, self.wport, f"""
[cameras.east]
url = "synthetic://?people=40&style=day&seed=3"
[cameras.east.thresholds]
people = 1
[cameras.west]
url = "synthetic://?people=15&style=overcast&seed=4"
[cameras.west.buffer]
min_interval_s = 0
dedup_threshold = 0
min_free_bytes = 0
{door}""", server=f'stall_restart = "{STALL_RESTART_S}s"', sections="[log]\nfiles = false", registry=self.root / "models"))

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(self.cfg), "--no-adapt",
                                      "--log-format", "json"], cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})  # fmt: skip
        if self.disk == "rlimit":  # set from here, not in a preexec_fn (unsafe in this threaded process); before it starts a stage
            resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
        # a pipe, drained here: under RLIMIT_FSIZE the run could not write a log file of its own
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen) -> None:
        with open(self.root / "run.log", "ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.decode(errors="replace"))

    def infer_restarts(self, since: int = 0) -> list[str]:
        """The supervisor's lines, from line ``since`` of the run's output, that say infer exited or was replaced as hung."""
        return [ln.strip() for ln in self.lines[since:] if '"stage": "supervisor"' in ln
                and ("infer exited" in ln or re.search(r"infer \(pid \d+\) made no progress", ln))]

    def stages(self) -> dict[str, int]:
        return stage_pids(self.proc.pid)

    def metrics(self) -> dict:
        return scrape(self.mport)

    def frames(self, camera: str) -> float:
        if self.proc.poll() is not None:
            pytest.fail(f"crowdwatch run exited with {self.proc.returncode}: {''.join(self.lines[-5:])}")
        return value(self.metrics(), "crowd_frames_total", camera=camera, stage="infer") or 0.0

    def seq(self, camera: str) -> int | None:
        body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.wport}/api/results/{camera}", timeout=2).read())
        return body.get("seq")

    # -- Prometheus, Alertmanager

    def start_alerting(self) -> None:
        self.webhook = Webhook()
        am_port, self.prom_port = free_port(), free_port()
        am = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
        am, n_url = re.subn(r"url_file: \S+", f"url: {self.webhook.url}", am)      # Debian's 0.25 has no url_file
        am, n_wait = re.subn(r"group_wait: \S+", "group_wait: 1s", am)
        am, n_interval = re.subn(r"group_interval: \S+", "group_interval: 1s", am)
        assert n_url == 1 and n_wait >= 1 and n_interval >= 1, "deploy/alertmanager/alertmanager.yml changed shape"
        (self.root / "alertmanager.yml").write_text(am)
        rules, n_for = re.subn(r"(?m)^(\s*for:\s*)\S+", r"\g<1>1s", (DEPLOY / "prometheus" / "alerts.yml").read_text())
        assert n_for >= 9, "deploy/prometheus/alerts.yml changed shape"
        (self.root / "alerts.yml").write_text(rules)
        (self.root / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]
scrape_configs:
  - job_name: crowdwatch
    static_configs: [{{targets: ["127.0.0.1:{self.mport}"]}}]
""")
        log = open(self.root / "alerting.log", "ab")  # noqa: SIM115 - closed with the site
        self._log = log
        self._procs.append(subprocess.Popen(
            [ALERTMANAGER, f"--config.file={self.root / 'alertmanager.yml'}", f"--storage.path={self.root / 'am'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=log, cwd=self.root))  # fmt: skip
        self._procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.root / 'prometheus.yml'}", f"--storage.tsdb.path={self.root / 'prom'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}", "--log.level=warn"],
            stdout=log, stderr=log, cwd=self.root))  # fmt: skip
        wait_for(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready") and _ready(f"http://127.0.0.1:{self.prom_port}/-/ready"), 60,
                 "Prometheus and Alertmanager to be ready")

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        return _get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/query?{q}")["data"]["result"]

    def prom_alerts(self, alertname: str, camera: str | None = None) -> list[str]:
        """The states (pending, firing) of Prometheus's active alerts of that name (and camera)."""
        alerts = _get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/alerts")["data"]["alerts"]
        return [a["state"] for a in alerts if a["labels"].get("alertname") == alertname
                and (camera is None or a["labels"].get("camera") == camera)]

    def close(self) -> None:
        if self.proc is not None:
            kill_run(self.proc)
        for p in self._procs:
            p.kill()
            p.wait()
        if self.webhook is not None:
            self.webhook.close()
            self._log.close()


def _registry(root: Path) -> None:
    """A registry of its own (east's versions are changed below): the shipped base model, and east/v1, a copy of it."""
    from adapt.store.registry import BASE, Registry, ensure_onnx

    base = Registry(REPO / "models").current(BASE)
    if base is None:
        pytest.fail("the shipped base model is missing from models/base")
    ensure_onnx(base)  # what the first infer would do, once, in the shipped registry
    for camera, version in ((BASE, base.version), ("east", "v1")):
        d = root / "models" / camera / version
        d.mkdir(parents=True)
        for f in ("model.pt", "model.onnx", "card.json"):
            (d / f).symlink_to(base.path / f)
        (d.parent / "current").write_text(version + "\n")


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a tiny tmpfs at ``path``; None, or why it could not be."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={BUFFER_TMPFS},mode=0755", "tmpfs", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    return None if out.returncode == 0 else (out.stderr.strip() or f"mount exited with {out.returncode}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The running site of the module (see the module's docstring), counting every camera; torn down after the last test."""
    from tests.rtsp_server import RtspServer, unavailable_reason

    root = tmp_path_factory.mktemp("site")
    _registry(root)
    buffer = root / "var" / "buffer" / "west"
    why = _mount_tmpfs(buffer)
    disk = "tmpfs" if why is None else "rlimit"
    FIGURES["buffer_disk"] = f"{BUFFER_TMPFS} tmpfs" if why is None else f"RLIMIT_FSIZE {FSIZE_LIMIT} B (no tmpfs: {why})"
    rtsp_missing = unavailable_reason()
    rtsp = None if rtsp_missing else RtspServer(root / "clip.mp4")
    s = Site(root, rtsp, disk)
    s.rtsp_missing = rtsp_missing
    try:
        if rtsp is not None:
            from streamer.sources.testclip import write_clip

            # 5 minutes: no session of the test reaches its end (an end would be a reconnect of its own)
            write_clip(rtsp.media, width=320, height=240, fps=5, seconds=300, gop=5)
            rtsp.start()
        s.write_config()
        s.start()
        t0 = time.monotonic()
        cameras = ["east", "west"] + (["door"] if rtsp else [])
        wait_for(lambda: all(s.frames(c) >= 2 for c in cameras), 180, f"frames from {cameras}")
        FIGURES["site_start_s"] = round(time.monotonic() - t0, 1)
        if PROMETHEUS and ALERTMANAGER:
            s.start_alerting()
        yield s
    finally:
        s.close()
        if rtsp is not None:
            rtsp.__exit__(None, None, None)  # killed, its log closed
        if disk == "tmpfs":
            subprocess.run(["umount", "-l", str(buffer)], capture_output=True)
        report = os.environ.get("CROWDWATCH_RELIABILITY_REPORT")
        if report:
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            Path(report).write_text(json.dumps(FIGURES, indent=2) + "\n")


def _needs_door(site: Site) -> None:
    if site.rtsp is None:
        pytest.skip(f"no GStreamer RTSP server: {site.rtsp_missing}")


# --------------------------------------------------------------------------- Prometheus, Alertmanager, webhook


@needs_prometheus
def test_prometheus_scrapes_the_pipeline_and_a_crowd_alert_reaches_the_webhook(site: Site) -> None:
    t0 = time.monotonic()
    wait_for(lambda: site.query('up{job="crowdwatch"} == 1'), 30, "Prometheus to scrape crowdwatch")

    def people() -> dict[str, float] | None:
        got = {r["metric"]["camera"]: float(r["value"][1]) for r in site.query("crowd_people")}
        return got if {"east", "west"} <= got.keys() else None

    assert all(v >= 0 for v in wait_for(people, 30, "crowd_people of east and west in Prometheus").values())
    # east counts about 40 people against a threshold of 1: the real rule fires, Alertmanager routes it, the webhook gets it
    wait_for(lambda: site.webhook.seen("CrowdPeopleAboveThreshold", "east"), 60, "CrowdPeopleAboveThreshold for east at the webhook")
    FIGURES["alert_to_webhook_s"] = round(time.monotonic() - t0, 1)
    assert not site.webhook.seen("CrowdPeopleAboveThreshold", "west")  # west's threshold is the default 150


# --------------------------------------------------------------------------- a camera killed and restarted


def test_twenty_camera_restarts_all_recover(site: Site) -> None:
    """door's RTSP server is SIGKILLed (no TEARDOWN) and started again on its port, 20 times; each time a frame
    from the new session reaches infer (the reconnect it carries in-band is counted)."""
    _needs_door(site)

    def reconnects() -> float:
        return value(site.metrics(), "crowd_camera_reconnects_total", camera="door") or 0.0

    base = reconnects()
    recovered: list[float] = []
    for i in range(1, RESTARTS + 1):
        site.rtsp.kill()
        time.sleep(0.5)  # gone for a moment: the camera's connection is dead and refused
        site.rtsp.start()
        t0 = time.monotonic()
        try:
            wait_for(lambda i=i: reconnects() >= base + i, 30, f"restart {i} to bring door's frames back", interval=0.1)
        except AssertionError:
            break
        recovered.append(time.monotonic() - t0)
    FIGURES["camera_restarts"] = {"recovered": len(recovered), "of": RESTARTS, "median_s": round(statistics.median(recovered), 1),
                                  "max_s": round(max(recovered), 1)} if recovered else {"recovered": 0, "of": RESTARTS}
    assert len(recovered) == RESTARTS, f"{len(recovered)} of {RESTARTS} restarts recovered"
    assert reconnects() == base + RESTARTS  # one reconnect per restart, none of its own
    assert value(site.metrics(), "crowd_camera_up", camera="door") == 1


def test_a_camera_taken_down_is_down_and_raises_no_crowd_alert(site: Site) -> None:
    _needs_door(site)
    alerting = site.prom_port is not None
    if alerting:  # door's threshold is 0: its crowd alert fires while it counts
        wait_for(lambda: site.prom_alerts("CrowdPeopleAboveThreshold", "door") == ["firing"], 30, "door's crowd alert to fire")
    site.rtsp.kill()  # for good
    t0 = time.monotonic()
    wait_for(lambda: value(site.metrics(), "crowd_camera_up", camera="door") == 0, 30, "door marked down")
    FIGURES["camera_down_detected_s"] = round(time.monotonic() - t0, 1)
    m = site.metrics()
    assert value(m, "crowd_people", camera="door") is None and value(m, "crowd_close_pairs", camera="door") is None
    assert value(m, "crowd_camera_up", camera="east") == 1
    if alerting:
        wait_for(lambda: site.webhook.seen("CrowdCameraDown", "door"), 60, "CrowdCameraDown for door at the webhook")
        wait_for(lambda: site.prom_alerts("CrowdPeopleAboveThreshold", "door") == [], 30, "door's crowd alert to end")
        assert site.prom_alerts("CrowdPeopleAboveThreshold", "east") == ["firing"]
        # nothing sends it again while door is down; its stall alert is not raised on top (inhibited, and the rule's own unless)
        time.sleep(3)
        assert site.prom_alerts("CrowdPeopleAboveThreshold", "door") == [] and site.prom_alerts("CrowdCameraStalled", "door") == []


# --------------------------------------------------------------------------- stages killed and stopped


def _renumbered(site: Site, camera: str, seq: int) -> bool:
    """The overlay shows a frame numbered below ``seq``: a new ingest's (each numbers its frames from 0)."""
    now = site.seq(camera)
    return now is not None and now < seq


def _replaced(site: Site, stage: str, old: int) -> int | None:
    pid = site.stages().get(stage)
    return pid if pid not in (None, old) else None


def test_infer_sigkill_gives_fresh_frames_within_10_s(site: Site) -> None:
    before = site.stages()
    os.kill(before["infer"], signal.SIGKILL)
    t0 = time.monotonic()
    # the new infer's counters start from 0: any frame it counts is a fresh one
    wait_for(lambda: _replaced(site, "infer", before["infer"]) and site.frames("east") >= 1 and site.frames("west") >= 1, 60,
             "fresh frames from a new infer", interval=0.1)
    took = time.monotonic() - t0
    FIGURES["infer_sigkill_to_fresh_frames_s"] = round(took, 1)
    after = site.stages()
    assert all(after[s] == before[s] for s in before if s.startswith("ingest:"))  # every ingest survived
    assert took < 10, f"fresh frames {took:.1f} s after the SIGKILL"


def test_ingest_sigkill_is_restarted_and_its_camera_counts_again(site: Site) -> None:
    before = site.stages()
    seq = wait_for(lambda: site.seq("east"), 30, "east in the overlay")
    os.kill(before["ingest:east"], signal.SIGKILL)
    t0 = time.monotonic()
    # a frame of the new ingest, through infer and web
    wait_for(lambda: _replaced(site, "ingest:east", before["ingest:east"]) and _renumbered(site, "east", seq), 60,
             "a frame of the new ingest in the overlay", interval=0.1)
    FIGURES["ingest_sigkill_to_fresh_frames_s"] = round(time.monotonic() - t0, 1)
    after = site.stages()
    assert after["infer"] == before["infer"] and after["ingest:west"] == before["ingest:west"]


@pytest.mark.parametrize("victim", ["infer", "ingest:west"])
def test_a_sigstopped_stage_is_replaced_and_its_frames_come_back(site: Site, victim: str) -> None:
    """The sleeper stages of tests/test_supervisor.py show the replacement; here the real stage's beat stops and frames return."""
    before = site.stages()
    seq = wait_for(lambda: site.seq("west"), 30, "west in the overlay")
    frames = site.frames("west")
    os.kill(before[victim], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        def back() -> bool:
            if not _replaced(site, victim, before[victim]):
                return False
            if victim == "infer":
                return site.frames("west") >= 1 and site.frames("east") >= 1   # a new infer, counting from 0
            return _renumbered(site, "west", seq) and site.frames("west") > frames  # the new ingest's frames
        wait_for(back, STALL_RESTART_S + 60, f"a new {victim} and fresh frames", interval=0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(before[victim], signal.SIGCONT)
    FIGURES[f"{victim.split(':')[0]}_sigstop_to_fresh_frames_s"] = round(time.monotonic() - t0, 1)
    assert not pid_alive(before[victim])
    after = site.stages()
    assert all(after[s] == before[s] for s in before if s != victim)
    assert any(f"{victim} (pid {before[victim]}) made no progress" in line for line in list(site.lines))


# --------------------------------------------------------------------------- wire fuzzing


def _valid_messages(rng: np.random.Generator) -> list[list[bytes]]:
    """Well-formed messages to mutate: raw and JPEG frames of each camera, with every optional field, and an adaptation run."""
    from crowdwatch.fit import Fit
    from crowdwatch.wire import AdaptationRun, FrameMessage, encode_adaptation, encode_frame

    out = []
    for cam in ("east", "west", "door"):
        img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        msg = FrameMessage(cam, 7, 1_800_000_000_000_000_000, img, fit=Fit.plan(192, 128, 96, 64), truth=3.0,  # fixed: the same fuzz on every run
                           stats={"reconnects": 1, "dropped_hwm": 2})  # fmt: skip
        out += [encode_frame(msg), encode_frame(msg, jpeg_quality=80)]
    out.append(encode_adaptation(AdaptationRun("east", 1000.0, "failed")))
    return [[bytes(p) for p in parts] for parts in out]


def _mutate(parts: list[bytes], rng: random.Random) -> list[bytes]:
    """One random change to a message: of its header's fields, of its bytes, or of its buffers."""
    parts = list(parts)
    head = json.loads(parts[0])
    body, descs = head["body"], head["parts"]
    bad_values = [None, -1, 2**70, 1.5, "x", "", [], {}, True, "../../etc/passwd", "A" * 300, "ghost"]
    op = rng.randrange(14)
    if op == 0:  # a field of the body changed, added or removed
        key = rng.choice([*body, "extra"])
        if rng.random() < 0.3 and key in body:
            del body[key]
        else:
            body[key] = rng.choice(bad_values)
    elif op == 1:  # the schema version, the kind, the header's own keys
        head[rng.choice(["v", "parts", "body", "extra"])] = rng.choice(bad_values)
    elif op == 2 and descs:  # a part descriptor
        d = rng.choice(descs)
        d[rng.choice(["name", "shape", "encoding", "extra"])] = rng.choice(
            bad_values + [[0, 0, 3], [64, 96], [5000, 96, 3], [-64, 96, 3], [512, 512, 3], "png", "float16", "density"])
    elif op == 3 and descs:  # a part announced twice, or not at all
        if rng.random() < 0.5:
            descs.append(dict(descs[0]))
        else:
            descs.clear()
    elif op == 4:  # stats: a key or a value out of bounds, too many keys
        body["stats"] = rng.choice([{"Bad Key": 1}, {"dropped_x": -1}, {f"k{i}": 1 for i in range(40)}, "many", {"reconnects": 1e30}])
    elif op == 5:  # a fit that does not make the image
        body["fit"] = rng.choice([{"src_w": 10}, {"src_w": 1, "src_h": 1, "scale": 1, "content_w": 1, "content_h": 1, "out_w": 1, "out_h": 1}])
    elif op == 6:  # a buffer cut short or too long
        if len(parts) > 1:
            i = rng.randrange(1, len(parts))
            parts[i] = parts[i][: rng.randrange(len(parts[i]))] if rng.random() < 0.5 else parts[i] + b"\0" * rng.randrange(1, 99)
    elif op == 7:  # a buffer missing, or one too many
        parts = parts[:-1] if len(parts) > 1 and rng.random() < 0.5 else parts + [rng.randbytes(rng.randrange(0, 64))]
    elif op == 8 and len(parts) > 1:  # garbage where the JPEG or pixels are
        parts[1] = rng.randbytes(len(parts[1]))
    elif op == 9:  # a header padded beyond the size limit
        parts[0] = parts[0] + b" " * (64 * 1024)
        return parts
    elif op == 10:  # not a number JSON allows
        parts[0] = parts[0].replace(b'"truth":3.0', b'"truth":NaN')
        return parts
    if op >= 11:  # bytes of the header flipped, or the header cut
        raw = bytearray(parts[0])
        if op == 11:
            parts[0] = bytes(raw[: rng.randrange(len(raw))])
        else:
            for _ in range(rng.randrange(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            parts[0] = bytes(raw)
        return parts
    parts[0] = json.dumps(head).encode()
    return parts


def fuzzed_messages(n: int, seed: int, boxes: dict[str, tuple[int, int]]) -> list[tuple[list[bytes], str]]:
    """``n`` messages that infer must drop, a third random bytes and the rest mutated valid messages, each with
    the reason it must be counted under: what the wire's decoder says (the decoder infer runs), or
    ``unknown_camera`` for a valid message of a camera that is not configured. A mutation that leaves a message
    infer would serve is mutated again. Any other exception from the decoder fails the test: infer would die of it."""
    from crowdwatch.wire import WireError, decode_inbound

    rng = random.Random(seed)
    valid = _valid_messages(np.random.default_rng(seed))
    out: list[tuple[list[bytes], str]] = []
    while len(out) < n:
        if rng.random() < 1 / 3:
            parts = [rng.randbytes(rng.randrange(0, 600)) for _ in range(rng.randrange(1, 4))]
        else:
            parts = _mutate(rng.choice(valid), rng)
            while rng.random() < 0.3 and _is_json(parts[0]):  # sometimes two or three changes
                parts = _mutate(parts, rng)
        try:
            msg = decode_inbound(parts, max_size=boxes.get)
        except WireError as exc:
            out.append((parts, exc.reason))
            continue
        if msg.camera not in boxes:
            out.append((parts, "unknown_camera"))
    return out


def _is_json(data: bytes) -> bool:
    """A header _mutate can edit: a JSON object with a body object and a parts list."""
    try:
        head = json.loads(data)
    except ValueError:
        return False
    return isinstance(head, dict) and isinstance(head.get("body"), dict) and isinstance(head.get("parts"), list) \
        and all(isinstance(d, dict) for d in head["parts"])


def _infer_drops(m: dict) -> Counter:
    out: Counter = Counter()
    for (name, labels), v in m.items():
        d = dict(labels)
        if name == "crowd_frames_dropped_total" and d.get("stage") == "infer":
            out[d["reason"]] += v
    return out


def test_ten_thousand_fuzzed_messages_crash_nothing_and_every_drop_is_counted(site: Site) -> None:
    import zmq

    from crowdwatch.config import load_config
    from crowdwatch.wire import REASONS

    config = load_config(site.cfg)
    boxes = {name: (cam.width, cam.height) for name, cam in config.cameras.items()}
    messages = fuzzed_messages(FUZZED, 19, boxes)
    expected = Counter(reason for _, reason in messages)
    assert len(expected) >= 12, expected  # the fuzz reaches most of the decoder's reasons
    FIGURES["fuzz"] = {"messages": FUZZED, "by_reason": dict(sorted(expected.items()))}

    before, infer, since = _infer_drops(site.metrics()), site.stages()["infer"], len(site.lines)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.connect(config.endpoint("frames", 0))
    t0 = time.monotonic()
    # every reason but the ones real frames may add meanwhile (overflow, stale) is the fuzz's alone
    own = (REASONS - {"overflow", "stale"}) | set(expected)

    def counted() -> Counter:
        after = _infer_drops(site.metrics())
        return Counter({r: after[r] - before[r] for r in own if after[r] - before[r]})

    def all_counted() -> bool:
        replaced = site.stages().get("infer") not in (None, infer)
        assert not replaced, f"infer was replaced during the fuzz (a new one counts from 0): {site.infer_restarts(since)}"
        return sum(counted().values()) >= FUZZED

    try:
        for parts, _ in messages:
            sock.send_multipart(parts)  # blocking: none is lost on this side
        # the socket stays open until infer has read everything: libzmq may drop what a closing
        # sender still had in flight to a receiver at its high-water mark
        try:
            wait_for(all_counted, 60, f"{FUZZED} drops counted", interval=0.2)
        except AssertionError as exc:  # say which reasons fell short
            raise AssertionError(f"{exc}: counted {dict(counted())}, expected {dict(expected)}") from None
    finally:
        sock.close(linger=0)
        ctx.term()
    FIGURES["fuzz"]["seconds"] = round(time.monotonic() - t0, 1)
    assert counted() == expected
    assert site.stages()["infer"] == infer and not site.infer_restarts(since)  # no crash, no restart
    frames = site.frames("east")
    wait_for(lambda: site.frames("east") > frames, 30, "east counting after the fuzz")


# --------------------------------------------------------------------------- a full disk under the buffer


def test_a_full_buffer_disk_is_counted_and_counting_goes_on(site: Site) -> None:
    """west buffers every frame onto its full disk: each failed write is counted, and west goes on counting."""
    reason = "disk_full" if site.disk == "tmpfs" else "write_error"   # ENOSPC; EFBIG under RLIMIT_FSIZE
    m = site.metrics()
    assert value(m, "crowd_buffer_write_failures_total", camera="east", reason="disk_full") is not None  # exported for every camera
    failures = wait_for(lambda: value(site.metrics(), "crowd_buffer_write_failures_total", camera="west", reason=reason), 60,
                        f"west's failed buffer writes ({reason}) counted")
    frames = site.frames("west")
    wait_for(lambda: site.frames("west") >= frames + 3 and
             (value(site.metrics(), "crowd_buffer_write_failures_total", camera="west", reason=reason) or 0) > failures, 30,
             "west counting on, each frame's failed write counted")
    assert value(site.metrics(), "crowd_camera_up", camera="west") == 1
    FIGURES["buffer_write_failures"] = {"reason": reason, "counted": value(site.metrics(), "crowd_buffer_write_failures_total",
                                                                            camera="west", reason=reason)}


# --------------------------------------------------------------------------- the supervisor killed, a corrupt model


def test_supervisor_sigkill_leaves_nothing_and_a_restart_with_a_corrupt_model_keeps_every_camera_counting(site: Site) -> None:
    from adapt.store.serving import read_serving

    var = site.root / "var"
    assert read_serving(var, "east")["version"] == "v1"  # east's own version serves it
    stages = site.stages()
    site.proc.kill()
    site.proc.wait()
    t0 = time.monotonic()
    def alive() -> list[str]:
        return [f"{name} (pid {pid}: {Path(f'/proc/{pid}/wchan').read_text(errors='replace') if pid_alive(pid) else ''})"
                for name, pid in stages.items() if pid_alive(pid)]

    try:
        # the time it took is the reported figure; a stage stuck past its SIGTERM ends STOP_GRACE_S later (watch_parent)
        wait_for(lambda: not alive(), STOP_GRACE_S + 20, "every stage to die with the supervisor", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still running: {alive()}") from None
    FIGURES["supervisor_sigkill_stages_gone_s"] = round(time.monotonic() - t0, 1)
    # a stage that ignored its SIGTERM was ended by watch_parent, which left its threads' stacks: reported, not failed
    stuck = {p.stem: p.read_text(errors="replace") for p in (site.root / "run" / "heartbeat").glob("*.stuck")}
    FIGURES["supervisor_sigkill_stuck_stages"] = sorted(stuck)
    for name, text in stuck.items():
        warnings.warn(f"{name} did not stop on SIGTERM after the supervisor's SIGKILL:\n{text}", stacklevel=1)

    # east's new current version cannot be loaded: its ONNX file is garbage
    v2 = site.root / "models" / "east" / "v2"
    v2.mkdir()
    (v2 / "model.pt").symlink_to(site.root / "models" / "east" / "v1" / "model.pt")
    (v2 / "model.onnx").write_bytes(b"not an onnx model" * 64)
    (v2.parent / "current").write_text("v2\n")

    site.lines.clear()
    site.start()  # the ports are free again: no "address in use"
    t0 = time.monotonic()
    wait_for(lambda: site.frames("east") >= 1 and site.frames("west") >= 1, 120, "every camera counting after the restart", interval=0.2)
    FIGURES["restart_with_corrupt_model_to_counting_s"] = round(time.monotonic() - t0, 1)
    m = site.metrics()
    assert value(m, "crowd_model_fallback", camera="east") == 1 and value(m, "crowd_model_fallback", camera="west") == 0
    assert value(m, "crowd_model_load_failures_total", camera="east") >= 1
    rec = read_serving(var, "east")
    assert (rec["model"], rec["version"], rec["fallback"]) == ("east", "v1", True)  # its last good model
    assert "ONNX Runtime cannot load it" in rec["error"]
    assert not [ln for ln in site.lines if "in use" in ln]
    if site.prom_port is not None:
        wait_for(lambda: site.webhook.seen("CrowdModelFallback", "east"), 60, "CrowdModelFallback for east at the webhook")
