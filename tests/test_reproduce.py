"""`stnkit reproduce`: every row and column of a table is scheduled, results land beside the
paper's numbers, finished rows are not retrained."""
import json

import pytest

from stnkit import reproduce
from stnkit.config import save


def test_table1_schedules_every_row_and_column():
    jobs = reproduce.jobs("table1", "quick", out="/tmp/x")
    assert len(jobs) == 8 * 4
    assert {(c, m) for c, m, _ in jobs} == {(c, m) for m in reproduce.TABLE1 for c in ("r", "rts", "p", "e")}
    rts = [cfg for c, m, cfg in jobs if c == "rts" and m == "st-cnn-tps"][0]
    assert rts.experiment == "rts" and rts.st_size == "half" and rts.budget == 40000
    paper = reproduce.jobs("tc", "paper", out="/tmp/x")
    assert len(paper) == 4 * 3 and paper[0][2].optimizer == "sgd" and paper[0][2].lr == 0.01
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

    monkeypatch.setattr("stnkit.engine.train", fake_train)
    path = reproduce.run("tc", "quick", seeds=2, out=str(tmp_path), log=lambda *_: None)
    text = path.read_text()
    assert "| cnn | 10.5 ± 0.7 | 3.5 |" in text and "| st-cnn-affine | 2.5 ± 0.7 | 1.7 |" in text
    assert "4.0 min" in text  # 8 runs x 30 s
    reproduce.run("tc", "quick", seeds=2, out=str(tmp_path), log=lambda *_: None)
    assert len(trained) == 8  # the second call trained nothing
    with pytest.raises(ValueError, match="other settings .*epochs: 12 -> 3"):
        reproduce.run("tc", "quick", seeds=2, out=str(tmp_path), overrides={"epochs": 3}, log=lambda *_: None)
