import json
import shutil

import pytest

from adapt.model.checkpoint import save_checkpoint
from adapt.model.network import CrowdCounter, ModelConfig
from adapt.store.names import InvalidCameraName
from adapt.store.registry import BASE, Registry, RegistryError, ensure_onnx


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, CrowdCounter(ModelConfig(), pretrained=False), {"version": "x"})
    return path


def test_publish_current_resolve_and_rollback(tmp_path, checkpoint):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no base model"):
        reg.resolve("lobby")
    base = reg.publish(BASE, {"model.pt": checkpoint}, {"parent": None}, "v1")
    assert reg.resolve("lobby") == base  # a camera without its own model is served by base
    a = reg.publish("lobby", {"model.pt": checkpoint}, {"parent": "v1"}, "v2")
    b = reg.publish("lobby", {"model.pt": checkpoint}, {"parent": "v2"}, "v3")
    assert reg.resolve("lobby") == b
    assert json.loads((b.path / "card.json").read_text())["parent"] == "v2"
    assert [v.version for v in reg.versions("lobby")] == ["v2", "v3"]
    assert reg.rollback("lobby").version == "v2"
    assert reg.current("lobby") == a
    assert reg.rollback("lobby", to="v3").version == "v3"
    with pytest.raises(RegistryError, match="no version"):
        reg.rollback("lobby", to="v9")
    reg.set_current("lobby", "v2")
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("lobby")  # v2's parent v1 belongs to base, and nothing older exists


def test_failed_publish_leaves_nothing_visible(tmp_path, checkpoint):
    reg = Registry(tmp_path)
    reg.publish("lobby", {"model.pt": checkpoint}, {}, "v1")
    with pytest.raises(FileNotFoundError):
        reg.publish("lobby", {"model.pt": checkpoint, "model.onnx": tmp_path / "missing.onnx"}, {}, "v2")
    assert [v.version for v in reg.versions("lobby")] == ["v1"]
    assert reg.current("lobby").version == "v1"
    assert not [p for p in (tmp_path / "lobby").iterdir() if p.name.startswith(".staging")]
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish("lobby", {"model.pt": checkpoint}, {}, "v1")


def test_pointer_to_a_missing_version_is_an_error(tmp_path, checkpoint):
    reg = Registry(tmp_path)
    reg.publish("lobby", {"model.pt": checkpoint}, {}, "v1")
    (tmp_path / "lobby" / "current").write_text("../../etc\n")
    with pytest.raises(RegistryError, match="not a version"):
        reg.current("lobby")


@pytest.mark.parametrize("name", ["../x", "Lobby", "", "a/b", "x" * 65])
def test_camera_names_are_validated_before_paths(tmp_path, name):
    with pytest.raises(InvalidCameraName):
        Registry(tmp_path).camera_dir(name)


def test_pointer_mtime_changes_on_switch(tmp_path, checkpoint):
    reg = Registry(tmp_path)
    assert reg.pointer_mtime("lobby") is None
    reg.publish("lobby", {"model.pt": checkpoint}, {}, "v1")
    assert reg.pointer_mtime("lobby") is not None


def test_ensure_onnx_exports_once(tmp_path, checkpoint):
    reg = Registry(tmp_path)
    v = reg.publish(BASE, {"model.pt": checkpoint}, {}, "v1")
    assert not v.onnx.exists()
    path = ensure_onnx(v)
    assert path.is_file() and path.stat().st_size > 1_000_000
    mtime = path.stat().st_mtime_ns
    assert ensure_onnx(v).stat().st_mtime_ns == mtime


def test_models_command_lists_and_rolls_back(tmp_path, checkpoint, capsys):
    from adapt.commands.models import main

    reg = Registry(tmp_path)
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": None}, "v1")
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": "v1", "validation": {"verdict": "accept"}}, "v2")
    assert main(["--root", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "* v2" in out and "accept" in out
    assert main(["--root", str(tmp_path), "rollback", "lobby"]) == 0
    assert reg.current("lobby").version == "v1"
    assert main(["--root", str(tmp_path), "rollback", "../etc"]) == 1


def test_models_list_shows_what_actually_serves(tmp_path, checkpoint, capsys):
    from adapt.commands.models import main
    from adapt.store.serving import write_serving

    root, var = tmp_path / "models", tmp_path / "var"
    reg = Registry(root)
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": None}, "v1")
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": "v1"}, "v2")
    # v2 is current but failed to load: infer serves v1, its last good version
    write_serving(var, "lobby", "lobby", "v1", root / "lobby" / "v1", fallback=True, error="BackendError: cannot load model.onnx")
    assert main(["--root", str(root), "list", "--var", str(var)]) == 0
    out = capsys.readouterr().out
    assert "> v2" in out and "* v1" in out and "FALLBACK" in out and "cannot load model.onnx" in out
    # served by base
    write_serving(var, "lobby", "base", "b1", root / "base" / "b1", fallback=True, error="x")
    assert main(["--root", str(root), "list", "lobby", "--var", str(var)]) == 0
    out = capsys.readouterr().out
    assert "served by base/b1" in out and "* " not in out and "> v2" in out


def test_rollback_repairs_a_dangling_current(tmp_path, checkpoint, capsys):
    from adapt.commands.models import main

    reg = Registry(tmp_path)
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": None}, "v1")
    reg.publish("lobby", {"model.pt": checkpoint}, {"parent": "v1"}, "v2")
    (tmp_path / "lobby" / "current").write_text("v3\n")  # names a version that is not there
    assert main(["--root", str(tmp_path), "list", "--var", str(tmp_path / "var")]) == 0
    assert "DANGLING" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "rollback", "lobby"]) == 0
    assert reg.current("lobby").version == "v2"  # the newest version older than the dangling name
    (tmp_path / "lobby" / "current").write_text("v3\n")
    assert main(["--root", str(tmp_path), "rollback", "lobby", "--to", "v1"]) == 0
    assert reg.current("lobby").version == "v1"
    # nothing left to point at: the pointer goes, base serves
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "current").write_text("gone\n")
    assert reg.rollback("solo") is None and reg.current("solo") is None


def test_base_rolls_back_like_a_camera(tmp_path, checkpoint, capsys, monkeypatch):
    """`crowdwatch models rollback base` after `crowdwatch train --publish` published a second base model."""
    from adapt.commands.models import main
    from adapt.training.train import TrainConfig, publish_base

    names = iter(["v20260101T000000Z", "v20260102T000000Z"])
    monkeypatch.setattr("adapt.store.registry.new_version_name", lambda: next(names))
    for _ in range(2):
        publish_base(checkpoint, TrainConfig(registry=str(tmp_path)))
    reg = Registry(tmp_path)
    old, new = reg.versions(BASE)  # publishing kept the previous version
    assert reg.current(BASE) == new and reg.resolve("lobby") == new
    assert main(["--root", str(tmp_path), "rollback", "base"]) == 0
    assert f"base: current is now {old.version}" in capsys.readouterr().out
    assert reg.current(BASE) == old and reg.resolve("lobby") == old  # cameras without their own model follow
    assert main(["--root", str(tmp_path), "rollback", "base"]) == 1
    err = capsys.readouterr().err
    assert "no earlier version" in err and "fall back to base" not in err
    assert main(["--root", str(tmp_path), "rollback", "base", "--to", new.version]) == 0
    assert reg.current(BASE) == new
    # a dangling base pointer is repaired like a camera's, but never removed: nothing would serve
    (tmp_path / BASE / "current").write_text("v20270101T000000Z\n")
    assert reg.rollback(BASE) == new
    for v in (old, new):
        shutil.rmtree(v.path)
    with pytest.raises(RegistryError, match="no base version is left"):
        reg.rollback(BASE)
    assert (tmp_path / BASE / "current").is_file()
