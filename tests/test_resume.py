"""Resume continues what ran: the run folder's config.yaml is the truth, only keys that leave what
has been trained alone may change (each change said and recorded with its step), anything else is
refused in one line with nothing written, and config.yaml, metrics.jsonl and summary.json agree."""
import json
import shutil
from dataclasses import replace

import pytest
import torch

from stnkit.app.cli import main
from stnkit.train import checkpoint as ckpt
from stnkit.train import objectives, runs
from test_engine import rows_of, weights, without_time

SMALL = ["steps_per_epoch=3", "batch_size=32", "eval_batch_size=1000", "progress=false", "threads=1"]


def train(tmp_path, *extra, experiment="rts", model="cnn"):
    return main(["train", experiment, "--model", model, *SMALL, f"out={tmp_path}", *extra])


def snapshot(run):
    """Every file of a run folder but the checkpoints, byte for byte."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_resume_of_a_finished_run_keeps_its_own_settings_and_changes_nothing(tmp_path, capsys):
    assert train(tmp_path, "epochs=2", "lr=0.001") == 0
    run = tmp_path / "rts-cnn-seed0"
    before = snapshot(run)
    capsys.readouterr()
    # the shipped config says epochs: 12, lr: 0.002; the run said 2 and 0.001, and that is what continues
    assert main(["train", "rts", "--model", "cnn", f"out={tmp_path}", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "is finished: 2 of 2 epochs" in out and "epochs=N" in out
    assert snapshot(run) == before  # nothing rewritten
    assert runs.read_config(run).lr == 0.001 and [r["lr"] for r in rows_of(run)] == [0.001, 0.001]


def test_a_stopped_run_resumes_under_the_settings_it_started_with(tmp_path, monkeypatch):
    assert train(tmp_path, "epochs=3", "lr=0.001", "name=unbroken") == 0
    real, calls = objectives.loss_and_errors, {"n": 0}

    def crash_in_epoch_2(logits, y):  # epoch 1: 3 steps + 1 eval; then 2 steps of epoch 2
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated kill")
        return real(logits, y)

    monkeypatch.setattr(objectives, "loss_and_errors", crash_in_epoch_2)
    assert train(tmp_path, "epochs=3", "lr=0.001", "name=b") == 130
    monkeypatch.setattr(objectives, "loss_and_errors", real)
    assert main(["train", "--resume", str(tmp_path / "b")]) == 0  # no experiment or model to repeat
    b, a = tmp_path / "b", tmp_path / "unbroken"
    assert [r["lr"] for r in rows_of(b)] == [0.001] * 3
    assert without_time(rows_of(a)) == without_time(rows_of(b))
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert runs.read_config(b) == replace(runs.read_config(a), name="b")  # config.yaml: what ran
    assert [h["event"] for h in runs.history(b)] == ["start", "resume"]


def test_shortening_a_finished_run_is_refused_and_nothing_is_written(tmp_path, capsys):
    assert train(tmp_path, "epochs=3") == 0
    run = tmp_path / "rts-cnn-seed0"
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs=2 is fewer than this run has already trained (3 epochs)" in err
    assert "Traceback" not in err and snapshot(run) == before


@pytest.mark.parametrize("change, key", [("lr=0.1", "lr"), ("batch_size=16", "batch_size"), ("seed=1", "seed"),
                                         ("eval_batch_size=500", "eval_batch_size"), ("--model fcn", "model")])
def test_a_change_to_what_was_trained_is_refused_by_name(tmp_path, capsys, change, key):
    assert train(tmp_path, "epochs=1") == 0
    run = tmp_path / "rts-cnn-seed0"
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *change.split()]) == 2
    err = capsys.readouterr().err
    assert f"cannot change {key}:" in err and "new run" in err and err.count("\n") == 1
    assert snapshot(run) == before
    # refused before any process starts, too
    assert main(["train", "--resume", str(run), *change.split(), "--nproc", "2"]) == 2
    assert f"cannot change {key}:" in capsys.readouterr().err and snapshot(run) == before


def test_extending_a_run_is_said_recorded_and_equals_a_longer_run(tmp_path, capsys):
    assert train(tmp_path, "epochs=3", "lr_steps=[2]", "name=long") == 0
    assert train(tmp_path, "epochs=2", "lr_steps=[2]", "name=b") == 0
    b = tmp_path / "b"
    capsys.readouterr()
    assert main(["train", "--resume", str(b), "epochs=3", "checkpoint_every=2"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2 -> 3 (from global step 6)" in out and "checkpoint_every: 0 -> 2 (from global step 6)" in out
    cfg, summary = runs.read_config(b), json.loads((b / "summary.json").read_text())
    assert cfg.epochs == summary["epochs"] == len(rows_of(b)) == 3  # the three records agree
    assert summary["changes"] == [{"step": 6, "epochs": {"from": 2, "to": 3},
                                   "checkpoint_every": {"from": 0, "to": 2}}]
    assert runs.history(b)[-1]["changes"]["epochs"] == {"from": 2, "to": 3}
    assert without_time(rows_of(b)) == without_time(rows_of(tmp_path / "long"))
    wa, wb = weights(tmp_path / "long"), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_moved_run_folder_resumes_where_it_is(tmp_path):
    assert train(tmp_path, "epochs=1") == 0
    moved = tmp_path / "elsewhere" / "mine"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "rts-cnn-seed0"), moved)
    assert main(["train", "--resume", str(moved), "epochs=2"]) == 0
    assert [r["epoch"] for r in rows_of(moved)] == [1, 2] and not (tmp_path / "rts-cnn-seed0").exists()
    assert ckpt.candidates(moved)[0].name == "step-00000006"


def test_resume_refuses_what_is_not_a_run_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    old = tmp_path / "old-coloc"
    old.mkdir()
    (old / "transformer.pt").write_bytes(b"x")
    assert main(["train", "--resume", str(old)]) == 2
    assert "older stnkit" in capsys.readouterr().err
    assert train(tmp_path, "epochs=1") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "rts-cnn-seed0"), "--config", "x.yaml"]) == 2
    assert "not --config" in capsys.readouterr().err
    assert main(["train"]) == 2 and "name an experiment" in capsys.readouterr().err


def test_a_finished_run_extended_then_stopped_keeps_no_stale_summary(tmp_path, monkeypatch):
    assert train(tmp_path, "epochs=1") == 0
    run = tmp_path / "rts-cnn-seed0"
    real, calls = objectives.loss_and_errors, {"n": 0}

    def crash(logits, y):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(logits, y)

    monkeypatch.setattr(objectives, "loss_and_errors", crash)
    assert main(["train", "--resume", str(run), "epochs=3"]) == 130
    assert not (run / "summary.json").exists()  # not finished: no summary that says it is
    assert len(rows_of(run)) == 1 and runs.read_config(run).epochs == 3
