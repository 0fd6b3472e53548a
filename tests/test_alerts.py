"""Alert rules: promtool validates and unit-tests them; the house rules are checked here.

CI installs Debian's `prometheus` package for promtool; without it the promtool
tests skip with that reason (the structural checks below still run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from streamer.exporter import Metrics

PROM = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus); CI installs it"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", "alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests() -> None:
    out = promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def alert_blocks() -> dict[str, str]:
    text = (PROM / "alerts.yml").read_text()
    blocks = re.split(r"^\s*- alert:\s*", text, flags=re.M)[1:]
    return {b.split("\n", 1)[0].strip(): b for b in blocks}


def expr_of(block: str) -> str:
    m = re.search(r"expr:\s*(\|\s*\n)?(.*?)\n\s*for:", block, flags=re.S)
    assert m, block
    return m.group(2)


def test_every_alert_has_for_and_compares_against_threshold_gauges() -> None:
    alerts = alert_blocks()
    assert len(alerts) >= 9
    exported = {m.name for m in Metrics(process_metrics=False).registry.collect()}
    for name, block in alerts.items():
        assert re.search(r"^\s*for:\s*\d+[smhd]\s*$", block, flags=re.M), f"{name} has no for:"
        expr = expr_of(block)
        # Every >/< comparison is against a gauge joined on(camera), never a number ...
        # (refused clients belong to no camera: any refusal of an unknown key is the alert).
        for m in re.finditer(r"[<>]=?", expr):
            if "crowd_transport_refused_total" in expr and expr[m.end():].strip() == "0":
                continue
            assert expr[m.end():].lstrip().startswith("on(camera)"), f"{name}: {expr[m.start():m.start() + 30]!r}"
        # ... except the boolean checks: "is down", "is on a fallback model".
        for m in re.finditer(r"==\s*([0-9.]+)", expr):
            assert (m.group(1) == "0" and re.search(r"\bup\b|crowd_camera_up", expr)) or (m.group(1) == "1" and "crowd_model_fallback" in expr), name
        # Every crowd_* metric a rule uses is one the exporter actually exports.
        for metric in re.findall(r"\bcrowd_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|total)$", "", metric)
            assert base in exported, f"{name} uses {metric}, which the exporter does not export"


def test_every_alert_has_a_firing_and_a_not_firing_unit_test() -> None:
    text = (PROM / "alerts_test.yml").read_text()
    cases = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    for name in alert_blocks():
        assert name in firing, f"{name} has no firing test"
        assert name in quiet, f"{name} has no not-firing test"
