"""`stnkit export`: ONNX files run in onnxruntime and TorchScript files match PyTorch on the test
set, spatial transformers included (affine, projective, tps), at any batch size; the warps that
need an export-friendly path (the projective horizon, cached TPS matrices) are checked with
transformers far from the identity."""
import importlib.util

import pytest
import torch

import stnkit
from stnkit.train import engine
from stnkit.app.cli import main
from stnkit.train.config import build
from stnkit.app.export import export_onnx, export_torchscript, max_abs_diff, runner
from stnkit.functional.matrix import OUTSIDE
from stnkit.models import create_model, transformers
from stnkit.train.runs import load_run

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
onnx_tools = pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx, onnxscript and onnxruntime: pip install 'stnkit[export]'")
FAST = dict(experiment="r", batch_size=32, steps_per_epoch=4, epochs=1, eval_batch_size=1000, progress=False, lr=0.05)
FAMILIES = ["affine", "projective", "tps"]
ONNX_TOL, TS_TOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {t: engine.train(build({**FAST, "model": f"st-fcn-{t}", "out": str(out)}))
            for t in FAMILIES}


@pytest.fixture(scope="module")
def digits():
    """500 test images of distorted MNIST R: (500, 1, 28, 28)."""
    return next(stnkit.data.make_dataset("r", "test").batches(500, shuffle=False)).x


@onnx_tools
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_onnx_runs_in_onnxruntime_like_pytorch(runs, family, capsys):
    run = runs[family]
    assert main(["export", str(run), "--format", "onnx", "--check", "300"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'model.onnx'}: st-fcn-{family} as ONNX (opset 20)" in out
    assert "max |difference| from PyTorch on 300 test images" in out

    _, model, test = load_run(run)
    x = next(test.batches(500, shuffle=False)).x
    onnx = runner(run / "model.onnx", "onnx")
    assert max_abs_diff(model, onnx, x) < ONNX_TOL
    for b in (1, 7):  # the batch axis is dynamic
        assert onnx(x[:b]).shape == (b, 10)


def test_cli_torchscript_reloads_and_matches_pytorch(runs, tmp_path, capsys):
    run, path = runs["projective"], tmp_path / "sub" / "m.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(path), "--check", "100"]) == 0
    assert f"wrote {path}: st-fcn-projective as TorchScript" in capsys.readouterr().out
    _, model, test = load_run(run)
    x = next(test.batches(500, shuffle=False)).x
    loaded = torch.jit.load(str(path))
    assert max_abs_diff(model, loaded, x) < TS_TOL
    assert loaded(x[:1]).shape == (1, 10)


def warping(name: str) -> torch.nn.Module:
    """A model whose transformers warp every input differently and far from the identity: random
    regression weights; projective ones see their horizon (h31 = 1.2: behind it for x < -0.83)."""
    torch.manual_seed(0)
    model = create_model(name, in_shape=(1, 28, 28)).eval()
    for st in transformers(model):
        with torch.no_grad():
            st.regression.weight.normal_(0, 0.1)
            if st.transform.name == "projective":
                st.regression.bias[6] = 1.2
    return model


@pytest.mark.parametrize("name", ["st-cnn-projective", "st-cnn-tps"])
def test_transformers_far_from_the_identity_export_exactly(name, digits, tmp_path):
    model = warping(name)
    stnkit.transforms.get("tps")._grid_cache.clear()  # cold: export must build the TPS matrix eagerly
    if HAVE_ONNX:
        onnx = runner(export_onnx(model, digits[:2], tmp_path / "m.onnx"), "onnx")
        assert all(type(m) is torch.Tensor for m in stnkit.transforms.get("tps")._grid_cache.values())  # no fakes
        assert max_abs_diff(model, onnx, digits) < ONNX_TOL
    ts = torch.jit.load(str(export_torchscript(model, digits[:2], tmp_path / "m.pt")))
    assert max_abs_diff(model, ts, digits) < TS_TOL

    with torch.no_grad():
        model(digits)
    st = transformers(model)[0]  # the warps were real: far from the identity, past the horizon
    assert (st.last_params - stnkit.transforms.identity(st.transform, len(digits))).abs().amax(1).min() > 0.01
    if "projective" in name:
        g = stnkit.grid(st.last_params, "projective", (28, 28))
        assert (g == OUTSIDE).any() and (g != OUTSIDE).any()


@onnx_tools
def test_legacy_onnx_exporter_takes_the_projective_grid_too(digits, tmp_path):
    model = warping("st-fcn-projective")
    path = export_onnx(model, digits[:2], tmp_path / "m.onnx", dynamo=False)
    assert max_abs_diff(model, runner(path, "onnx"), digits) < ONNX_TOL


def test_projective_grid_while_tracing_is_the_functions_forward_bit_for_bit():
    torch.manual_seed(0)
    h = torch.eye(3) + torch.randn(16, 3, 3) * 0.6
    h = h / h[:, 2:, 2:]
    for align_corners in (False, True):
        eager = stnkit.functional.matrix.projective_grid(h, (9, 13), align_corners)
        traced = torch.jit.trace(lambda h: stnkit.functional.matrix.projective_grid(h, (9, 13), align_corners), h)
        assert (eager == OUTSIDE).any()
        assert torch.equal(traced(h), eager)


def test_export_errors_are_clear(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "nope not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--format", "tflite"])
    with pytest.raises(ValueError, match="format must be one of"):
        stnkit.app.export.export_run(tmp_path, "tflite")


def test_torch_export_with_a_cold_tps_cache_caches_no_tracer_tensors():
    model = create_model("st-fcn-tps", in_shape=(1, 28, 28), num_classes=10).eval()
    stnkit.transforms.get("tps")._grid_cache.clear()
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),))  # no eager warm-up first
    assert not stnkit.transforms.get("tps")._grid_cache  # built under the tracer: not kept
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(program.module()(x), model(x), atol=1e-6)
    assert all(type(m) is torch.Tensor for m in stnkit.transforms.get("tps")._grid_cache.values())
