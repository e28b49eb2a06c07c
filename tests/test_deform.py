"""deform_conv2d and DeformConv2d: torchvision's semantics, checked against a plain-loop
reference, F.conv2d, shifted convolutions, gradcheck, torch.compile and onnxruntime."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import stnkit
from stnkit.functional import deform as D
from stnkit.kernels import deform_cpu


@pytest.fixture(params=["native", "grid_sample"])
def path(request, monkeypatch):
    """Run the test on the compiled CPU kernel, then on the grid_sample path (every other device,
    and the CPU without a compiler): the two must agree with the reference alike."""
    if request.param == "native":
        if deform_cpu._compiler() is None:
            pytest.skip("no C++ compiler: the compiled kernel cannot be built here")
        assert deform_cpu.available(), deform_cpu.why_not()
    else:
        monkeypatch.setattr(deform_cpu, "usable", lambda x: False)
    return request.param


def _bilinear(img, y, x):
    """torchvision's bilinear_interpolate: 0 at or beyond one pixel outside, zeros blend in."""
    H, W = img.shape
    if y <= -1 or y >= H or x <= -1 or x >= W:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    v = 0.0
    for yy, xx, w in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                      (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < H and 0 <= xx < W:
            v += w * float(img[yy, xx])
    return v


def reference(x, offset, weight, bias, stride, padding, dilation, mask):
    """The definition, one output value at a time."""
    B, C, H, W = x.shape
    Co, Cg, kh, kw = weight.shape
    groups, K = C // Cg, kh * kw
    Ho, Wo = offset.shape[2:]
    G = offset.shape[1] // (2 * K)
    out = torch.zeros(B, Co, Ho, Wo, dtype=torch.float64)
    for b in range(B):
        for co in range(Co):
            q = co // (Co // groups)
            for ho in range(Ho):
                for wo in range(Wo):
                    s = 0.0 if bias is None else float(bias[co])
                    for ci in range(Cg):
                        c = q * Cg + ci
                        g = c // (C // G)
                        for i in range(kh):
                            for j in range(kw):
                                k = i * kw + j
                                dy, dx = float(offset[b, g * 2 * K + 2 * k, ho, wo]), float(offset[b, g * 2 * K + 2 * k + 1, ho, wo])
                                y = ho * stride[0] - padding[0] + i * dilation[0] + dy
                                xx = wo * stride[1] - padding[1] + j * dilation[1] + dx
                                v = _bilinear(x[b, c], y, xx)
                                if mask is not None:
                                    v *= float(mask[b, g * K + k, ho, wo])
                                s += v * float(weight[co, ci, i, j])
                    out[b, co, ho, wo] = s
    return out


# (C_in, C_out, groups, offset_groups, kernel, stride, padding, dilation, mask, bias)
CASES = [
    (2, 3, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), False, True),
    (4, 6, 2, 1, (3, 2), (2, 1), (0, 1), (1, 2), True, True),
    (6, 4, 2, 3, (2, 3), (1, 2), (2, 0), (2, 1), True, False),
    (4, 4, 4, 2, (1, 1), (1, 1), (0, 0), (1, 1), True, True),
    (3, 2, 1, 3, (3, 3), (3, 2), (1, 2), (1, 1), False, False),
]


def make(case, dtype=torch.float64, B=2, H=6, W=7, spread=2.0, seed=0):
    C, Co, groups, G, (kh, kw), stride, padding, dilation, masked, biased = case
    g = torch.Generator().manual_seed(seed)
    geo = D.Geometry(kh, kw, stride, padding, dilation, groups, G)
    Ho, Wo = D.output_size(H, W, geo)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    offset = torch.randn(B, 2 * G * kh * kw, Ho, Wo, generator=g, dtype=dtype) * spread
    weight = torch.randn(Co, C // groups, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(Co, generator=g, dtype=dtype) if biased else None
    mask = torch.rand(B, G * kh * kw, Ho, Wo, generator=g, dtype=dtype) if masked else None
    return x, offset, weight, bias, stride, padding, dilation, mask


def call(x, offset, weight, bias, stride, padding, dilation, mask):
    return stnkit.deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_plain_loop_reference(case, dtype, path):
    args = make(case, dtype)
    got = call(*args)
    assert got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), reference(*args), atol=tol, rtol=tol)


def test_points_beyond_one_pixel_outside_read_zero_and_between_blend(path):
    """torchvision's border rule: at or beyond -1 / H reads 0; at -0.5 half the border pixel."""
    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for dy, want in ((-1.0, 0.0), (-1.5, 0.0), (-0.5, 0.5), (-0.25, 0.75), (2.5, 0.5), (3.0, 0.0)):
        off = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
        off[0, 0] = dy  # the one tap, at (0, 0), moves to (dy, 0)
        out = stnkit.deform_conv2d(x, off, w, stride=3)
        assert float(out) == pytest.approx(want, abs=1e-15), dy


def test_a_nan_offset_gives_nan_and_an_infinite_one_reads_zero(path):
    """As torchvision: a NaN position poisons its output pixel (so a diverged offset net shows in
    the loss instead of reading 0), and +-inf is beyond one pixel outside, so it reads 0."""
    x, w = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 1, 1)
    for bad, want in ((float("nan"), float("nan")), (float("inf"), 0.0), (-float("inf"), 0.0), (1e30, 0.0)):
        off = torch.zeros(1, 2, 4, 4)
        off[0, 1, 2, 1] = bad  # dx of output pixel (2, 1)
        out = stnkit.deform_conv2d(x, off, w)[0, 0]
        assert torch.all(out.flatten()[torch.arange(16) != 9] == 1), bad  # every other pixel reads its tap
        assert out[2, 1].isnan() if want != want else float(out[2, 1]) == want, bad


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_zero_offsets_equal_conv2d(case, path):
    x, offset, weight, bias, stride, padding, dilation, mask = make(case, torch.float32)
    got = call(x, torch.zeros_like(offset), weight, bias, stride, padding, dilation, None)
    want = F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1] // weight.shape[1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_integer_offsets_equal_a_shifted_convolution(path):
    """Every tap moved by (dy, dx) = (1, -2) is the convolution of the (padded) image shifted by (-1, 2)."""
    x, _, weight, bias, *_ = make(CASES[0], torch.float64, H=8, W=9)
    off = torch.zeros(2, 18, 8, 9, dtype=torch.float64)
    off[:, 0::2], off[:, 1::2] = 1.0, -2.0
    P = F.pad(x, (1, 1, 1, 1))  # the image with its padding ring: tap (ho + i, wo + j) of P
    shifted = torch.zeros_like(P)
    shifted[:, :, :-1, 2:] = P[:, :, 1:, :-2]  # shifted[y, x] = P[y + 1, x - 2]
    want = F.conv2d(shifted, weight, bias)
    torch.testing.assert_close(stnkit.deform_conv2d(x, off, weight, bias, padding=1), want, atol=1e-12, rtol=0)


def test_offset_gradient_at_integer_taps_is_the_forward_difference_and_zero_at_the_limit(path):
    """At zero offsets every tap sits on a pixel: d/dy is x[y + 1] - x[y] (floor's side, as in
    torchvision), and a tap exactly one pixel outside (padding 1) passes no gradient."""
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    w[0, 0, 0, 1] = 1.0  # only the top-middle tap: it reads row ho - 1
    off = torch.zeros(1, 18, 5, 6, dtype=torch.float64, requires_grad=True)
    stnkit.deform_conv2d(x, off, w, padding=1).sum().backward()
    gy, gx = off.grad[0, 2], off.grad[0, 3]  # tap k = 1: (dy, dx)
    xi = x[0, 0]
    torch.testing.assert_close(gy[1:], xi[1:] - xi[:-1], atol=1e-12, rtol=0)  # reads row ho - 1, moves down
    assert torch.all(gy[0] == 0) and torch.all(gx[0] == 0)  # row -1: at the limit
    fwd = torch.cat([xi[:-1, 1:] - xi[:-1, :-1], -xi[:-1, -1:]], dim=1)  # beyond the last column: zero
    torch.testing.assert_close(gx[1:], fwd, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck_every_input(case, path):
    x, offset, weight, bias, stride, padding, dilation, mask = make(case, B=1, H=4, W=5, spread=1.3, seed=3)
    leaves = [t.requires_grad_() for t in (x, offset, weight, bias, mask) if t is not None]

    def f(*ts):
        it = iter(ts)
        x_, o_, w_ = next(it), next(it), next(it)
        b_ = next(it) if bias is not None else None
        m_ = next(it) if mask is not None else None
        return call(x_, o_, w_, b_, stride, padding, dilation, m_)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("budget", [1, 4000, 15000])
def test_batched_equals_per_sample_and_chunking_changes_nothing(monkeypatch, budget):
    """Chunks of one item (the grid_sample path at budget 1), and in the compiled kernel row
    tiles of one and of several rows, and chunks of several items: the same results."""
    x, offset, weight, bias, stride, padding, dilation, mask = make(CASES[1], torch.float64, B=5, H=12, W=7)
    leaves = [t.requires_grad_() for t in (x, offset, weight, bias, mask)]
    out = call(x, offset, weight, bias, stride, padding, dilation, mask).detach()
    per = torch.cat([call(x[i:i + 1], offset[i:i + 1], weight, bias, stride, padding, dilation, mask[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(out, per.detach(), atol=1e-13, rtol=0)
    g = torch.randn_like(out)
    paths = {"native": deform_cpu.usable(x), "grid_sample": False}
    want = {}
    for name, native in paths.items():
        with monkeypatch.context() as m:
            m.setattr(deform_cpu, "usable", lambda t: native)
            want[name] = torch.autograd.grad(call(x, offset, weight, bias, stride, padding, dilation, mask), leaves, g)
    seen = []
    chunks = deform_cpu._chunks
    monkeypatch.setattr(deform_cpu, "_chunks", lambda *a: seen.extend(chunks(*a)) or chunks(*a))
    monkeypatch.setattr(D, "CHUNK_BYTES", budget)
    monkeypatch.setattr(deform_cpu, "CHUNK_BYTES", budget)
    for name, native in paths.items():
        monkeypatch.setattr(deform_cpu, "usable", lambda t: native)
        chunked = torch.autograd.grad(call(x, offset, weight, bias, stride, padding, dilation, mask), leaves, g)
        for a, b in zip(want[name], chunked):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    if paths["native"]:
        Ho = out.shape[2]
        rows, items = {nr for _, _, _, nr in seen}, {nb for _, nb, _, _ in seen}
        kind = {1: rows == {1}, 4000: 1 < max(rows) < Ho, 15000: 1 < max(items) < 5}[budget]
        assert kind, (budget, seen)


def test_bad_shapes_name_what_was_expected_and_what_came():
    x, offset, weight, bias, stride, padding, dilation, mask = make(CASES[1], torch.float32)
    cases = [
        (dict(offset=offset[:, :-1]), r"offset must have 2 \* offset_groups \* kh \* kw channels.*got shape \(2, 11, 2, 7\)"),
        (dict(offset=offset[:, :, :-1]), r"offset must have shape \(2, 12, 2, 7\).*got \(2, 12, 1, 7\)"),
        (dict(mask=mask[:, :-1]), r"mask must have shape \(2, 6, 2, 7\).*got \(2, 5, 2, 7\)"),
        (dict(weight=weight[:-1]), r"weight .* \(5, 2, 3, 2\) does not fit an input of 4 channels"),
        (dict(weight=torch.randn(6, 3, 3, 2)), r"weight .* \(6, 3, 3, 2\) does not fit"),
        (dict(bias=bias[:-1]), r"bias must have shape \(6,\).*got \(5,\)"),
        (dict(x=x[:, :, :1]), r"spatial size \(1, 7\) is smaller than the dilated kernel"),
        (dict(x=x.double()), r"share one dtype"),
        (dict(x=x[0]), r"\bx\b|input"),
        (dict(stride=0), r"stride and dilation must be >= 1"),
        (dict(padding=(1, 2, 3)), r"padding must be an int or a pair of ints"),
    ]
    base = dict(x=x, offset=offset, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    for change, pattern in cases:
        kw = {**base, **change}
        with pytest.raises(ValueError, match=pattern):
            stnkit.deform_conv2d(kw["x"], kw["offset"], kw["weight"], kw["bias"], kw["stride"], kw["padding"],
                                 kw["dilation"], kw["mask"])
    with pytest.raises(ValueError, match=r"offset_groups \(3.*must divide the input's 4 channels"):
        stnkit.deform_conv2d(x, torch.randn(2, 36, 2, 7), weight, bias, stride, padding, dilation)


def test_module_starts_as_conv2d_and_learns_offsets():
    torch.manual_seed(0)
    m = stnkit.DeformConv2d(4, 6, 3, stride=2, padding=1, groups=2, offset_groups=2)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    conv.load_state_dict({"weight": m.weight.data, "bias": m.bias.data})
    x = torch.randn(3, 4, 9, 8)
    torch.testing.assert_close(m(x), conv(x), atol=1e-5, rtol=1e-5)
    m(x).square().mean().backward()
    assert m.offset_conv.weight.grad.abs().sum() > 0  # the offsets get a gradient from the start
    mod = stnkit.DeformConv2d(4, 6, 3, padding=1, modulated=True, bias=False)
    with torch.no_grad():  # mask sigmoid(0) = 0.5 at initialisation
        torch.testing.assert_close(mod(x), F.conv2d(x, mod.weight * 0.5, None, padding=1), atol=1e-5, rtol=1e-5)
    assert "modulated=True" in repr(mod) and "bias=False" in repr(mod)


def test_module_takes_external_offsets_and_refuses_half_of_them():
    m = stnkit.DeformConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    off = torch.randn(1, 18, 5, 5)
    torch.testing.assert_close(m(x, off), stnkit.deform_conv2d(x, off, m.weight, m.bias, padding=1))
    with pytest.raises(ValueError, match="needs an external mask"):
        stnkit.DeformConv2d(2, 3, 3, padding=1, modulated=True)(x, off)
    with pytest.raises(ValueError, match=re.escape("groups (2) must divide in_channels (3)")):
        stnkit.DeformConv2d(3, 4, 3, groups=2)


def test_compile_fullgraph_matches_eager():
    m = stnkit.DeformConv2d(3, 4, 3, padding=1, modulated=True)
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.2)
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), m(x))
    g1 = torch.autograd.grad(compiled(x).sum(), [x, m.weight])
    g2 = torch.autograd.grad(m(x).sum(), [x, m.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("modulated,groups,offset_groups,bias", [(False, 1, 1, True), (True, 2, 2, False)])
def test_onnx_export_is_the_standard_deformconv_and_runs_in_onnxruntime(tmp_path, modulated, groups, offset_groups, bias):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from stnkit.app.export import export_onnx, runner

    m = stnkit.DeformConv2d(4, 6, 3, stride=2, padding=1, groups=groups, offset_groups=offset_groups,
                            modulated=modulated, bias=bias).eval()
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.3)
    x = torch.randn(2, 4, 11, 10)
    path = export_onnx(m, x, tmp_path / "dcn.onnx", opset=19, output="y")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "DeformConv" in ops, ops
    run = runner(path, "onnx")
    x3 = torch.randn(3, 4, 11, 10)  # another batch size
    with torch.no_grad():
        torch.testing.assert_close(run(x3), m(x3), atol=2e-5, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_torchvision():
    args = make(CASES[1], torch.float32)
    cpu = call(*args)
    dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    torch.testing.assert_close(call(*dev).cpu(), cpu, atol=1e-4, rtol=1e-4)
    tv = pytest.importorskip("torchvision")
    x, offset, weight, bias, stride, padding, dilation, mask = dev
    want = tv.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(call(*dev), want, atol=1e-4, rtol=1e-4)


def test_torchscript_trace_keeps_the_op_and_runs_any_batch(tmp_path):
    """jit.trace records torch.ops.stnkit.deform_conv2d (loading needs `import stnkit`, as
    torchvision's ops need `import torchvision`); the conv settings are traced as plain ints."""
    from stnkit.app.export import export_torchscript, runner

    m = stnkit.DeformConv2d(2, 3, 3, padding=1, stride=2, modulated=True).eval()
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.3)
    path = export_torchscript(m, torch.randn(2, 2, 9, 8), tmp_path / "dcn.pt")
    x = torch.randn(3, 2, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(runner(path, "torchscript")(x), m(x))
