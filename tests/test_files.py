"""SVHN and CUB from the user's files through the engine: the same batches interface as the
generated datasets, a clear message when the files are missing, a short training run."""
import json

import pytest
import torch

from stnkit.train import engine
from stnkit.app.cli import main
from stnkit.train.config import build
from stnkit.data import make_dataset
from stnkit.train.runs import load_run
from test_svhn_cub import SVHN_PHOTOS, make_cub, make_svhn


@pytest.fixture
def svhn_root(tmp_path):
    photos = [p for p in SVHN_PHOTOS if len(p[2]) <= 5] * 1
    for split in ("train", "test"):
        make_svhn(tmp_path / "svhn", split, photos)
    return tmp_path


def test_svhn_batches_like_a_generated_dataset(svhn_root):
    ds = make_dataset("svhn64", "train", root=svhn_root, seed=1)
    assert len(ds) == 3 and ds.num_classes == 11
    b = next(ds.batches(2, epoch=0))
    assert b.x.shape == (2, 3, 64, 64) and b.x.dtype == torch.float32 and 0 <= b.x.min() and b.x.max() <= 1
    assert b.y.shape == (2, 5) and b.y.dtype == torch.int64
    test = make_dataset("svhn64", "test", root=svhn_root)
    ys = torch.cat([b.y for b in test.batches(2)])
    assert ys[:, 0].tolist() == [0, 1, 5]  # file order; the label 10 of digitStruct means 0
    r0 = next(ds.batches(2, rank=0, world=2))
    r1 = next(ds.batches(2, rank=1, world=2))
    assert torch.equal(torch.cat([r0.y, r1.y]), next(ds.batches(2)).y)


def test_cub_batches_with_pixel_boxes(tmp_path):
    make_cub(tmp_path / "CUB_200_2011")
    ds = make_dataset("cub224", "test", root=tmp_path)
    b = next(ds.batches(3))
    assert b.x.shape == (3, 3, 224, 224) and b.y.tolist() == [0, 1, 2] and ds.num_classes == 200
    assert b.box.shape == (3, 4) and (b.box >= 0).all() and (b.box <= 224).all()
    assert (b.box[:, 2] > b.box[:, 0]).all() and (b.box[:, 3] > b.box[:, 1]).all()


@pytest.mark.parametrize("name, hint", [("svhn64", "ufldl.stanford.edu/housenumbers"), ("cub448", "CUB_200_2011")])
def test_missing_files_say_where_to_get_them(tmp_path, capsys, name, hint):
    assert main(["train", name, f"data_dir={tmp_path}", f"out={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert hint in err and str(tmp_path) in err


def test_train_svhn_sequences_from_files(svhn_root, tmp_path):
    cfg = build({"experiment": "svhn64", "model": "svhn-st-cnn-single", "data_dir": str(svhn_root),
                 "batch_size": 2, "epochs": 1, "eval_batch_size": 2, "progress": False, "out": str(tmp_path / "runs"),
                 "optimizer": "adam", "lr": 1e-3})
    run = engine.train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_n"] == 3
    # the recorded error is the saved model's: count its wrong sequences on the 3 test photos by hand
    _, model, test = load_run(run)
    b = next(test.batches(3))
    with torch.no_grad():
        pred = model(b.x).argmax(-1)  # (3, 5)
    wrong = sum(int(not torch.equal(pred[i], b.y[i])) for i in range(3))
    assert summary["test_err"] == pytest.approx(100.0 * wrong / 3)
