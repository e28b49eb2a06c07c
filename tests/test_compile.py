"""torch.compile: every model of the zoo compiles (aot_eager: no C++ compiler needed) and gives
eager's outputs; one ST model also through the default inductor backend."""
import shutil

import pytest
import torch
from test_models import inputs  # smooth random images in [0, 1]

from stnkit.models import create_model, list_models


def compiled_matches_eager(model, x, backend: str, atol: float) -> None:
    torch._dynamo.reset()  # models of one class share a code object: no recompile limit across tests
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        want = model(x)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_every_model_compiles_with_aot_eager(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    compiled_matches_eager(model, inputs(model), "aot_eager", 1e-5)


@pytest.mark.slow  # about 20 s on one thread with a cold inductor cache
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None,
                    reason="inductor on CPU compiles C++: no C++ compiler (cc, gcc or clang) on PATH")
def test_st_cnn_compiles_with_inductor():
    torch.manual_seed(0)
    model = create_model("st-cnn-affine", in_shape=(1, 42, 42), num_classes=10).eval()
    with torch.no_grad():
        model.transformers[0].regression.weight.normal_(0, 0.05)  # a real warp, not the identity
    x = inputs(model, batch=4)
    compiled_matches_eager(model, x, "inductor", 1e-5)
    assert model(x).shape == (4, 10)
