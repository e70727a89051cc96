"""Run folders from the Python side: each launch its own."""

from __future__ import annotations

import sys

import pytest

from .conftest import TINY, TINY_SHAKESPEARE


@pytest.mark.slow
def test_two_launches_in_one_python_process_get_two_run_folders(tmp_path, cache_dir, monkeypatch):
    from lightning_gpt.apps.train import main

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


@pytest.mark.slow
def test_a_run_from_before_the_reshape_loads_samples_and_resumes(tmp_path, cache_dir):
    """tests/data/run_before_families: a run folder written by lgpt-train before model families existed
    (its model config has no `family`, its config names the modules of then)."""
    import shutil

    import torch

    import lightning_gpt

    from .conftest import ROOT, run_cli

    run = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run_before_families", run)
    model, tokenizer = lightning_gpt.load(run)
    assert (model.config.family, model.config.n_layer, tokenizer.name) == ("gpt2", 1, "char")
    assert len(lightning_gpt.complete(model, tokenizer, "ROMEO:", max_new_tokens=5, seed=0)[0]) == 11
    data = [f"data.path={TINY_SHAKESPEARE}", f"paths.cache_dir={cache_dir}"]
    done = run_cli(f"ckpt_path={run}", "trainer.max_steps=6", *data, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
