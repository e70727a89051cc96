"""Shared fixtures: the shared data beside the project, a private cache, Hydra composition."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from lightning_gpt.cli import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LGPT_SHARED", ROOT.parent / "shared")).resolve()
TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
WARM = ROOT / "tests" / "warm.py"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # with pytest -n, one thread per worker: oversubscribed cores crawl
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch's import (not the xdist controller's: it runs no tests)

# A tiny model that trains in seconds on a CPU.
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.batch_size=8",
    "data.val_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "sample.max_new_tokens=20",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session: each corpus is tokenized once."""
    return tmp_path_factory.mktemp("cache")


def compose_train_config(tmp_path: Path, cache_dir: Path, *overrides: str, output_dir: Path | None = None):
    """The lgpt-train config as the CLI would compose it, writing under tmp_path (output_dir: the run folder)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={output_dir or tmp_path / 'run'}",
                f"paths.cache_dir={cache_dir}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # the app's task sees the job config alone, as under @hydra.main
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_train(tmp_path, cache_dir):
    """Compose the lgpt-train config as the CLI would, writing under tmp_path."""

    def _compose(*overrides: str, output_dir: Path | None = None):
        return compose_train_config(tmp_path, cache_dir, *overrides, output_dir=output_dir)

    yield _compose
    GlobalHydra.instance().clear()


SERVER = "LGPT_TEST_WARM_SERVER"  # the session's warm-start server socket, for every test worker


def pytest_configure(config: pytest.Config) -> None:
    """Name the session's warm-start server (tests/warm.py) before xdist starts its workers, which inherit the
    environment: the first test that needs it starts it, for all of them, and it lives as long as this
    process. The fast tier uses none, so it starts none."""
    if hasattr(config, "workerinput") or SERVER in os.environ:
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lgpt-warm-"))
    os.environ[SERVER] = f"{folder / 'server.sock'}:{os.getpid()}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or SERVER not in os.environ:
        return
    import shutil
    import signal

    pid_file = Path(os.environ[SERVER].rsplit(":", 1)[0]).with_name("server.pid")
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the server and its monitors
        except ProcessLookupError:
            pass
    shutil.rmtree(pid_file.parent, ignore_errors=True)


def warm_socket() -> str:
    """The socket of the session's warm-start server, started by the first caller in any worker (under a
    lock), once it has done its imports."""
    import fcntl

    from .warm import ENV

    path, owner = os.environ[SERVER].rsplit(":", 1)
    socket_path, log = Path(path), Path(path).with_name("server.log")
    with open(socket_path.with_name("lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not socket_path.with_name("server.pid").exists():
            env = {k: v for k, v in os.environ.items() if k not in ("LGPT_RUN_STAMP", ENV, "OMP_NUM_THREADS")}
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [sys.executable, str(WARM), "--serve", path, owner],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    cwd=ROOT,
                    start_new_session=True,
                )
            socket_path.with_name("server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 300
    while not socket_path.exists():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return path


def run_cli(
    *args: str,
    module: str = "lightning_gpt.train",
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = 300,
    fresh: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run one of our apps in its own process, as a user would: a child of this worker's warm-start server
    (tests/warm.py: the app's code from its first line, without seconds of imports), or with fresh=True a new
    interpreter, for what only one shows (import-time warnings and costs)."""
    from .warm import ENV

    launcher = [sys.executable, "-m", module] if fresh else [sys.executable, str(WARM), module]
    return subprocess.run(
        [*launcher, *args],
        # Not LGPT_RUN_STAMP: an in-process test may have named its run folder, a new process names its own.
        cwd=cwd,
        env={
            **{k: v for k, v in os.environ.items() if k != "LGPT_RUN_STAMP"},
            **({} if fresh else {ENV: warm_socket()}),
            **(env or {}),
        },
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
