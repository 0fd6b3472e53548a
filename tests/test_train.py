"""The training loop on a tiny dataset: checkpoints, resume mid-epoch and after signals, bad data, bad settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from adapt.model.checkpoint import load_checkpoint
from adapt.training.interrupt import TrainingInterrupted
from adapt.training.resume import DataKey, EpochBatchSampler, ResumeError, restore_run
from adapt.training.train import TrainConfig, load_recipe, parse_dataset_spec, read_training_items, train
from tests.test_adapt import write_shanghaitech

ROOT = Path(__file__).resolve().parents[1]


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
    # the next batch is the first of epoch 1
    assert (last.train_state["epoch"], last.train_state["step"]) == (1, 0) and "optimizer" in last.train_state
    # a longer run in the same directory continues where the last one stopped
    train(config(tiny, epochs=2))
    assert "resumed from" in capsys.readouterr().out
    history = json.loads((tiny / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert load_checkpoint(tiny / "run" / "last.pt").train_state["epoch"] == 2


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


# ----------------------------------------------------------------- resuming exactly, mid-epoch included


@pytest.fixture(scope="module")
def reference(tiny):
    """Two epochs of two steps each, never interrupted."""
    train(config(tiny, out=str(tiny / "reference"), epochs=2))
    return tiny / "reference"


def position(out: Path) -> tuple[int, int]:
    ts = load_checkpoint(out / "last.pt").train_state
    return ts["epoch"], ts["step"]


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights (BatchNorm statistics included), optimiser moments, best checkpoint and history."""
    la, lb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert la.meta["weights_sha256"] == lb.meta["weights_sha256"]
    assert load_checkpoint(a / "best.pt").meta["weights_sha256"] == load_checkpoint(b / "best.pt").meta["weights_sha256"]
    sa, sb = la.train_state["optimizer"]["state"], lb.train_state["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    ha, hb = ([{k: v for k, v in h.items() if k != "seconds"} for h in c.train_state["history"]] for c in (la, lb))
    assert ha == hb and la.train_state["best"] == lb.train_state["best"]


def test_signals_mid_batch_and_between_batches_resume_to_the_same_weights(tiny, reference, capsys):
    out, handler = tiny / "signalled", signal.getsignal(signal.SIGTERM)

    def sigterm_mid_forward(model, state):
        if (state.epoch, state.step) == (0, 1):
            # arrives in the forward pass, after the encoder's BatchNorm layers moved their statistics
            model.decoder_out.register_forward_hook(lambda *_: os.kill(os.getpid(), signal.SIGTERM))

    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(tiny, out=str(out), epochs=2), on_batch=sigterm_mid_forward)
    assert stopped.value.exit_code == 128 + signal.SIGTERM and "at epoch 0 step 1/2" in str(stopped.value)
    assert position(out) == (0, 1)  # the batch in flight is not in the checkpoint
    assert signal.getsignal(signal.SIGTERM) is handler  # put back when training stops
    with pytest.raises(ResumeError, match="mid-epoch"):  # another seed would give other batches
        train(config(tiny, out=str(out), epochs=2, seed=1))

    def ctrl_c_between_batches(model, state):
        if (state.epoch, state.step) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(tiny, out=str(out), epochs=2), on_batch=ctrl_c_between_batches)
    assert "resumed from" in capsys.readouterr().out
    assert stopped.value.exit_code == 128 + signal.SIGINT and position(out) == (1, 1)
    train(config(tiny, out=str(out), epochs=2))
    assert "at epoch 1 step 1/2" in capsys.readouterr().out
    assert_same_run(reference, out)


class Killed(Exception):
    """Stands for SIGKILL or a power cut: the run gets no chance to save."""


def test_a_run_killed_without_warning_resumes_from_its_periodic_checkpoint(tiny, reference):
    out = tiny / "killed"

    def kill(model, state):
        if (state.epoch, state.step) == (1, 1):
            raise Killed

    with pytest.raises(Killed):
        train(config(tiny, out=str(out), epochs=2, checkpoint_every_s=0), on_batch=kill)
    assert position(out) == (1, 1)  # saved mid-epoch, after the step before
    train(config(tiny, out=str(out), epochs=2))
    assert_same_run(reference, out)


def test_each_epoch_has_its_own_order_fixed_by_seed_and_epoch():
    sampler = EpochBatchSampler(10, 3, seed=0)
    epoch0 = list(sampler)
    assert len(epoch0) == 3 and len({i for b in epoch0 for i in b}) == 9  # full batches only, no repeats
    sampler.set_position(1)
    assert list(sampler) != epoch0
    sampler.set_position(0, start=2)
    assert list(sampler) == epoch0[2:] and len(sampler) == 1
    assert list(EpochBatchSampler(10, 3, seed=0)) == epoch0


def test_a_last_pt_from_before_mid_epoch_resume_continues_at_the_next_epoch(tmp_path):
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.0}]))
    old = {"optimizer": optimizer.state_dict(), "epoch": 1, "best": 1.0}  # epoch: the last one finished
    state = restore_run(old, DataKey(8, 4, 0), optimizer, scaler, tmp_path / "history.json")
    assert (state.epoch, state.step, state.best, len(state.history)) == (2, 0, 1.0, 2)


def test_crowdwatch_train_saves_on_sigterm_to_its_process_group_and_resumes(tiny, tmp_path):
    """A session that ends signals every process of the run, its DataLoader worker included."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "streamer.cli", "train", "--data", f"{tiny / 'data'}:shanghaitech", "--out", str(out), "--epochs", "1000",
           "--batch-size", "4", "--crop", "64", "--workers", "1", "--device", "cpu", "--checkpoint-every", "0"]

    def run_until_it_saves(sig: int) -> subprocess.CompletedProcess:
        before = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + 600  # seconds on a quiet machine; minutes on a starved one
        while not ((out / "last.pt").exists() and (out / "last.pt").stat().st_mtime_ns != before):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    first = run_until_it_saves(signal.SIGTERM)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    epoch, step = position(out)
    assert f"saved {out / 'last.pt'} at epoch {epoch} step {step}/2" in first.stderr
    second = run_until_it_saves(signal.SIGINT)
    assert second.returncode == 128 + signal.SIGINT, second.stderr
    assert f"resumed from {out / 'last.pt'} at epoch {epoch} step {step}/2" in second.stdout


def test_a_run_that_fails_with_data_workers_running_exits(tiny, tmp_path):
    """The workers ignore SIGTERM, so an uncaught error must not leave Python's exit waiting for them."""
    code = (
        "import sys; from adapt.training.train import TrainConfig, train\n"
        "def fail(model, state):\n"
        "    if state.step == 1: raise RuntimeError('boom')\n"
        f"train(TrainConfig(train=[{str(tiny / 'data')!r}], out={str(tmp_path / 'run')!r}, epochs=1, batch_size=4, crop=64, workers=1,"
        " device='cpu'), on_batch=fail)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr


# ----------------------------------------------------------------- data that cannot train a density model


def write_json_set(root: Path, counts: list[int], points="ok") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, n in enumerate(counts):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((64, 64, 3), 127, np.uint8))
        pts = [[10.0 + j, 20.0] for j in range(n)] if points == "ok" else points
        (root / "labels" / f"{i}.json").write_text(json.dumps({"points": pts}))
    return root


@pytest.mark.parametrize("case, message", [
    ("no people", "no labelled person in 4 training images of {root}:json: density training needs people"),
    ("no images", "no images found under {root}"),
    ("bad labels", "training dataset {root}: none of its 4 files is usable"),
    ("too few", "2 usable training images make no full batch of 4"),
])
def test_training_refuses_data_it_cannot_learn_from(tmp_path, capsys, case, message):
    from adapt.commands.train import main

    root = tmp_path / "set"
    if case == "no images":
        (root / "images").mkdir(parents=True)
    else:
        write_json_set(root, {"too few": [3, 1]}.get(case, [0, 0, 0, 0]), points="x" if case == "bad labels" else "ok")
    assert main(["--data", f"{root}:json", "--out", str(tmp_path / "run"), "--device", "cpu", "--workers", "0", "--crop", "64",
                 "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert message.format(root=root) in err
    if case == "bad labels":
        assert f"{root}: skipped 4 items" in err  # each bad file is counted, with the first reason
    assert not (tmp_path / "run" / "last.pt").exists()


def test_empty_scenes_train_beside_a_set_with_people(tmp_path, tiny):
    empty = write_json_set(tmp_path / "empty", [0, 0])
    items = read_training_items([f"{empty}:json", f"{tiny / 'data'}:shanghaitech"])
    assert len(items) == 10 and sum(a.count for a in items) > 0
