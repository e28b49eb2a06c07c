"""The fused Triton kernels (`warp(..., backend="triton")`) against the torch path (the grid, then
`F.grid_sample`): outputs and both gradients, every family, mode, padding and align_corners
they cover, float32 and float64, the deterministic input gradient, fill, the projective horizon,
coordinates far outside. Without a GPU they run under Triton's interpreter (TRITON_INTERPRET=1,
set here before triton loads), so the sizes are tiny."""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")  # .ci/run installs it (the triton extra) and checks that it imports

import stnkit  # noqa: E402
from stnkit import transforms as T  # noqa: E402

FAMILIES_2D = ["translation", "attention", "rigid", "similarity", "affine", "projective", "tps"]
FAMILIES_3D = ["translation3d", "attention3d", "affine3d"]
PADDINGS = ["zeros", "border", "reflection"]


def _case(family, dtype, B=2, C=2, seed=0, strength=0.3, small=False):
    g = torch.Generator().manual_seed(seed)
    dim = T.get(family).dim
    if small:  # for gradcheck: a forward per input element
        shape, size = ((B, C, 4, 5), (3, 4)) if dim == 2 else ((B, C, 3, 3, 4), (2, 3, 3))
    else:
        shape, size = ((B, C, 7, 9), (5, 8)) if dim == 2 else ((B, C, 4, 5, 6), (3, 4, 5))
    x = torch.randn(shape, generator=g, dtype=dtype)
    p = T.identity(family, B, dtype=dtype) + strength * torch.randn(B, T.num_params(family), generator=g, dtype=dtype)
    if family == "projective":
        p[:, 6:] *= 0.5
    return x, p, size


def _both(x, p, family, size, go=None, **kw):
    """-> (torch out, triton out), ((dx, dp) torch, (dx, dp) triton)."""
    outs, grads = [], []
    for backend in ("torch", "triton"):
        xx, pp = x.clone().requires_grad_(), p.clone().requires_grad_()
        out = stnkit.warp(xx, pp, family, size, backend=backend, **kw)
        go = torch.randn_like(out) if go is None else go
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, (xx, pp), go))
    return outs, grads


def _close(a, b, dtype):
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("family", FAMILIES_2D + FAMILIES_3D)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_equals_torch_outputs_and_gradients(family, mode, padding_mode, align_corners, dtype):
    x, p, size = _case(family, dtype)
    (a, b), ((dxa, dpa), (dxb, dpb)) = _both(x, p, family, size, mode=mode, padding_mode=padding_mode,
                                             align_corners=align_corners)
    _close(b, a, dtype)
    _close(dxb, dxa, dtype)
    _close(dpb, dpa, dtype)
    if mode == "bilinear":
        assert dpa.abs().sum() > 0  # a gradient that is there to compare


@pytest.mark.parametrize("family, padding_mode", [(f, p) for f in ("affine", "projective", "affine3d") for p in PADDINGS]
                         + [("tps", "reflection")])  # tps: 32 params, a forward each; the paddings are shared code
def test_gradcheck(family, padding_mode):
    x, p, size = _case(family, torch.float64, B=1, C=1, seed=3, strength=0.2, small=True)
    f = lambda x, p: stnkit.warp(x, p, family, size, padding_mode=padding_mode, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), p.requires_grad_()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["affine", "projective", "affine3d"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_the_deterministic_input_gradient_equals_the_atomic_one(family, mode):
    x, p, size = _case(family, torch.float64, B=3, C=2, seed=5)
    x = x.requires_grad_()
    go = torch.randn(3, 2, *size, dtype=torch.float64)
    atomic = torch.autograd.grad(stnkit.warp(x, p, family, size, mode=mode, backend="triton"), x, go)[0]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = [torch.autograd.grad(stnkit.warp(x, p, family, size, mode=mode, backend="triton"), x, go)[0]
               for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    torch.testing.assert_close(det[0], atomic, rtol=1e-12, atol=1e-12)
    assert torch.equal(det[0], det[1])
    torch.testing.assert_close(det[0], torch.autograd.grad(stnkit.warp(x, p, family, size, mode=mode), x, go)[0],
                               rtol=1e-12, atol=1e-12)  # and the torch path's


def test_only_the_gradient_asked_for():
    x, p, size = _case("affine", torch.float64)
    dp_only = torch.autograd.grad(stnkit.warp(x, p.requires_grad_(), "affine", size, backend="triton").sum(), p)[0]
    torch.testing.assert_close(dp_only, torch.autograd.grad(stnkit.warp(x, p, "affine", size).sum(), p)[0])
    xx = x.clone().requires_grad_()
    dx_only = torch.autograd.grad(stnkit.warp(xx, p.detach(), "affine", size, backend="triton").sum(), xx)[0]
    torch.testing.assert_close(dx_only, torch.autograd.grad(stnkit.warp(xx, p.detach(), "affine", size).sum(), xx)[0])


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_fill_and_the_projective_horizon(padding_mode):
    x, p, size = _case("projective", torch.float64, B=2, C=2)
    p[:, 6] = 1.5  # the line 1.5 x + 1 = 0 crosses the output: part of it lies behind the horizon
    fill = torch.tensor([0.5, -2.0], dtype=torch.float64, requires_grad=True)
    outs = []
    for backend in ("torch", "triton"):
        out = stnkit.warp(x, p, "projective", size, padding_mode=padding_mode, fill=fill, backend=backend)
        outs.append((out, torch.autograd.grad(out.sum(), fill)[0]))
    (a, fa), (b, fb) = outs
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fb, fa)
    behind = (stnkit.grid(p, "projective", size) == -8).all(-1)  # (B, H', W')
    assert behind.any() and (~behind).any()
    assert torch.equal(b.detach()[:, 0][behind], torch.full_like(b[:, 0][behind], 0.5))


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_coordinates_far_outside(padding_mode):
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    p = torch.tensor([[1e6, -3e7], [0.5, 4e4]], dtype=torch.float64)  # translations far outside
    (a, b), ((_, dpa), (_, dpb)) = _both(x, p, "translation", (4, 4), padding_mode=padding_mode, fill=0.25)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(dpb, dpa)


def test_tps_with_its_own_targets_and_more_points():
    g = torch.Generator().manual_seed(2)
    cases = [(T.TPS(targets=torch.rand(5, 2, dtype=torch.float64, generator=g) * 2 - 1), 10),
             (T.TPS(grid_size=3, reg=0.1), 18), ("tps", 50)]  # "tps" with 25 points: K read off the params
    for family, P in cases:
        fam = T.get(family)
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        p = fam._for(torch.zeros(1, P)).identity_params(dtype=torch.float64).expand(2, -1)
        p = p + 0.1 * torch.randn(2, P, dtype=torch.float64, generator=g)
        (a, b), ((dxa, dpa), (dxb, dpb)) = _both(x, p, family, (6, 7))
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dpb, dpa, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(dxb, dxa, rtol=1e-10, atol=1e-10)


def test_batched_equals_per_sample_and_empty_batches():
    x, p, size = _case("affine", torch.float64, B=3)
    whole = stnkit.warp(x, p, "affine", size, backend="triton")
    for i in range(3):
        assert torch.equal(whole[i:i + 1], stnkit.warp(x[i:i + 1], p[i:i + 1], "affine", size, backend="triton"))
    empty = stnkit.warp(x[:0].requires_grad_(), p[:0].requires_grad_(), "affine", size, backend="triton")
    assert empty.shape == (0, 2, *size)
    empty.sum().backward()


def test_spatial_transformer_takes_the_backend():
    torch.manual_seed(0)
    st = stnkit.SpatialTransformer(stnkit.fc_localisation(1 * 8 * 8), "affine", (6, 6), backend="triton")
    ref = stnkit.SpatialTransformer(stnkit.fc_localisation(1 * 8 * 8), "affine", (6, 6), backend="torch")
    ref.load_state_dict(st.state_dict())
    with torch.no_grad():
        st.regression.bias.add_(0.1)
        ref.regression.bias.add_(0.1)
    x = torch.randn(4, 1, 8, 8)
    a, b = st(x), ref(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), st.regression.bias)[0]
    gb = torch.autograd.grad(b.square().sum(), ref.regression.bias)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'torch', 'triton'\], got 'cuda'"):
        stnkit.SpatialTransformer(stnkit.fc_localisation(64), backend="cuda")


@pytest.mark.parametrize("call, why", [
    (lambda x: stnkit.warp(x, torch.zeros(2, 8, 8, 2), "flow", backend="triton"), "not 'flow'"),
    (lambda x: stnkit.warp(x, T.identity("affine", 2), "affine", mode="bicubic", backend="triton"),
     "not mode='bicubic'"),
    (lambda x: stnkit.warp(x, T.identity("affine", 2), "affine", antialias=True, backend="triton"),
     "do not antialias"),
    (lambda x: stnkit.warp(x, T.identity("affine", 2), "affine", backend="gpu"),
     r"backend must be one of \['auto', 'torch', 'triton'\], got 'gpu'"),
])
def test_cases_the_kernels_do_not_cover_are_refused(call, why):
    with pytest.raises(ValueError, match=why):
        call(torch.randn(2, 1, 8, 8))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"run on CUDA tensors \(or on the CPU under TRITON_INTERPRET=1.*x is on cpu"):
        stnkit.warp(torch.randn(1, 1, 4, 4), T.identity("affine", 1), "affine", backend="triton")


def test_auto_is_the_torch_path_on_a_cpu_and_nothing_imports_triton():
    x, p, size = _case("affine", torch.float32)
    assert torch.equal(stnkit.warp(x, p, "affine", size), stnkit.warp(x, p, "affine", size, backend="torch"))
    code = ("import sys, torch, stnkit\n"
            "st = stnkit.SpatialTransformer(stnkit.fc_localisation(16), 'affine')\n"
            "st(torch.randn(2, 1, 4, 4)).sum().backward()\n"
            "stnkit.warp(torch.randn(1, 1, 4, 4), torch.zeros(1, 2), 'translation', backend='auto')\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_gpu_benchmark_runs_end_to_end_on_a_cpu(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_gpu.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for title in ("forward + backward", "deterministic backward vs atomic", "inside the ST-CNN training step"):
        assert title in r.stdout
    import json

    rows = json.loads(out.read_text())["rows"]
    assert {row["family"] for row in rows} == {"affine", "projective", "tps", "affine3d"}
    assert all(row["ms"]["stnkit-triton"] is not None and "stnkit-triton" not in row["errors"] for row in rows), rows
    assert all(row["max_abs_diff_vs_peer"]["stnkit-triton"] < 1e-4 for row in rows if row["family"] != "tps")


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["affine", "projective", "affine3d"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_on_cuda(family, padding_mode):
    x, p, size = _case(family, torch.float32, B=4, C=3)
    x, p = x.cuda(), p.cuda()
    (a, b), ((dxa, dpa), (dxb, dpb)) = _both(x, p, family, size, padding_mode=padding_mode)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dxb, dxa, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dpb, dpa, rtol=1e-3, atol=1e-3)
    torch.use_deterministic_algorithms(True)
    try:
        xx = x.clone().requires_grad_()
        runs = [torch.autograd.grad(stnkit.warp(xx, p, family, size, padding_mode=padding_mode,
                                                backend="triton").square().sum(), xx)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(runs[0], runs[1])


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = env.get("TRITON_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".triton", "cache"))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_aot.py")
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, env=env, timeout=1800)


def test_the_kernels_compile_for_a_gpu():
    """The interpreter runs Python: what only the GPU compiler rejects (a plain global read inside
    a kernel did) is caught here, without a GPU, for every value of every flag."""
    r = _aot()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "FAIL" not in r.stdout and "compiled" in r.stdout


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_a_gpu():
    r = _aot("--all")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
