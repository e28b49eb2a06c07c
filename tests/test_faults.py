"""Faults a long run meets: SIGKILL at any step or inside a checkpoint write, damaged checkpoint
files, NaN/Inf, a full disk, bad settings. Each ends in a clear message and, where the run can
go on, `--resume` reaches the same final weights as an unbroken run."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from stnkit.train import checkpoint as ckpt
from stnkit.train import engine, objectives
from stnkit.app.cli import main

ARGS = ["r", "--model", "st-fcn-affine", "batch_size=32", "steps_per_epoch=6", "epochs=3", "checkpoint_every=2",
        "eval_batch_size=1000", "progress=false", "threads=1", "lr=0.05", "keep_checkpoints=3"]
TOTAL = 18  # steps of the run above

# Runs the CLI in a child process that SIGKILLs itself: after optimizer step N ("step N"), or
# right after the model file of the K-th checkpoint is written ("save K").
KILLER = """
import os, signal, sys
from stnkit.app import cli
from stnkit.train import checkpoint, engine
mode, n = sys.argv[1], int(sys.argv[2])
count = [0]
def kill_after(fn):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped
if mode == "step":
    make = engine.make_optimizer
    def make_optimizer(cfg, model):
        opt = make(cfg, model)
        opt.step = kill_after(opt.step)
        return opt
    engine.make_optimizer = make_optimizer
else:
    checkpoint.save_file = kill_after(checkpoint.save_file)
sys.exit(cli.main(sys.argv[3:]))
"""


def child(args, *kill):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLER, *kill, *args] if kill else [sys.executable, "-m", "stnkit", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def weights(run_dir):
    return load_file(str(ckpt.candidates(run_dir)[0] / ckpt.MODEL))


def same(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def state_of(folder):
    return json.loads((folder / ckpt.STATE).read_text())


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    assert main(["train", *ARGS, f"out={out}", "name=a"]) == 0
    return out / "a"


def resume(out, name, *extra):
    assert main(["train", *ARGS, f"out={out}", f"name={name}", "--resume", *extra]) == 0
    return out / name


def test_sigkill_at_a_random_step_resumes_to_the_same_weights(tmp_path, unbroken):
    step = random.Random().randrange(1, TOTAL)
    p = child(["train", *ARGS, f"out={tmp_path}", "name=b"], "step", str(step))
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, out
    good = ckpt.latest_good(tmp_path / "b", warn=pytest.fail)
    kept = state_of(good)["global_step"] if good else 0
    assert step - kept < 2 + 1, f"killed after step {step}, newest checkpoint at {kept}"  # checkpoint_every=2
    assert same(unbroken, resume(tmp_path, "b")), f"killed after step {step}"


@pytest.mark.parametrize("save", [1, 4])  # inside the first checkpoint write, and a later one
def test_sigkill_inside_a_checkpoint_write(tmp_path, unbroken, save, capsys):
    p = child(["train", *ARGS, f"out={tmp_path}", "name=b"], "save", str(2 * save - 1))  # 2 files per save
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, out
    partial = list((tmp_path / "b" / "checkpoints").glob(".step-*"))
    assert len(partial) == 1 and not (partial[0] / ckpt.STATE).exists()  # half written, under a temp name
    assert len(ckpt.candidates(tmp_path / "b")) == save - 1  # never under a real name
    assert same(unbroken, resume(tmp_path, "b"))
    assert "interrupted" in capsys.readouterr().out and not partial[0].exists()


def test_sigkill_from_outside_at_a_random_moment(tmp_path, unbroken):
    rng = random.Random()
    args = ["train", *ARGS, f"out={tmp_path}", "name=b", "checkpoint_every=1"]
    p = child(args)
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpts.is_dir() and any(ckpts.iterdir())) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    delay = rng.uniform(0, 0.3)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    if p.returncode != -signal.SIGKILL:
        pytest.skip(f"the run finished before the kill at +{delay:.2f} s (machine too fast for this check)")
    assert same(unbroken, resume(tmp_path, "b", "checkpoint_every=1")), f"killed {delay:.3f} s after the first checkpoint"


def test_corrupted_checkpoint_is_named_and_the_previous_one_used(tmp_path, unbroken, capsys):
    assert main(["train", *ARGS, f"out={tmp_path}", "name=b", "epochs=2"]) == 0
    newest = ckpt.candidates(tmp_path / "b")[0]
    data = bytearray((newest / ckpt.MODEL).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
    (newest / ckpt.MODEL).write_bytes(bytes(data))
    assert same(unbroken, resume(tmp_path, "b"))
    io = capsys.readouterr()
    said = io.out
    assert f"skipping damaged checkpoint: {newest / ckpt.MODEL}: checksum mismatch" in io.err  # a warning: stderr
    assert "resuming" in said and newest.name not in said.split("resuming")[1].split("\n")[0]


def test_unreadable_state_and_all_damaged(tmp_path, capsys):
    assert main(["train", *ARGS, f"out={tmp_path}", "name=b", "epochs=1", "keep_checkpoints=2"]) == 0
    found = ckpt.candidates(tmp_path / "b")
    (found[0] / ckpt.STATE).write_text('{"epoch": 1, "sha')  # truncated JSON
    (found[1] / ckpt.EXTRA).write_bytes(b"")
    assert main(["train", *ARGS, f"out={tmp_path}", "name=b", "--resume"]) == 2
    io = capsys.readouterr()
    assert f"{found[0] / ckpt.STATE}: unreadable" in io.err and f"{found[1] / ckpt.EXTRA}" in io.err
    assert "every checkpoint" in io.err and "damaged" in io.err
    assert len(ckpt.candidates(tmp_path / "b")) == 2  # nothing deleted


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, unbroken, monkeypatch):
    real, calls = ckpt.save_file, {"n": 0}

    def disk_full_on_third_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 5:  # the model file of the 3rd checkpoint (2 files each)
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # partly written, then the device is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", disk_full_on_third_save)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device") as e:
        main_raising(["train", *ARGS, f"out={tmp_path}", "name=b"])
    previous = ckpt.candidates(tmp_path / "b")[0]
    assert str(previous) in str(e.value) and "--resume" in str(e.value)
    ckpt.verify(previous)  # intact
    assert state_of(previous)["global_step"] == 4
    assert not list((tmp_path / "b" / "checkpoints").glob(".step-*"))
    monkeypatch.setattr(ckpt, "save_file", real)  # space freed
    assert same(unbroken, resume(tmp_path, "b"))


def main_raising(argv):
    """Run `stnkit train` without the CLI's error printing, to see the exception itself."""
    from stnkit.app import cli

    args, extra = cli.parser().parse_known_args(argv)
    args.overrides = [*args.overrides, *extra]
    return engine.train(cli._config_from(args))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_loss_names_step_batch_and_checkpoint(tmp_path, monkeypatch, bad):
    real, calls = objectives.loss_and_errors, {"n": 0}

    def poisoned(logits, y):  # epoch 1: 6 steps + 1 eval call; poison epoch 2, step 3
        calls["n"] += 1
        loss, err = real(logits, y)
        return (loss * float(bad) if calls["n"] == 10 else loss), err

    monkeypatch.setattr(objectives, "loss_and_errors", poisoned)
    with pytest.raises(engine.TrainingDiverged) as e:
        main_raising(["train", *ARGS, f"out={tmp_path}", "name=b"])
    msg = str(e.value)
    assert f"loss is {float(bad)}" in msg and "epoch 2, step 3 (global step 9)" in msg
    assert "batch of examples 64-95" in msg and "step-00000008" in msg
    for folder in ckpt.candidates(tmp_path / "b"):
        assert all(torch.isfinite(v).all() for v in load_file(str(folder / ckpt.MODEL)).values())


def nan_after_step(monkeypatch, n, weight):
    """Make weight(model) NaN right after the n-th optimizer step of the next run."""
    make = engine.make_optimizer

    def make_optimizer(cfg, model):
        opt, calls = make(cfg, model), {"n": 0}
        step = opt.step

        def poisoned_step(*a, **k):
            out = step(*a, **k)
            calls["n"] += 1
            if calls["n"] == n:
                with torch.no_grad():
                    weight(model).fill_(float("nan"))
            return out
        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(engine, "make_optimizer", make_optimizer)


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    # on the epoch's last step, so the loss is still finite: the checkpoint's own check catches it
    nan_after_step(monkeypatch, 6, lambda model: next(model.parameters()))
    with pytest.raises(engine.TrainingDiverged, match=r"became NaN/Inf by global step 6 .*last good checkpoint: "):
        main_raising(["train", *ARGS, f"out={tmp_path}", "name=b"])
    good = [state_of(f)["global_step"] for f in ckpt.candidates(tmp_path / "b")]
    assert good == [4, 2]  # the mid-epoch ones, all finite; none at step 6


@pytest.mark.parametrize("override, key, allowed", [
    ("lr=-0.1", "lr", "positive finite number"),
    ("model=resnet9000", "model", "st-cnn-affine"),
    ("st_size=0", "st_size", "positive integer"),
    ("st_size=[28, 0]", "st_size", "[H, W]"),
    ("batch_size=4001", "batch_size", "batch_size <= 4000"),
    ("epochs=0", "epochs", "positive integer"),
    ("device=tpu", "device", "auto, cpu, cuda"),
    ("curriculum_epochs=-1", "curriculum_epochs", "integer >= 0"),
    ("restarts=0", "restarts", "positive integer"),
])
def test_invalid_settings_are_rejected_before_any_work(tmp_path, capsys, override, key, allowed):
    args = ARGS[:1] + ARGS[3:] if key == "model" else ARGS  # --model would win over model=
    assert main(["train", *args, f"out={tmp_path}", "name=b", override]) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and allowed in err, err
    assert not (tmp_path / "b").exists()  # nothing written


def test_a_diverged_localisation_net_stops_the_run_at_that_step(tmp_path, monkeypatch):
    nan_after_step(monkeypatch, 3, lambda model: model.transformers[0].regression.weight)
    with pytest.raises(engine.TrainingDiverged) as e:
        main_raising(["train", *ARGS, f"out={tmp_path}", "name=b"])
    msg = str(e.value)
    assert "epoch 1, step 4 (global step 4)" in msg and "localisation net" in msg and "affine" in msg
    assert "last good checkpoint: " in msg and "step-00000002" in msg
