"""Fixtures every test module shares: offline settings, one thread per worker, a token cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .support.config import SHARED

os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # with pytest -n, one thread per worker: oversubscribed cores crawl
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch's import, here and in the processes tests start
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session: each corpus is tokenized once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _fresh_run_stamp(monkeypatch):
    """Each test's launches name their own run folders."""
    monkeypatch.delenv("LGPT_RUN_STAMP", raising=False)


@pytest.fixture
def lgpt_train(tmp_path, cache_dir):
    """lgpt-train in this process, writing under tmp_path with the session's token cache:
    lgpt_train(*overrides, run_dir=tmp_path / "run") returns the run folder (exit code 0 asserted), and
    lgpt_train(..., code=2) a refused launch's exit code."""
    from lightning_gpt.apps.train import main

    def run(*overrides: str, run_dir: Path | None = None, code: int = 0) -> Path:
        run_dir = run_dir or tmp_path / "run"
        paths = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
        assert main([*paths, *overrides]) == code
        return run_dir

    return run
