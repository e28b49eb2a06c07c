"""The one engine: loss goes down, every artifact is written and agrees with the others, the
schedule and the optimizer groups do what the config says, resume reproduces an unbroken run
exactly (weights and metric rows), bad configs and diverging losses stop with clear messages."""
import json

import pytest
import torch
from safetensors.torch import load_file

from stnkit.app.cli import main
from stnkit.models import create_model
from stnkit.train import checkpoint as ckpt
from stnkit.train import engine, objectives, runs
from stnkit.train.config import build, parse_override

FAST = dict(experiment="r", model="st-fcn-affine", batch_size=32, steps_per_epoch=4, epochs=2,
            eval_batch_size=1000, progress=False, lr=0.05)


def cfg_for(tmp_path, **kw):
    return build({**FAST, "out": str(tmp_path), **kw})


def weights(run_dir):
    return load_file(str(ckpt.candidates(run_dir)[0] / ckpt.MODEL))


def rows_of(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_training_lowers_the_loss_and_every_record_agrees(tmp_path):
    run = engine.train(cfg_for(tmp_path, epochs=3, steps_per_epoch=25, model="fcn", optimizer="adam", lr=0.003))
    rows = rows_of(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [25, 50, 75]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3 and rows[-1]["test_err"] < 50
    summary = json.loads((run / "summary.json").read_text())
    saved = runs.read_config(run)
    assert summary["epochs"] == saved.epochs == len(rows) == 3 and summary["steps"] == rows[-1]["step"]
    assert summary["test_err"] == rows[-1]["test_err"] and summary["test_n"] == 1000  # the last row, not a rerun
    assert summary["metric"] == "test_err" and summary["objective"] == "classification" and summary["changes"] == []
    # the figure a user reads is the model's: re-scoring the saved weights gives the summary's number
    cfg, model, test = runs.load_run(run)
    assert objectives.Classification().evaluate(model, test, cfg.eval_batch_size)["test_err"] == summary["test_err"]
    good = ckpt.latest_good(run)
    assert good is not None and {p.name for p in good.iterdir()} == {ckpt.MODEL, ckpt.EXTRA, ckpt.STATE}
    assert len(ckpt.candidates(run)) == 2  # keep_checkpoints
    assert [h["event"] for h in runs.history(run)] == ["start"]


def test_lr_follows_the_stepped_schedule_in_the_rows_and_the_optimizer(tmp_path):
    cfg = cfg_for(tmp_path, epochs=4, steps_per_epoch=2, lr=0.08, lr_steps=[1, 3], gamma=0.5, loc_lr_mult=0.25)
    assert [engine.lr_at(cfg, e) for e in range(4)] == [0.08, 0.04, 0.04, 0.02]
    run = engine.train(cfg)
    assert [r["lr"] for r in rows_of(run)] == [0.08, 0.04, 0.04, 0.02]
    state = json.loads((ckpt.candidates(run)[0] / ckpt.STATE).read_text())
    lrs = sorted(g["lr"] for g in state["optimizer"]["param_groups"])  # the last epoch's, as saved
    assert lrs == pytest.approx([0.02 * 0.25, 0.02])


def test_localisation_nets_get_their_own_learning_rate():
    cfg = build({**FAST, "loc_lr_mult": 0.1})
    model = create_model("st-cnn-affine")
    opt = engine.make_optimizer(cfg, model)
    engine.set_lr(opt, 0.05)
    loc = {id(p) for p in engine.localisation_params(model)}
    st = model.transformers[0]
    assert {id(p) for p in [*st.localisation.parameters(), *st.regression.parameters()]} == loc
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert set(by_param) == {id(p) for p in model.parameters()}  # every parameter, once
    assert all(by_param[i] == pytest.approx(0.005) for i in loc)
    assert all(v == pytest.approx(0.05) for i, v in by_param.items() if i not in loc)


def test_frozen_parameters_stay_out_of_the_optimizer():
    cfg = build({"experiment": "coloc", "model": "coloc-attention", "optimizer": "adam"})
    model = create_model("coloc-attention")
    opt = engine.make_optimizer(cfg, model)
    inside = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not inside & {id(p) for p in model.encoder.parameters()}
    assert inside == {id(p) for p in model.transformers.parameters()}


def test_resume_after_an_epoch_matches_an_unbroken_run(tmp_path):
    a = engine.train(cfg_for(tmp_path, name="a"))
    engine.train(cfg_for(tmp_path, name="b", epochs=1))
    b = engine.train(cfg_for(tmp_path, name="b"), resume=True)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert without_time(rows_of(a)) == without_time(rows_of(b))
    changes = json.loads((b / "summary.json").read_text())["changes"]
    assert changes == [{"step": 4, "epochs": {"from": 1, "to": 2}}]  # the record says what changed, and when


def test_resume_mid_epoch_after_a_crash_matches_an_unbroken_run(tmp_path, monkeypatch):
    a = engine.train(cfg_for(tmp_path, name="a", checkpoint_every=2))
    real, calls = objectives.loss_and_errors, {"n": 0}

    def crash_in_epoch_2(logits, y):  # calls: 4 steps, 1 eval, then epoch 2 steps 1, 2 (checkpoint), 3
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated kill")
        return real(logits, y)

    monkeypatch.setattr(objectives, "loss_and_errors", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg_for(tmp_path, name="b", checkpoint_every=2))
    monkeypatch.setattr(objectives, "loss_and_errors", real)
    state = json.loads((ckpt.latest_good(tmp_path / "b") / ckpt.STATE).read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # mid-epoch checkpoint
    assert state["epoch_sums"][0]["seen"] == 64 and state["epoch_sums"][0]["sums"]["loss"] > 0  # the epoch's sums go with it
    b = engine.train(cfg_for(tmp_path, name="b", checkpoint_every=2), resume=True)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the resumed epoch's row counts all its steps, not only those after the resume
    assert without_time(rows_of(a)) == without_time(rows_of(b))


def test_a_damaged_checkpoint_is_named_and_skipped(tmp_path):
    run = engine.train(cfg_for(tmp_path, keep_checkpoints=3))
    newest = ckpt.candidates(run)[0]
    data = (newest / ckpt.MODEL).read_bytes()
    (newest / ckpt.MODEL).write_bytes(data[: len(data) // 2])  # truncated
    said = []
    assert ckpt.latest_good(run, warn=said.append) == ckpt.candidates(run)[1]
    assert str(newest / ckpt.MODEL) in said[0] and "checksum" in said[0]


def test_nan_loss_stops_with_step_and_checkpoint_named(tmp_path, monkeypatch):
    real = objectives.loss_and_errors

    def nan_loss(logits, y):
        loss, err = real(logits, y)
        return loss * float("nan"), err

    monkeypatch.setattr(objectives, "loss_and_errors", nan_loss)
    with pytest.raises(engine.TrainingDiverged, match=r"epoch 1, step 1 .*last good checkpoint: none"):
        engine.train(cfg_for(tmp_path, model="fcn", steps_per_epoch=3, epochs=1))


@pytest.mark.parametrize("override, key", [
    ({"lr": -0.1}, "lr"), ({"model": "nope"}, "model"), ({"batch_size": 0}, "batch_size"),
    ({"experiment": "mnist9"}, "experiment"), ({"optimizer": "rmsprop"}, "optimizer"), ({"st_size": "third"}, "st_size"),
    ({"model": "coloc-attention"}, "model"), ({"restarts": 2}, "restarts"),
])
def test_bad_config_values_name_the_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        cfg_for(tmp_path, **override)


def test_unknown_config_key_and_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        cfg_for(tmp_path, learning_rate=0.1)
    with pytest.raises(ValueError, match="larger than the training set"):
        engine.train(cfg_for(tmp_path, batch_size=5000))
    assert parse_override("lr_steps=[3, 5]") == ("lr_steps", [3, 5])
    assert parse_override("clip-grad=null") == ("clip_grad", None)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="stnkit data download mnist"):
        engine.train(cfg_for(tmp_path, source="mnist", data_dir=str(tmp_path / "empty")))


def test_cli_train_eval_show(tmp_path, capsys):
    args = ["train", "r", "--model", "st-cnn-affine", "epochs=1", "steps_per_epoch=2", "batch_size=16",
            f"out={tmp_path}", "progress=false"]
    assert main(args) == 0
    run = tmp_path / "r-st-cnn-affine-seed0"
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # never overwrites a run
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run)]) == 0
    assert f"test err {summary['test_err']:.2f}%" in capsys.readouterr().out
    assert main(["show", str(run), "-n", "4"]) == 0 and (run / "transformers.png").is_file()
    assert main(["eval", str(tmp_path / "nothing")]) == 2
