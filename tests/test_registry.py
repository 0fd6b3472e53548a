import json

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
