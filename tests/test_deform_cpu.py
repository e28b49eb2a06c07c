"""The compiled CPU kernel of deform_conv2d: threads, its build cache, and the fallback when it
cannot be built. (Its results against the reference: test_deform.py, on both paths.)"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import stnkit
from stnkit.kernels import deform_cpu

needs_compiler = pytest.mark.skipif(deform_cpu._compiler() is None, reason="no C++ compiler here")


@needs_compiler
def test_threads_split_the_work_without_races():
    """Work units own their writes (an image plane, a tap's offsets): 1 and 4 threads agree, and
    a repeat is bit for bit the same."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 9, 10, dtype=torch.float64, generator=g, requires_grad=True)
    off = (torch.randn(3, 36, 9, 10, dtype=torch.float64, generator=g) * 3).requires_grad_()  # 2 offset groups
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)  # 2 groups
    mask = torch.rand(3, 18, 9, 10, dtype=torch.float64, generator=g, requires_grad=True)

    def run(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = stnkit.deform_conv2d(x, off, w, padding=1, mask=mask)
            return [out, *torch.autograd.grad(out, (x, off, w, mask), torch.ones_like(out))]
        finally:
            torch.set_num_threads(before)

    one, four, again = run(1), run(4), run(4)
    for a, b, c in zip(one, four, again):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        assert torch.equal(b, c)


# (B, C_in, C_out, groups, offset_groups, ns): C_in >= 16 runs the kernels' vector blocks of
# channels (16 floats, 8 doubles) and a remainder. Fewer items than 4 threads split each item's
# positions into ns slices in the backward, each spreading its gradient into an image of its own
# that Python adds up.
WIDE = [(1, 48, 6, 3, 1, 4), (3, 40, 4, 2, 1, 2), (2, 40, 8, 1, 2, 2), (1, 33, 3, 1, 1, 4), (4, 20, 4, 1, 1, 1)]


@needs_compiler
@pytest.mark.parametrize("B,C,Co,groups,G,ns", WIDE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wide_inputs_and_position_slices_agree_with_the_grid_sample_path(monkeypatch, B, C, Co, groups, G, ns, dtype):
    g = torch.Generator().manual_seed(C + B)
    x = torch.randn(B, C, 12, 13, dtype=torch.float64, generator=g)
    off = torch.randn(B, 18 * G, 12, 13, dtype=torch.float64, generator=g) * 2.5
    w = torch.randn(Co, C // groups, 3, 3, dtype=torch.float64, generator=g)
    mask = torch.rand(B, 9 * G, 12, 13, dtype=torch.float64, generator=g)
    bias = torch.randn(Co, dtype=torch.float64, generator=g)
    gout = torch.randn(B, Co, 12, 13, dtype=torch.float64, generator=g)
    slices = []
    monkeypatch.setattr(deform_cpu, "CHUNK_BYTES", 2**30)  # one chunk: the whole batch
    monkeypatch.setattr(deform_cpu, "MIN_CHUNK_BYTES", 2**30)
    init = deform_cpu._Chunk.__init__
    monkeypatch.setattr(deform_cpu._Chunk, "__init__", lambda self, *a: init(self, *a) or slices.append(self.ns))

    def run(native):
        monkeypatch.setattr(deform_cpu, "usable", lambda t: native)
        leaves = [t.to(dtype).requires_grad_() for t in (x, off, w, bias, mask)]
        out = stnkit.deform_conv2d(*leaves[:4], padding=1, mask=leaves[4])
        return [out, *torch.autograd.grad(out, leaves, gout.to(dtype))]

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        got, again = run(True), run(True)
    finally:
        torch.set_num_threads(before)
    want = run(False)
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-4, rtol=2e-4)
    for name, a, b, c in zip(["output", "input", "offset", "weight", "bias", "mask"], got, want, again):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
        assert torch.equal(a, c), f"{name} differs between two runs on 4 threads"
    assert set(slices) == {ns}, slices


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


CHECK = """
    import torch, stnkit
    from stnkit.kernels import deform_cpu
    x, off, w = torch.randn(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(3, 2, 3, 3)
    want = torch.nn.functional.conv2d(x, w, padding=1)
    torch.testing.assert_close(stnkit.deform_conv2d(x, off * 0, w, padding=1), want)
    print("AVAILABLE", deform_cpu.available(), "WHY", deform_cpu.why_not())
"""


@needs_compiler
def test_the_build_is_cached_per_source_compiler_and_cpu(tmp_path):
    """The first process compiles into $XDG_CACHE_HOME/stnkit/kernels; the next loads that file
    and only asks the compiler its version."""
    log, cxx = tmp_path / "calls", tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {deform_cpu._compiler()} "$@"\n')
    cxx.chmod(0o755)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "CXX": str(cxx)}
    for run in range(2):
        done = _python(CHECK, env)
        assert "AVAILABLE True WHY None" in done.stdout, done.stderr
        calls = log.read_text().splitlines()
        assert [c.split()[0] for c in calls] == ["--version", "-O3"] + ["--version"] * run, calls
    assert [p.suffix for p in (tmp_path / "cache" / "stnkit" / "kernels").iterdir()] == [".so"]


@needs_compiler
def test_an_unwritable_cache_builds_in_the_temp_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    done = _python(CHECK, {"XDG_CACHE_HOME": str(tmp_path / "file"), "TMPDIR": str(tmp_path)})
    assert "AVAILABLE True" in done.stdout, done.stderr
    assert list(tmp_path.glob("stnkit-kernels-*/deform_cpu-*.so"))


@pytest.mark.parametrize("env,why", [
    ({"CXX": "no-such-compiler"}, "no C++ compiler found (set CXX, or install g++ or clang++)"),
    ({"CXX": "false"}, "failed to compile deform_cpu.cpp"),
    ({"STNKIT_NATIVE": "0"}, "STNKIT_NATIVE=0"),
])
def test_without_the_kernel_it_runs_on_grid_sample_and_says_why_once(tmp_path, env, why):
    code = textwrap.dedent(CHECK) + "stnkit.deform_conv2d(x, off, w, padding=1)\n"  # a second call: no second warning
    done = _python(code, {"XDG_CACHE_HOME": str(tmp_path), **env})
    assert "AVAILABLE False" in done.stdout and why in done.stdout, (done.stdout, done.stderr)
    warned = [line for line in done.stderr.splitlines() if "deform_conv2d's CPU kernel is not available" in line]
    assert len(warned) == (0 if "STNKIT_NATIVE" in env else 1), done.stderr
    if warned:
        assert why in warned[0] and "using the slower grid_sample path" in warned[0]


@pytest.mark.parametrize("stride,masked", [(1, True), (2, False)])
def test_the_benchmark_checks_its_peers_before_timing_them(monkeypatch, stride, masked):
    """bench_deform.py times its peers only after checking them against stnkit: they agree, and
    a peer that samples at the wrong place (offsets with dy and dx swapped) is caught."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_deform

    bench_deform.check_peers((2, 4, 9, 8), 3, stride, masked)
    B, _, Ho, Wo = (2, 18) + (((9 - 1) // stride + 1), ((8 - 1) // stride + 1))
    swapped = lambda x, off, *a: bench_deform.peer_gather(x, off.view(B, 9, 2, Ho, Wo).flip(2).reshape(B, 18, Ho, Wo), *a)
    monkeypatch.setitem(bench_deform.IMPLS, "gather", swapped)
    with pytest.raises(AssertionError, match="peer gather disagrees"):
        bench_deform.check_peers((2, 4, 9, 8), 3, stride, masked)


@needs_compiler
def test_without_openmp_the_kernel_runs_on_its_own_threads(tmp_path):
    """A compiler without OpenMP (clang without libomp) builds the std::thread version, which
    gives the same results on several threads."""
    code = """
        import torch, stnkit
        from stnkit.kernels import deform_cpu
        deform_cpu.OPENMP = ()
        torch.set_num_threads(3)
        g = torch.Generator().manual_seed(0)
        x, off = torch.randn(2, 40, 6, 7, dtype=torch.float64, generator=g), torch.randn(2, 18, 6, 7, dtype=torch.float64, generator=g)
        w, m = torch.randn(5, 40, 3, 3, dtype=torch.float64, generator=g), torch.rand(2, 9, 6, 7, dtype=torch.float64, generator=g)
        def run():
            leaves = [t.clone().requires_grad_() for t in (x, off, w, m)]
            out = stnkit.deform_conv2d(leaves[0], leaves[1], leaves[2], padding=1, mask=leaves[3])
            return [out, *torch.autograd.grad(out.square().sum(), leaves)]
        got = run()
        assert deform_cpu.available() and deform_cpu._library().stnkit_dcn_openmp() == 0
        deform_cpu.usable = lambda t: False
        for a, b in zip(got, run()):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        print("AGREE")
    """
    done = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert "AGREE" in done.stdout, done.stderr


def test_images_beyond_int32_pixel_indices_take_the_grid_sample_path():
    """The kernel indexes pixels with int32 (up to two pixels outside the image): larger images go
    to the other path."""
    small, huge = torch.zeros(1, 1, 4, 4), torch.zeros(1).expand(1, 1, 46340, 46340)
    assert not deform_cpu.usable(huge)
    assert deform_cpu.usable(small) == deform_cpu.available()


@pytest.mark.parametrize("B,C,Ho,Wo", [(8, 64, 56, 56), (8, 64, 28, 28), (1, 256, 128, 128), (3, 2, 5, 7), (64, 16, 14, 14)])
def test_chunks_cover_the_batch_once_within_their_budget(B, C, Ho, Wo):
    """Every (item, output row) in exactly one chunk; a chunk's columns at most CHUNK_BYTES and
    at most a quarter of the call's (unless a quarter is under MIN_CHUNK_BYTES), or one row."""
    K, itemsize = 9, 4
    plan = deform_cpu._chunks(B, C, K, Ho, Wo, itemsize)
    cells = sorted((b, r) for b0, nb, r0, nr in plan for b in range(b0, b0 + nb) for r in range(r0, r0 + nr))
    assert cells == [(b, r) for b in range(B) for r in range(Ho)]
    row, total = K * Wo * C * itemsize, B * Ho * K * Wo * C * itemsize
    budget = min(deform_cpu.CHUNK_BYTES, max(deform_cpu.MIN_CHUNK_BYTES, total // 4))
    for b0, nb, r0, nr in plan:
        assert nb * nr * row <= budget or (nb, nr) == (1, 1)
        assert nb == 1 or nr == Ho  # several items only as whole items
    assert len(plan) == 1 or max(nb * nr for _, nb, _, nr in plan) * row > budget // 2  # not needlessly small
