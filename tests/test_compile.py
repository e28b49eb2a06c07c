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


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None,
                    reason="inductor on CPU compiles C++: no C++ compiler (cc, gcc or clang) on PATH")
def test_st_cnn_compiles_with_inductor_forward_and_backward():
    """About 30 s with a cold inductor cache (a fresh CI machine), a few s warm."""
    torch.manual_seed(0)
    model = create_model("st-cnn-affine", in_shape=(1, 42, 42), num_classes=10).eval()
    with torch.no_grad():
        model.transformers[0].regression.weight.normal_(0, 0.05)  # a real warp, not the identity
    x = inputs(model, batch=4)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    got, want = compiled(x), model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    grads = []
    for out in (got, want):
        model.zero_grad()
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_compiled, g_eager in zip(*grads):
        torch.testing.assert_close(g_compiled, g_eager, atol=1e-4, rtol=1e-4)
