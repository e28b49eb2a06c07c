"""The logs every run leaves: metrics.csv (the same numbers as metrics.jsonl, also after a resume
dropped epochs), curves.png (the rows, drawn), train.log (the console's lines, and no handler left
behind), TensorBoard events when asked for (and a one-line error when tensorboard is missing), and
`stnkit plot` overlaying several runs."""
import csv
import logging
import shutil
import signal
import sys

import numpy as np
import pytest
from PIL import Image

from stnkit._io import MissingDependency
from stnkit.app.cli import main
from stnkit.app.curves import curves_figure, read_runs
from stnkit.train import checkpoint as ckpt
from stnkit.train import engine, objectives
from stnkit.train.stops import TrainingInterrupted
from test_engine import cfg_for, rows_of
from test_stops import signal_at_call


def set_level(level):
    """setLevel, not the attribute: logging caches what each level lets through."""
    logging.getLogger("stnkit").setLevel(level)


@pytest.fixture(autouse=True)
def info_level():
    """stnkit's logger at INFO, as the command line sets it (the tests below that are about
    library callers set it otherwise), and back afterwards."""
    before = logging.getLogger("stnkit").level
    set_level(logging.INFO)
    yield
    set_level(before)


def csv_rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def same_numbers(table, rows):
    assert len(table) == len(rows)
    for t, r in zip(table, rows):
        assert list(t) == list(r)  # the same columns, in the same order
        assert all(float(t[k]) == float(v) for k, v in r.items())


def file_handlers():
    return [h for h in logging.getLogger("stnkit").handlers if isinstance(h, logging.FileHandler)]


def test_csv_curves_and_log_follow_every_epoch(tmp_path):
    run = engine.train(cfg_for(tmp_path, epochs=3, lr_steps=[2]))
    rows = rows_of(run)
    same_numbers(csv_rows(run), rows)
    w, h = Image.open(run / "curves.png").size
    assert (w, h) == (3 * 360, 330)  # error, loss, learning rate: 3.6 x 3.3 in each at 100 dpi
    text = (run / "train.log").read_text()
    assert "epoch 1/3: train loss" in text and "epoch 3/3" in text and f"-> {run}" in text
    assert not file_handlers()  # the run's log file is let go


def test_the_curves_are_the_rows():
    rows = [{"epoch": e, "lr": 0.1 * 0.1 ** (e > 1), "train_loss": 2.0 / e, "train_err": 50.0 / e,
             "test_loss": 2.5 / e, "test_err": 60.0 / e} for e in (1, 2, 3)]
    fig = curves_figure([("a", rows), ("b", rows[:2])])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["error", "loss", "learning rate"]
    err = fig.axes[0]
    assert err.get_ylabel() == "error (%)" and err.get_xlabel() == "epoch"
    (test_a,) = [ln for ln in err.get_lines() if ln.get_gid() == "a:test_err"]
    np.testing.assert_allclose(test_a.get_ydata(), [60, 30, 20])
    assert list(test_a.get_xdata()) == [1, 2, 3] and test_a.get_linestyle() == "-"
    (train_b,) = [ln for ln in err.get_lines() if ln.get_gid() == "b:train_err"]
    assert train_b.get_linestyle() == "--" and len(train_b.get_ydata()) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]  # one entry per run, by colour
    assert [t.get_text() for t in err.get_legend().get_texts()] == ["train", "test"]  # the line styles
    assert fig.axes[2].get_yscale() == "log" and fig.axes[2].get_legend() is None  # the lr fell tenfold
    coloc = curves_figure([("c", [{"epoch": 1, "lr": 0.001, "train_loss": 0.6, "iou_over_half": 3.0}])])
    assert [ax.get_title() for ax in coloc.axes] == ["crops on the digit", "loss", "learning rate"]
    with pytest.raises(ValueError, match="no finished epoch"):
        curves_figure([("d", [])])


def test_a_resume_that_drops_epochs_rewrites_the_csv(tmp_path, monkeypatch):
    run = engine.train(cfg_for(tmp_path, epochs=3, keep_checkpoints=3))
    shutil.rmtree(ckpt.candidates(run)[0])  # the newest (epoch 3) is lost: the run goes back to epoch 2
    (run / "summary.json").unlink()

    def crash(run_, epoch):
        raise RuntimeError("crash before any step")

    monkeypatch.setattr(engine, "one_epoch", crash)
    with pytest.raises(RuntimeError, match="crash"):
        engine.train(cfg_for(tmp_path, epochs=3, keep_checkpoints=3), resume=True)
    assert len(rows_of(run)) == 2
    same_numbers(csv_rows(run), rows_of(run))  # the CSV dropped epoch 3 too
    assert not file_handlers()  # let go on an error as well
    assert "resuming" in (run / "train.log").read_text().split("epoch 3/3")[-1]  # appended, not replaced


def test_the_log_file_gets_info_lines_for_a_library_caller_and_the_level_comes_back(tmp_path, monkeypatch):
    logger = logging.getLogger("stnkit")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # nobody configured logging (pytest does,
    monkeypatch.setattr(logger, "handlers", [])  # and the command line, when a test ran it before)
    set_level(logging.WARNING)
    run = engine.train(cfg_for(tmp_path, epochs=1))
    assert "epoch 1/1" in (run / "train.log").read_text()
    assert logger.level == logging.WARNING


def test_a_callers_own_logging_levels_are_kept(tmp_path, monkeypatch):
    import io

    console = io.StringIO()
    handler = logging.StreamHandler(console)  # what logging.basicConfig(level=WARNING) sets up
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    monkeypatch.setattr(logging.getLogger("stnkit"), "handlers", [])
    set_level(logging.WARNING)
    engine.train(cfg_for(tmp_path, epochs=1))
    assert "epoch 1/1" not in console.getvalue()  # the caller's console stays as quiet as they asked


def test_plot_overlays_several_runs_and_refuses_what_is_not_one(tmp_path, capsys):
    a = engine.train(cfg_for(tmp_path, name="a", epochs=2))
    b = engine.train(cfg_for(tmp_path, name="b", epochs=2, model="fcn"))
    out = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 360, 330) and "2 run(s)" in capsys.readouterr().out
    fig = curves_figure(read_runs([a, b]))  # what was drawn
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    (test_b,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "b:test_err"]
    np.testing.assert_allclose(test_b.get_ydata(), [r["test_err"] for r in rows_of(b)])
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    (b / "metrics.jsonl").write_text("")
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no finished epoch yet" in err and err.count("\n") == 1


def test_tensorboard_events_hold_the_rows_the_step_losses_and_the_figure(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = engine.train(cfg_for(tmp_path, epochs=2, tensorboard=True, log_every=2))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = rows_of(run)
    test_err = events.Scalars("epoch/test_err")
    assert [e.step for e in test_err] == [r["step"] for r in rows] == [4, 8]
    np.testing.assert_allclose([e.value for e in test_err], [r["test_err"] for r in rows], rtol=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    np.testing.assert_allclose([e.value for e in events.Scalars("train/lr")], 0.05)
    assert len(events.Images("transformers")) == 2  # the transformer figure, each epoch
    assert (run / "metrics.csv").is_file()


def test_without_tensorboard_asking_for_it_fails_at_once_and_nothing_else_breaks(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingDependency, match=r"needs tensorboard: pip install stnkit\[tb\]"):
        engine.train(cfg_for(tmp_path, tensorboard=True))
    assert not (tmp_path / "r-st-fcn-affine-seed0").exists()  # refused before anything was written
    assert main(["train", "r", "--model", "fcn", "epochs=1", "steps_per_epoch=2", "progress=false",
                 f"out={tmp_path}", "tensorboard=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboard" in err and "pip install stnkit[tb]" in err
    run = engine.train(cfg_for(tmp_path, epochs=1))  # tensorboard=false (the default) needs nothing
    assert (run / "curves.png").is_file() and not (run / "tensorboard").exists()


def test_a_stopped_and_resumed_run_keeps_one_record_of_every_step(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_for(tmp_path, epochs=3, tensorboard=True, log_every=1)
    real = signal_at_call(monkeypatch, 6, signal.SIGINT)  # epoch 1: 4 steps + 1 eval, then epoch 2
    with pytest.raises(TrainingInterrupted):
        engine.train(cfg)
    assert not file_handlers()
    monkeypatch.setattr(objectives, "loss_and_errors", real)
    run = engine.train(cfg, resume=True)
    rows = rows_of(run)
    same_numbers(csv_rows(run), rows)
    text = (run / "train.log").read_text()
    assert text.index("stnkit: stopped by SIGINT at epoch 2, step 1") < text.index("resuming") < text.index("epoch 3/3")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # saved at step 5, resumed at step 6: each step logged once, step 5 kept
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    test_err = events.Scalars("epoch/test_err")
    assert [e.step for e in test_err] == [r["step"] for r in rows] == [4, 8, 12]
    np.testing.assert_allclose([e.value for e in test_err], [r["test_err"] for r in rows], rtol=1e-6)


def test_the_csv_keeps_every_column_in_order_of_first_appearance(tmp_path):
    from stnkit.train.logs import write_csv

    rows = [{"epoch": 1, "step": 3, "restart_loss": [0.5, 0.25]}, {"epoch": 2, "step": 6, "spread": 0.5}]
    write_csv(tmp_path / "m.csv", rows)
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "epoch,step,restart_loss,spread", '1,3,"[0.5, 0.25]",', "2,6,,0.5"]  # a list as JSON, a missing key empty
