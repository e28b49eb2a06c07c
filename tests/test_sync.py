"""The sync-free hot path: stnkit's value checks on a GPU make no host sync, yet bad values are
still caught, with the same messages as on a CPU (`checks("deferred")` and the engine's
`sync_every`). On a CPU, "no sync" is checked as "no tensor read on the host": every method that
reads a tensor's values into Python raises inside the block under test."""
import json
import math
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

import stnkit
from stnkit import transforms as T
from stnkit._checks import BadValues, checks
from stnkit.app.cli import main
from stnkit.layers import LocalisationDiverged
from stnkit.train import engine, objectives

READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "nonzero", "numpy", "cpu")


@contextmanager
def no_host_reads():
    """Inside: any Tensor method that reads values into Python raises AssertionError."""
    saved = {n: getattr(torch.Tensor, n) for n in READS}

    def forbid(name):
        def read(self, *a, **k):
            raise AssertionError(f"host read: Tensor.{name}")
        return read

    for n in READS:
        setattr(torch.Tensor, n, forbid(n))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_reads_catches_a_read():
    with pytest.raises(AssertionError, match="Tensor.__bool__"), no_host_reads():
        bool(torch.tensor(True))


CASES = [("translation", (2, 1, 9, 9)), ("attention", (2, 1, 9, 9)), ("rigid", (2, 1, 9, 9)),
         ("similarity", (2, 1, 9, 9)), ("affine", (2, 1, 9, 9)), ("projective", (2, 1, 9, 9)),
         ("tps", (2, 1, 9, 9)), ("attention3d", (2, 1, 5, 5, 5)), ("affine3d", (2, 1, 5, 5, 5))]


def _params(family, B=2):
    p = T.identity(family, B)
    return p + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family, shape", CASES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_warp_forward_and_backward_read_nothing_back(family, shape, mode, padding_mode):
    x = torch.randn(shape, requires_grad=True)
    p = _params(family).requires_grad_()
    stnkit.warp(x, p, family, mode=mode, padding_mode=padding_mode)  # warm caches (TPS basis) first
    for fill in (None, 0.5, torch.tensor([0.25])):
        with checks("deferred") as found, no_host_reads():
            out = stnkit.warp(x, p, family, mode=mode, padding_mode=padding_mode, fill=fill)
            out.sum().backward()
            ok = found.ok()
        assert len(found) >= 1 and bool(ok)  # the checks were recorded, and passed


def test_grid_points_flow_and_matrix_input_read_nothing_back():
    p = _params("projective")
    H = T.get("projective").canonical(p)  # (B, 8)
    H33 = torch.cat([H, torch.ones(2, 1)], 1).view(2, 3, 3) * 2.0  # a (B, 3, 3) homography, h33 = 2
    flow = 0.05 * torch.randn(2, 6, 6, 2)
    with checks("deferred") as found, no_host_reads():
        stnkit.grid(p, "projective", (6, 6))
        stnkit.warp_points(torch.rand(2, 5, 2), p, "projective")
        stnkit.warp(torch.randn(2, 1, 6, 6), H33, "projective")
        stnkit.warp(torch.randn(2, 1, 6, 6), flow, "flow")
    assert len(found) >= 5 and bool(found.ok())


@pytest.mark.parametrize("cls, kw", [(stnkit.SpatialTransformer, {}),
                                     (stnkit.SpatialTransformer, {"bounds": {"linear": (-1.5, 1.5)}}),
                                     (stnkit.CompositionalTransformer, {})])
def test_transformer_modules_read_nothing_back(cls, kw):
    st = cls(stnkit.fc_localisation(1 * 12 * 12), "affine", (6, 6), **kw)
    x = torch.randn(3, 1, 12, 12)
    with checks("deferred") as found, no_host_reads():
        st(x).square().sum().backward()
    assert bool(found.ok())


# -- what a deferred check reports: the message the call raises on a CPU -------------------------

def _raised(fn):
    try:
        fn()
    except ValueError as e:
        return e
    raise AssertionError("no error")


BAD = {
    "nan params": lambda: stnkit.warp(torch.randn(3, 1, 5, 5), torch.tensor([[1.0, 0, 0, 0, 1, 0]] * 2
                                                                             + [[math.nan, 0, 0, 0, 1, 0]]), "affine"),
    "huge params": lambda: stnkit.warp(torch.randn(2, 1, 5, 5), torch.tensor([[1e38, 0.0, 0.0]] * 2), "attention"),
    "nan fill": lambda: stnkit.warp(torch.randn(1, 2, 5, 5), T.identity("affine", 1), "affine",
                                    fill=torch.tensor([0.0, math.inf])),
    "nan number fill": lambda: stnkit.warp(torch.randn(1, 1, 5, 5), T.identity("affine", 1), "affine", fill=math.nan),
    "h33 zero": lambda: stnkit.warp(torch.randn(1, 1, 5, 5), torch.zeros(1, 3, 3), "projective"),
    "singular inverse": lambda: stnkit.invert(torch.zeros(2, 6), "affine"),
    "nan points": lambda: stnkit.warp_points(torch.tensor([[0.0, math.nan]]), T.identity("affine", 1), "affine"),
    "nan homography": lambda: stnkit.grid(torch.full((2, 3, 3), math.nan), "projective", (4, 4)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_deferred_check_reports_what_the_call_raises(case):
    now = _raised(BAD[case])
    with checks("deferred") as found:
        try:
            BAD[case]()
        except (ValueError, RuntimeError):
            pass  # an error that is not a value check (later code meeting the bad values) may still raise
    assert not bool(found.ok())
    later = found.error()
    assert type(later) is type(now) and str(later) == str(now)
    with pytest.raises(type(now), match="^" + __import__("re").escape(str(now)) + "$"):
        found.raise_if_bad()


def test_a_diverged_localisation_net_is_named_by_a_deferred_check_too():
    st = stnkit.SpatialTransformer(stnkit.fc_localisation(25), "affine", (5, 5))
    with torch.no_grad():
        st.regression.bias[0] = math.nan
    x = torch.randn(2, 1, 5, 5)
    now = _raised(lambda: st(x))
    with checks("deferred") as found:
        out = st(x)  # no error here: the NaN runs on
    assert torch.isnan(out).all()
    later = found.error()
    assert isinstance(now, LocalisationDiverged) and isinstance(later, LocalisationDiverged)
    assert str(later) == str(now) and "batch items [0, 1]" in str(now)


def test_checks_modes_nest_and_restore():
    bad = BAD["nan params"]
    with checks("deferred") as outer:
        bad()
        with checks("sync"):
            with pytest.raises(BadValues):
                bad()
        bad()
    assert len(outer) == 2 and isinstance(outer.error(), BadValues)
    with pytest.raises(BadValues):
        bad()  # outside any block: a CPU tensor raises at once
    with pytest.raises(ValueError, match=r"mode must be one of \['sync', 'deferred'\], got 'later'"):
        with checks("later"):
            pass


def test_deferred_checks_keep_no_autograd_graph_alive():
    import gc
    import weakref

    st = stnkit.SpatialTransformer(stnkit.fc_localisation(25), "affine", (5, 5))
    refs = []
    st.regression.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))  # theta, in the graph
    with checks("deferred") as found:
        out = st(torch.randn(2, 1, 5, 5, requires_grad=True))
        del out
        gc.collect()
    assert refs and refs[0]() is None and len(found) > 0


# -- the engine: one host sync every sync_every steps --------------------------------------------

ARGS = ["r", "--model", "st-fcn-affine", "batch_size=32", "steps_per_epoch=6", "epochs=2", "eval_batch_size=1000",
        "progress=false", "threads=1", "lr=0.05"]


def _train(tmp_path, name, *extra):
    assert main(["train", *ARGS, f"out={tmp_path}", f"name={name}", *extra]) == 0
    return tmp_path / name


def _rows(run):
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_syncing_less_often_trains_exactly_the_same(tmp_path):
    from safetensors.torch import load_file
    from stnkit.train import checkpoint as ckpt

    a, b = _train(tmp_path, "every", "sync_every=1"), _train(tmp_path, "fourth", "sync_every=4")
    assert _rows(a) == _rows(b)
    wa, wb = (load_file(str(ckpt.candidates(r)[0] / ckpt.MODEL)) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_between_syncs_a_training_step_reads_nothing_back(tmp_path, monkeypatch):
    real, seen = engine.one_step, []

    def watched(run, batch, epoch, i, sync=True):
        if sync:
            return real(run, batch, epoch, i, sync)
        with no_host_reads():
            out = real(run, batch, epoch, i, sync)
        seen.append(i)
        return out

    monkeypatch.setattr(engine, "one_step", watched)
    # SGD: Adam reads its step counter with .item(), a CPU tensor also when training on a GPU (no sync)
    _train(tmp_path, "a", "sync_every=3", "optimizer=sgd")
    assert seen == [0, 1, 3, 4] * 2  # steps 3 and 6 of each epoch sync (6: the epoch's end)


def _poison_loss(monkeypatch, call):
    real, calls = objectives.loss_and_errors, {"n": 0}

    def poisoned(logits, y):
        calls["n"] += 1
        loss, err = real(logits, y)
        return (loss * math.nan if calls["n"] == call else loss), err

    monkeypatch.setattr(objectives, "loss_and_errors", poisoned)


def _stepped(monkeypatch):
    """-> a list that counts the optimizer steps taken."""
    make, steps = engine.make_optimizer, []

    def make_optimizer(cfg, model):
        opt = make(cfg, model)
        step = opt.step
        opt.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
        return opt

    monkeypatch.setattr(engine, "make_optimizer", make_optimizer)
    return steps


def test_a_nan_between_syncs_is_named_by_its_own_step(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, 2)
    steps = _stepped(monkeypatch)
    with pytest.raises(engine.TrainingDiverged) as e:
        engine.train(_cfg(tmp_path, sync_every=5))
    assert "loss is nan at epoch 1, step 2 (global step 2), batch of examples 32-63" in str(e.value)
    assert len(steps) == 4  # found at the sync of step 5, before its backward


def test_a_localisation_net_diverging_between_syncs_is_named(tmp_path, monkeypatch):
    from test_faults import nan_after_step

    nan_after_step(monkeypatch, 1, lambda model: model.transformers[0].regression.weight)
    with pytest.raises(engine.TrainingDiverged) as e:
        engine.train(_cfg(tmp_path, sync_every=4))
    msg = str(e.value)
    assert "at epoch 1, step 2 (global step 2)" in msg and "localisation net of this SpatialTransformer" in msg


def _cfg(tmp_path, **kw):
    from stnkit.train.config import build

    return build(dict(experiment="r", model="st-fcn-affine", batch_size=32, steps_per_epoch=6, epochs=1,
                      eval_batch_size=1000, progress=False, threads=1, lr=0.05, out=str(tmp_path), name="run", **kw))


def test_sync_every_is_checked_and_resumable(tmp_path, capsys):
    assert main(["train", *ARGS, f"out={tmp_path}", "name=b", "sync_every=-1"]) == 2
    assert "'sync_every'" in capsys.readouterr().err
    from stnkit.train.config import RESUMABLE

    assert "sync_every" in RESUMABLE
    assert engine.sync_interval(_cfg(tmp_path), torch.device("cpu")) == 1
    assert engine.sync_interval(_cfg(tmp_path), torch.device("cuda")) == 50  # log_every
    assert engine.sync_interval(_cfg(tmp_path, sync_every=7), torch.device("cuda")) == 7


# -- on a GPU --------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_the_hot_path_makes_no_host_sync_on_cuda():
    dev = torch.device("cuda")
    st = stnkit.SpatialTransformer(stnkit.conv_localisation(1, (28, 28)), "affine", (14, 14)).to(dev)
    ic = stnkit.CompositionalTransformer(stnkit.conv_localisation(1, (28, 28)), "projective", (14, 14)).to(dev)
    x = torch.randn(8, 1, 28, 28, device=dev, requires_grad=True)
    cases = [(f, _params(f, 8).to(dev)) for f, _ in CASES if not f.endswith("3d")]

    import importlib.util

    backends = ["torch"] + (["triton"] if importlib.util.find_spec("triton") else [])

    def run():
        for family, p in cases:
            for backend in backends:
                stnkit.warp(x, p, family, fill=0.5, backend=backend).sum().backward()
            stnkit.grid(p, family, (7, 7))
            stnkit.warp_points(torch.rand(8, 4, 2, device=dev), p, family)
        st(x).sum().backward()
        ic(x).sum().backward()

    run()  # caches and lazy CUDA initialisation first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        with checks("deferred") as found:  # a per-channel fill on the CPU, the rest on the GPU
            stnkit.warp(x, cases[0][1], cases[0][0], fill=torch.tensor([0.5]))
            ok = found.ok()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ok.device.type == "cuda" and bool(ok)


@pytest.mark.cuda
def test_the_training_step_makes_no_host_sync_on_cuda(tmp_path, monkeypatch):
    real, seen = engine.one_step, []

    def watched(run, batch, epoch, i, sync=True):
        if sync or i == 0:  # step 0 warms up the CUDA libraries
            return real(run, batch, epoch, i, sync)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = real(run, batch, epoch, i, sync)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        seen.append(i)
        return out

    monkeypatch.setattr(engine, "one_step", watched)
    engine.train(_cfg(tmp_path, device="cuda", sync_every=6))
    assert seen == [1, 2, 3, 4]


@pytest.mark.cuda
def test_bad_params_on_cuda_stop_the_program_with_a_device_assert():
    code = ("import torch, stnkit\n"
            "p = torch.full((2, 6), float('nan'), device='cuda')\n"
            "out = stnkit.warp(torch.randn(2, 1, 5, 5, device='cuda'), p, 'affine')\n"
            "torch.cuda.synchronize()\n"
            "print('not caught')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not caught" not in r.stdout
    assert "device-side assert" in r.stderr, r.stderr[-2000:]
    with checks("sync"), pytest.raises(BadValues, match=r"batch item\(s\) \[0, 1\] hold NaN"):
        stnkit.warp(torch.randn(2, 1, 5, 5, device="cuda"), torch.full((2, 6), math.nan, device="cuda"), "affine")


def test_the_docs_example_runs_and_raises_on_a_diverged_net():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    section = text[text.index("### Value checks on a GPU"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 3)]
    st = stnkit.SpatialTransformer(stnkit.fc_localisation(25), "affine", (5, 5))
    env = dict(stnkit=stnkit, st=st, x=torch.randn(2, 1, 5, 5), y=torch.tensor([0, 1]),
               criterion=lambda out, y: out.flatten(1)[:, :2].sum())
    exec(code, dict(env))  # healthy: runs through
    with torch.no_grad():
        st.regression.bias[2] = math.inf
    with pytest.raises(LocalisationDiverged, match=r"batch items \[0, 1\]"):
        exec(code, dict(env))
