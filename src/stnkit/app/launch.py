"""`stnkit train --nproc N`: the same command under `torchrun --standalone --nproc_per_node=N`.

torchrun runs in a session of its own, so that Ctrl-C reaches only this process, which passes it
on to the workers themselves: they stop together after the same step, rank 0 saves a checkpoint
and says how to go on, and this command exits 128 + the signal like a one-process run. After
that, torchrun's own report of workers that stopped (a traceback of its launcher) is not shown."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("stnkit")


def children(pid: int) -> list[int]:
    """The child processes of pid (Linux /proc); [] where that cannot be read."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _relay(fd: int, stopping: list) -> None:
    """Copy the workers' and torchrun's stderr through; once stopping, only stnkit's own lines."""
    rest = b""
    for chunk in iter(lambda: os.read(fd, 1 << 14), b""):
        if stopping:
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            chunk = b"".join(ln + b"\n" for ln in lines if ln.lstrip(b"\r").startswith(b"stnkit:"))
        if chunk:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()


def torchrun(nproc: int, argv: list[str]) -> int:
    """Run `stnkit ARGV` in nproc processes on this machine -> the exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "stnkit", *argv]
    log.info("running: " + " ".join(cmd[1:]))
    env = {**os.environ, "STNKIT_TTY": "1" if sys.stderr.isatty() else "0"}  # progress bars through the pipe
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, env=env)
    got: list[int] = []
    relay = threading.Thread(target=_relay, args=(proc.stderr.fileno(), got), daemon=True)
    relay.start()

    def forward(signum, frame):
        if not got:
            got.append(signum)
        workers = children(proc.pid)
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if not workers:  # no /proc: torchrun's own shutdown sends the workers SIGTERM
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
        relay.join(timeout=5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 + got[0] if got else code
