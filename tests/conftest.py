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
