"""Training through the engine and the CLI: loss goes down, every artifact is written, resume
reproduces an unbroken run exactly, bad configs and diverging losses stop with clear messages."""
import json

import pytest
import torch
from safetensors.torch import load_file

from stnkit.train import checkpoint as ckpt
from stnkit.train import engine
from stnkit.app.cli import main
from stnkit.train.config import build, parse_override

FAST = dict(experiment="r", model="st-fcn-affine", batch_size=32, steps_per_epoch=4, epochs=2,
            eval_batch_size=1000, progress=False, lr=0.05)


def cfg_for(tmp_path, **kw):
    return build({**FAST, "out": str(tmp_path), **kw})


def weights(run_dir):
    return load_file(str(ckpt.candidates(run_dir)[0] / ckpt.MODEL))


def test_training_lowers_the_loss_and_writes_every_artifact(tmp_path):
    run = engine.train(cfg_for(tmp_path, epochs=3, steps_per_epoch=25, model="fcn", optimizer="adam", lr=0.003),
                       log=lambda *_: None)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["test_err"] < 50
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"] > 0 and summary["test_n"] == 1000
    good = ckpt.latest_good(run)
    assert good is not None and {p.name for p in good.iterdir()} == {ckpt.MODEL, ckpt.EXTRA, ckpt.STATE}
    assert len(ckpt.candidates(run)) <= 2  # keep_checkpoints


def test_resume_after_an_epoch_matches_an_unbroken_run(tmp_path):
    a = engine.train(cfg_for(tmp_path, name="a"), log=lambda *_: None)
    engine.train(cfg_for(tmp_path, name="b", epochs=1), log=lambda *_: None)
    b = engine.train(cfg_for(tmp_path, name="b"), resume=True, log=lambda *_: None)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_mid_epoch_after_a_crash_matches_an_unbroken_run(tmp_path, monkeypatch):
    a = engine.train(cfg_for(tmp_path, name="a", checkpoint_every=2), log=lambda *_: None)
    real, calls = engine.loss_and_errors, {"n": 0}

    def crash_in_epoch_2(logits, y):  # calls: 4 steps, 1 eval, then epoch 2 steps 1, 2 (checkpoint), 3
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated kill")
        return real(logits, y)

    monkeypatch.setattr(engine, "loss_and_errors", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg_for(tmp_path, name="b", checkpoint_every=2), log=lambda *_: None)
    monkeypatch.setattr(engine, "loss_and_errors", real)
    state = json.loads((ckpt.latest_good(tmp_path / "b") / ckpt.STATE).read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # mid-epoch checkpoint
    b = engine.train(cfg_for(tmp_path, name="b", checkpoint_every=2), resume=True, log=lambda *_: None)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(ln)["step"] for ln in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8]  # no duplicated epoch lines


def test_a_damaged_checkpoint_is_named_and_skipped(tmp_path):
    run = engine.train(cfg_for(tmp_path, keep_checkpoints=3), log=lambda *_: None)
    newest = ckpt.candidates(run)[0]
    data = (newest / ckpt.MODEL).read_bytes()
    (newest / ckpt.MODEL).write_bytes(data[: len(data) // 2])  # truncated
    said = []
    assert ckpt.latest_good(run, warn=said.append) == ckpt.candidates(run)[1]
    assert str(newest / ckpt.MODEL) in said[0] and "checksum" in said[0]


def test_nan_loss_stops_with_step_and_checkpoint_named(tmp_path):
    with pytest.raises(engine.TrainingDiverged, match=r"epoch 1, step 1 .*last good checkpoint: none"):
        _nan_run(tmp_path)


def _nan_run(tmp_path):
    cfg = cfg_for(tmp_path, model="fcn", steps_per_epoch=3, epochs=1)
    real = engine.loss_and_errors

    def nan_loss(logits, y):
        loss, err = real(logits, y)
        return loss * float("nan"), err

    engine.loss_and_errors = nan_loss
    try:
        engine.train(cfg, log=lambda *_: None)
    finally:
        engine.loss_and_errors = real


@pytest.mark.parametrize("override, key", [
    ({"lr": -0.1}, "lr"), ({"model": "nope"}, "model"), ({"batch_size": 0}, "batch_size"),
    ({"experiment": "mnist9"}, "experiment"), ({"optimizer": "rmsprop"}, "optimizer"), ({"st_size": "third"}, "st_size"),
])
def test_bad_config_values_name_the_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        cfg_for(tmp_path, **override)


def test_unknown_config_key_and_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        cfg_for(tmp_path, learning_rate=0.1)
    with pytest.raises(ValueError, match="larger than the training set"):
        engine.train(cfg_for(tmp_path, batch_size=5000), log=lambda *_: None)
    assert parse_override("lr_steps=[3, 5]") == ("lr_steps", [3, 5])
    assert parse_override("clip-grad=null") == ("clip_grad", None)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="stnkit data download mnist"):
        engine.train(cfg_for(tmp_path, source="mnist", data_dir=str(tmp_path / "empty")), log=lambda *_: None)


def test_cli_train_eval_show(tmp_path, capsys):
    args = ["train", "r", "--model", "st-cnn-affine", "epochs=1", "steps_per_epoch=2", "batch_size=16",
            f"out={tmp_path}", "progress=false"]
    assert main(args) == 0
    run = tmp_path / "r-st-cnn-affine-seed0"
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # never overwrites a run
    assert main(["eval", str(run)]) == 0 and "test error" in capsys.readouterr().out
    assert main(["show", str(run), "-n", "4"]) == 0 and (run / "transformers.png").is_file()
    assert main(["eval", str(tmp_path / "nothing")]) == 2
