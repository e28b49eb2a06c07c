"""Training on a CUDA GPU (skipped without one): the engine picks the GPU, bf16 autocast
trains, checkpoints load back on the CPU."""
import pytest
import torch

from stnkit.train import engine
from stnkit.train.config import build
from stnkit.train.runs import load_run
from stnkit.train.objectives import Classification

pytestmark = pytest.mark.cuda  # skipped without a GPU (conftest.py)


@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_the_gpu(tmp_path, bf16):
    cfg = build({"experiment": "rts", "model": "st-cnn-affine", "st_size": "half", "batch_size": 64,
                 "steps_per_epoch": 20, "epochs": 2, "optimizer": "adam", "lr": 0.002, "bf16": bf16,
                 "progress": False, "out": str(tmp_path)})
    run = engine.train(cfg)
    _, model, test = load_run(run)  # loads on the CPU
    m = Classification().evaluate(model, test, 500)
    assert m["test_err"] < 85 and next(model.parameters()).device.type == "cpu"
