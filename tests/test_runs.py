"""Run folders from the Python side: each launch its own."""

from __future__ import annotations

import sys

import pytest

from .conftest import TINY, TINY_SHAKESPEARE


@pytest.mark.slow
def test_two_launches_in_one_python_process_get_two_run_folders(tmp_path, cache_dir, monkeypatch):
    from lightning_gpt.train import main

    monkeypatch.delenv("LGPT_RUN_STAMP", raising=False)
    args = [
        "lgpt-train",
        *TINY,
        "debug=fast_dev_run",
        "data=local",
        f"data.path={TINY_SHAKESPEARE}",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
    ]
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", list(args))
        main()
    runs = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if ".hydra" not in p.parts]
    assert len(set(runs)) == 2
