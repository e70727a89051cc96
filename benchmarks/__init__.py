"""Benchmarks of lightning_gpt: `python -m benchmarks [--quick] [--only NAME ...] [--json PATH]`.

Each module has `run(quick: bool) -> list[dict]`; a row is {benchmark, case, metric, value, unit} plus
optional ratio, target (e.g. ">= 0.97", checked against ratio when there is one, else value) and note.
Figures that matter are ratios measured within one run, because shared machines are noisy.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LGPT_SHARED", ROOT.parent / "shared")).resolve()
TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"


def row(
    benchmark: str,
    case: str,
    metric: str,
    value: float,
    unit: str,
    ratio: float | None = None,
    target: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    out = {"benchmark": benchmark, "case": case, "metric": metric, "value": value, "unit": unit}
    out.update({k: v for k, v in (("ratio", ratio), ("target", target), ("note", note)) if v is not None})
    return out


def child_env(**extra: str) -> dict[str, str]:
    """Environment for the processes a benchmark launches: offline, quiet, our package importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def lgpt_train() -> list[str]:
    """The installed `lgpt-train` console script, as a user launches it."""
    script = Path(sys.executable).with_name("lgpt-train")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_gpt.apps.train"]


def run_child(cmd: list[str], env: dict[str, str], timeout: float = 600, cwd: Path | None = None) -> str:
    """Run a command; return its stdout, or raise with the tail of its output when it fails."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def read_json_line(stdout: str, tag: str) -> Any:
    """The JSON a child printed on a line starting with `tag`."""
    for line in reversed(stdout.splitlines()):
        if tag in line:
            return json.loads(line.split(tag, 1)[1])
    raise RuntimeError(f"the child printed no {tag} line; its output ends with:\n{stdout[-2000:]}")


class Baton:
    """Turn-taking between the benchmark and one process it started: two named pipes, "go" (the benchmark
    writes g) and "done" (the process writes a byte when its turn ends). Named, so a process started by any
    launcher finds them through an environment variable (a warm start in the tests, a Hydra app); the
    benchmark holds both ends open, so neither side waits to open them."""

    def __init__(self, folder: Path, name: str):
        self.paths = [folder / f"{name}.go", folder / f"{name}.done"]
        for path in self.paths:
            os.mkfifo(path)
        self.go, self.done = (os.open(path, os.O_RDWR) for path in self.paths)

    def __str__(self) -> str:
        return ",".join(map(str, self.paths))  # what the process gets, to open_baton

    def wait(self, proc: subprocess.Popen, timeout: float) -> bytes:
        """The byte that ends the process's turn, or b"" if it exited (or the timeout passed) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.done], [], [], 0.1)[0]:
                return os.read(self.done, 1)
            if proc.poll() is not None:
                return b""
        return b""

    def close(self) -> None:
        os.close(self.go)
        os.close(self.done)


def open_baton(value: str) -> tuple[int, int]:
    """In the benchmarked process: (fd to read "go" from, fd to write "done" to) from str(Baton)."""
    go, done = value.split(",")
    return os.open(go, os.O_RDONLY), os.open(done, os.O_WRONLY)


class Stopwatch:
    """`with Stopwatch() as t: ...; t.seconds`"""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


class TimesSteps:
    """A callback mixin (put it before the callback class) that times each training step and each `work`
    done inside `timed(work)`, wall and CPU seconds, into `self.times`: what one extra piece of work per
    validation costs against the steps of the same run."""

    def __init__(self, work: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.times: dict[str, list[float]] = {work: [], "steps": [], f"{work}_cpu": [], "steps_cpu": []}
        self._start = (0.0, 0.0)

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def _record(self, name: str) -> None:
        wall, cpu = self._now()
        self.times[name].append(wall - self._start[0])
        self.times[f"{name}_cpu"].append(cpu - self._start[1])

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_start(*args, **kwargs)  # type: ignore[misc]
        self._start = self._now()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(*args, **kwargs)  # type: ignore[misc]
        self._record("steps")

    @contextmanager
    def timed(self, work: str) -> Iterator[None]:
        self._start = self._now()
        yield
        self._record(work)
