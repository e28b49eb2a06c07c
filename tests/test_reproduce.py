"""`stnkit reproduce`: every row and column of a table is scheduled, results land beside the
paper's numbers, finished rows are not retrained."""
import json

import pytest

from stnkit.app import reproduce
from stnkit.app.cli import main
from stnkit.train.config import save


def test_table1_schedules_every_row_and_column():
    jobs = reproduce.jobs("table1", "quick", out="/tmp/x")
    assert len(jobs) == (8 + 4) * 4  # the paper's 8 rows, and 4 of its successors
    assert {(c, m) for c, m, _ in jobs} == {(c, m) for m in reproduce.TABLE1 for c in ("r", "rts", "p", "e")}
    rts = [cfg for c, m, cfg in jobs if c == "rts" and m == "st-cnn-tps"][0]
    assert rts.experiment == "rts" and rts.st_size == "half" and rts.budget == 40000
    paper = reproduce.jobs("tc", "paper", out="/tmp/x")
    assert len(paper) == (4 + 2) * 3 and paper[0][2].optimizer == "sgd" and paper[0][2].lr == 0.01
    with pytest.raises(ValueError, match="unknown table"):
        reproduce.jobs("table9", "quick")
    with pytest.raises(ValueError, match="budget"):
        reproduce.jobs("tc", "huge")


def test_run_writes_markdown_beside_the_paper_and_reuses_finished_rows(tmp_path, monkeypatch):
    trained = []

    def fake_train(cfg, resume=False, log=print):
        trained.append(cfg.name)
        run = tmp_path / cfg.name
        run.mkdir(parents=True)
        save(cfg, run / "config.yaml")
        err = 2.0 if cfg.model.startswith("st") else 10.0
        (run / "summary.json").write_text(json.dumps({"test_err": err + cfg.seed, "wall_s": 30.0}))
        return run

    monkeypatch.setattr("stnkit.train.engine.train", fake_train)
    monkeypatch.setattr(reproduce, "figures", lambda *a: "")  # fake runs have no weights to draw
    path = reproduce.run("tc", "quick", seeds=2, out=str(tmp_path))
    text = path.read_text()
    assert "| cnn | 10.5 ± 0.7 | 3.5 |" in text and "| st-cnn-affine | 2.5 ± 0.7 | 1.7 |" in text
    assert "| dcn-cnn | 10.5 ± 0.7 | beyond the paper |" in text  # the successors' rows say so
    assert "6.0 min" in text  # 12 runs x 30 s
    reproduce.run("tc", "quick", seeds=2, out=str(tmp_path))
    assert len(trained) == 12  # the second call trained nothing
    with pytest.raises(ValueError, match="other settings .*epochs: 30 -> 3"):
        reproduce.run("tc", "quick", seeds=2, out=str(tmp_path), overrides={"epochs": 3})


def test_every_paper_table_is_scheduled():
    svhn = reproduce.jobs("svhn", "quick", out="/tmp/x")
    assert {(c, m, cfg.experiment) for c, m, cfg in svhn} == {
        (f"{s}px", m, f"seq{s}") for s in (64, 128) for m in reproduce.SVHN}
    real = reproduce.jobs("svhn", "quick", out="/tmp/x", real=True)
    assert {cfg.experiment for _, _, cfg in real} == {"svhn64", "svhn128"}
    cub = reproduce.jobs("cub", "quick", out="/tmp/x")
    assert [(c, m, cfg.experiment) for c, m, cfg in cub] == [
        ("224px", "cub-cnn", "cub224"), ("224px", "cub-2xst-cnn", "cub224"),
        ("448px", "cub-2xst-cnn", "cub448"), ("448px", "cub-4xst-cnn", "cub448")]
    assert [m for _, m, _ in reproduce.jobs("3d", "quick", out="/tmp/x")] == ["3d-cnn", "3d-st-cnn-affine"]
    coloc = reproduce.jobs("coloc", "paper", seeds=1, out="/tmp/x")
    assert len(coloc) == 2 * 10 and {cfg.experiment for _, _, cfg in coloc} == {"coloc", "coloc-clutter"}
    assert sorted({cfg.digit_class for _, _, cfg in coloc}) == list(range(10))
    assert all(cfg.optimizer == "adam" and cfg.curriculum_epochs > 0 for _, _, cfg in coloc)  # its own schedule


def test_rows_picks_a_subset_and_names_unknown_patterns(tmp_path, monkeypatch):
    picked = reproduce.jobs("addition", "quick", out="/tmp/x", rows=["fcn", "*st-fcn-tps"])
    assert [m for _, m, _ in picked] == ["fcn", "st-fcn-tps", "2xst-fcn-tps"]
    with pytest.raises(ValueError, match="match no row of addition.*'cnn'"):
        reproduce.jobs("addition", "quick", out="/tmp/x", rows=["st-cnn-*"])

    def fake_train(cfg, resume=False, log=print):
        run = tmp_path / cfg.name
        run.mkdir(parents=True)
        save(cfg, run / "config.yaml")
        (run / "summary.json").write_text(json.dumps({"test_err": 50.0, "wall_s": 60.0}))

    monkeypatch.setattr("stnkit.train.engine.train", fake_train)
    monkeypatch.setattr(reproduce, "figures", lambda *a: "")  # fake runs have no weights to draw
    text = reproduce.run("addition", "quick", out=str(tmp_path), rows=["fcn"]).read_text()
    assert "| fcn | 50.0 | 47.7 |" in text and "| cnn | - | 14.7 |" in text and "--rows fcn" in text
    # a run saved before a config key existed holds that key's default: still reused
    conf = tmp_path / "addition-quick/addition/fcn-seed0/config.yaml"
    conf.write_text("\n".join(ln for ln in conf.read_text().splitlines() if not ln.startswith("curriculum_epochs")))
    monkeypatch.setattr("stnkit.train.engine.train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    reproduce.run("addition", "quick", out=str(tmp_path), rows=["fcn"])


def test_coloc_table_scores_iou_and_reuses_finished_runs(tmp_path, monkeypatch):
    trained = []

    def fake_train(cfg, objective=None, resume=False):
        trained.append((cfg.experiment, cfg.digit_class))
        run = tmp_path / cfg.name
        run.mkdir(parents=True)
        save(cfg, run / "config.yaml")
        iou = 90.0 if cfg.experiment == "coloc" else 60.0
        (run / "summary.json").write_text(json.dumps({"metric": "iou_over_half", "iou_over_half": iou, "wall_s": 6.0}))
        return run

    monkeypatch.setattr("stnkit.train.engine.train", fake_train)
    monkeypatch.setattr(reproduce, "figures", lambda *a: "")  # fake runs have no weights to draw
    text = reproduce.run("coloc", "quick", seeds=2, out=str(tmp_path)).read_text()
    assert "IoU > 0.5" in text and "| attention ST, triplet loss | 90.0 ± 0.0 | 100.0 | 60.0 ± 0.0 | 75-93 |" in text
    assert trained == [("coloc", 3)] * 2 + [("coloc-clutter", 3)] * 2
    reproduce.run("coloc", "quick", seeds=2, out=str(tmp_path))
    assert len(trained) == 4


def fake_engine(tmp_path, monkeypatch, value=lambda cfg: 1.0):
    def fake_train(cfg, objective=None, resume=False):
        run = tmp_path / cfg.name
        run.mkdir(parents=True)
        save(cfg, run / "config.yaml")
        (run / "summary.json").write_text(json.dumps({"metric": "test_err", "test_err": value(cfg), "wall_s": 6.0}))
        return run

    monkeypatch.setattr("stnkit.train.engine.train", fake_train)
    monkeypatch.setattr(reproduce, "figures", lambda *a: "")  # fake runs have no weights to draw


def test_the_record_holds_every_override_and_flags_cells_that_ran_otherwise(tmp_path, monkeypatch, capsys):
    fake_engine(tmp_path, monkeypatch, value=lambda cfg: float(cfg.epochs))
    text = reproduce.run("table1", "quick", out=str(tmp_path), rows=["cnn"], overrides={"epochs": 1}).read_text()
    assert "Command: `stnkit reproduce table1 --budget quick --rows cnn epochs=1`" in text
    assert "overrides the `quick` budget: epochs=1" in text and "not the `quick` budget's numbers" in text
    # a later call fills other rows at the budget's settings: the 1-epoch cells say they differ
    text = reproduce.run("table1", "quick", out=str(tmp_path), rows=["fcn"]).read_text()
    assert "| cnn | 1.0* | 1.2 |" in text and "| fcn | 12.0 | 2.1 |" in text
    assert "r/cnn: epochs: 1 (this command: 12)" in text
    assert "overrides" not in text
    # the CLI records exactly what was typed
    assert main(["reproduce", "tc", "--out", str(tmp_path), "--rows", "cnn", "epochs=2", "lr_steps=[1]"]) == 0
    text = (tmp_path / "tc-quick.md").read_text()
    assert "Command: `stnkit reproduce tc --out " in text and "--rows cnn epochs=2 lr_steps=[1]`" in text
    assert "epochs=2, lr_steps=[1]" in text


def test_cub_without_files_says_where_to_put_them(tmp_path, capsys):
    from stnkit.app.cli import main

    assert main(["reproduce", "cub", "--out", str(tmp_path), f"data_dir={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert "CUB_200_2011" in err and "nothing" in err


def test_the_report_shows_what_each_transformer_learned_and_how_to_read_it(tmp_path):
    from stnkit.app.figures import HOW_TO_READ

    over = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 100, "progress": False}
    text = reproduce.run("tc", "quick", out=str(tmp_path), rows=["cnn", "st-cnn-affine"], overrides=over).read_text()
    assert "## What the transformers learned" in text and HOW_TO_READ["classes"] in text
    assert "![tc: st-cnn-affine](tc-quick/tc-st-cnn-affine.png)" in text
    assert (tmp_path / "tc-quick/tc-st-cnn-affine.png").is_file()
    assert not (tmp_path / "tc-quick/tc-cnn.png").exists()  # a baseline has no transformer to show
