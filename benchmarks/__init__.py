"""Benchmarks of lightning_gpt: `python -m benchmarks [--quick] [--only NAME ...] [--json PATH]`.

Each module has `run(quick: bool) -> list[dict]`; a row is {benchmark, case, metric, value, unit} plus
optional ratio, target (e.g. ">= 0.97", checked against ratio when there is one, else value) and note.
Figures that matter are ratios measured within one run, because shared machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_gpt.train"]


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


class Stopwatch:
    """`with Stopwatch() as t: ...; t.seconds`"""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
