"""Apps in processes of their own, for what only a process shows: signals, SIGKILL, several processes, a fresh
interpreter's console. Everything else calls an app's main(argv) in the test's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import ROOT
from .runs import saved_step


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child (not LGPT_RUN_STAMP: each launch names its own run folder)."""
    return {**{k: v for k, v in os.environ.items() if k != "LGPT_RUN_STAMP"}, **extra}


def run_app(
    module: str, *args: str, cwd: Path = ROOT, env: dict | None = None, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=child_env(**(env or {})),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_app(module: str, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """`python -m <module> <args>` started in a process group of its own (it and the processes it starts), to
    signal or kill while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=child_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a started app and every process it started (DDP ranks, loader workers), as a lost node would."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the checkpoint at path has reached step (the process must still run)."""
    deadline = time.monotonic() + timeout
    while saved_step(path) < step:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        assert time.monotonic() < deadline, f"no checkpoint of step {step} at {path} in {timeout} s"
        time.sleep(0.05)
