"""The training loop on a tiny dataset: checkpoints, resume, bad settings."""

import json

import numpy as np
import pytest

from adapt.model.checkpoint import load_checkpoint
from adapt.training.train import TrainConfig, load_recipe, parse_dataset_spec, train
from tests.test_adapt import write_shanghaitech


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_shanghaitech(root / "data", 8, np.random.default_rng(1))
    return root


def config(tiny, **kw):
    base = dict(train=[f"{tiny / 'data'}:shanghaitech"], val=str(tiny / "data"), out=str(tiny / "run"), epochs=1, batch_size=4,
                crop=64, workers=0, device="cpu", val_max_side=128, model={"masks": 4})
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_checkpoints_and_resumes(tiny, capsys):
    best = train(config(tiny, epochs=1))
    assert best.name == "best.pt"
    history = json.loads((tiny / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0]
    assert {"loss", "val_mae", "val_rmse"} <= set(history[0])
    last = load_checkpoint(tiny / "run" / "last.pt")
    assert last.train_state["epoch"] == 0 and "optimizer" in last.train_state
    # a longer run in the same directory continues where the last one stopped
    train(config(tiny, epochs=2))
    assert "resumed from" in capsys.readouterr().out
    history = json.loads((tiny / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert load_checkpoint(tiny / "run" / "last.pt").train_state["epoch"] == 1


def test_bad_settings_are_refused(tiny):
    with pytest.raises(ValueError, match="multiple of the number of masks"):
        train(config(tiny, batch_size=3, out=str(tiny / "bad")))
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"epochs": 1, "epoch": 2})
    with pytest.raises(ValueError, match="not found"):
        load_recipe("no-such-recipe")


def test_dataset_spec_and_the_base_recipe_parse(tiny):
    assert parse_dataset_spec("/x/y:json") == (parse_dataset_spec("/x/y")[0], "json")
    assert parse_dataset_spec("/x/y")[1] == "shanghaitech"
    base = load_recipe("base")
    assert base.batch_size % base.model.get("masks", 4) == 0 and base.synth
