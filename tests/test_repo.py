"""What the repository keeps out: frames of people out of git and the image, torch out of the light stages, research out of the product."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Frames of people (crowdwatch label, the adapter buffer) and the camera's scene model.
PRIVATE = ("labels/cam/images/a.jpg", "var/scene/cam/scene.npz", "var/buffer/cam/x.jpg")


def in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode == 0 and Path(r.stdout.strip()).resolve() == ROOT


@pytest.mark.skipif(not in_git_checkout(), reason="needs git and a git checkout of the repository")
@pytest.mark.parametrize("path", PRIVATE)
def test_git_ignores_frames_of_people(path: str) -> None:
    r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"git would commit {path}: {r.stderr}"


def test_gitignore_has_no_end_of_line_comments() -> None:
    # git reads "/labels/   # note" as a pattern with spaces and a '#' in it, which matches nothing
    for line in (ROOT / ".gitignore").read_text().splitlines():
        assert line.startswith("#") or "#" not in line, line


def test_docker_build_context_leaves_out_local_data() -> None:
    patterns = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"labels", "var", "runs", "data"} <= patterns


@pytest.mark.parametrize("module", ["streamer.ingest", "streamer.web"])
def test_light_stages_never_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", f"importing {module} imports torch"


def test_the_product_imports_neither_research_nor_bench() -> None:
    offenders = []
    for pkg in ("adapt", "streamer", "crowdwatch"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("research", "bench")]
    assert offenders == []
