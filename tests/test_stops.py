"""Stopping is safe and said: SIGINT and SIGTERM write a checkpoint at the current step, print one
line with what was saved and the command that continues, and exit 130 / 143; the continued run
ends exactly as an unbroken one. Rank 0 of a multi-process run does this for the group."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stnkit.app.cli import main
from stnkit.train import checkpoint as ckpt
from stnkit.train import engine, objectives
from stnkit.train.stops import StopSignals, TrainingInterrupted
from test_engine import cfg_for, rows_of, weights, without_time

ARGS = ["r", "--model", "st-fcn-affine", "epochs=6", "steps_per_epoch=30", "batch_size=32", "progress=false",
        "threads=1", "eval_batch_size=1000"]


def signal_at_call(monkeypatch, n: int, sig) -> object:
    """Send this process sig during the n-th loss computation (training steps and test batches
    alike) -> the real loss function, to put back."""
    real, calls = objectives.loss_and_errors, {"n": 0}

    def signalling(logits, y):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)
        return real(logits, y)

    monkeypatch.setattr(objectives, "loss_and_errors", signalling)
    return real


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_signals_set_a_flag_and_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's notice after the terminal's: still stopping
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back


def test_a_signal_mid_epoch_saves_that_step_and_resume_matches_an_unbroken_run(tmp_path, monkeypatch):
    unbroken = engine.train(cfg_for(tmp_path, name="a", epochs=3))
    real = signal_at_call(monkeypatch, 6, signal.SIGTERM)  # epoch 1: 4 steps + 1 eval, then epoch 2
    with pytest.raises(TrainingInterrupted) as e:
        engine.train(cfg_for(tmp_path, name="b", epochs=3))
    assert e.value.signum == signal.SIGTERM and e.value.checkpoint.name == "step-00000005"
    assert "epoch 2, step 1 (global step 5)" in str(e.value) and f"stnkit train --resume {tmp_path / 'b'}" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the default comes back
    monkeypatch.setattr(objectives, "loss_and_errors", real)
    b = engine.train(cfg_for(tmp_path, name="b", epochs=3), resume=True)
    assert same_weights(unbroken, b) and without_time(rows_of(unbroken)) == without_time(rows_of(b))


def started(cmd, tmp_path, run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / run / "metrics.jsonl").is_file() or not (tmp_path / run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_command_line_stops_on_a_signal_says_so_and_continues_exactly(tmp_path, sig, code):
    proc = started([sys.executable, "-m", "stnkit", "train", *ARGS, f"out={tmp_path}", "name=b"], tmp_path, "b")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    said = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(said) == 2, err  # the notice, then what was saved
    saved = ckpt.latest_good(tmp_path / "b")
    assert said[-1].startswith(f"stnkit: stopped by {signal.Signals(sig).name} at ")
    assert f"saved {saved}; continue with: stnkit train --resume {tmp_path / 'b'}" in said[-1]
    assert main(["train", "--resume", str(tmp_path / "b")]) == 0
    assert main(["train", *ARGS, f"out={tmp_path}", "name=a"]) == 0
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert without_time(rows_of(tmp_path / "a")) == without_time(rows_of(tmp_path / "b"))


def test_nproc_stops_every_process_at_one_step_and_rank_0_says_so(tmp_path):
    cmd = [sys.executable, "-m", "stnkit", "train", *ARGS, f"out={tmp_path}", "--nproc", "2"]
    proc = started([*cmd, "name=b"], tmp_path, "b")
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches the command, which passes it to the workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("stnkit: stopped by SIGINT") == 1, err
    assert "--resume " + str(tmp_path / "b") + " --nproc 2" in err
    assert main(["train", "--resume", str(tmp_path / "b"), "--nproc", "2"]) == 0
    assert main(["train", *ARGS, f"out={tmp_path}", "--nproc", "2", "name=a"]) == 0
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert without_time(rows_of(tmp_path / "a")) == without_time(rows_of(tmp_path / "b"))
