"""Run folders from the Python side: each launch its own; old run folders still load, sample and resume."""

from __future__ import annotations

import shutil

import pytest
import torch

import lightning_gpt
from lightning_gpt.apps.train import main

from .support.config import ROOT, TINY, TINY_SHAKESPEARE


@pytest.mark.slow
def test_two_launches_in_one_python_process_get_two_run_folders(tmp_path, cache_dir):
    args = [
        *TINY,
        "trainer.max_steps=1",
        "data=local",
        f"data.path={TINY_SHAKESPEARE}",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
    ]
    assert main(args) == 0 and main(args) == 0
    runs = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if ".hydra" not in p.parts]
    assert len(set(runs)) == 2


@pytest.mark.slow
def test_a_run_from_before_the_reshape_loads_samples_and_resumes(tmp_path, cache_dir, monkeypatch):
    """tests/data/run_before_families: a run folder written by lgpt-train before model families existed
    (its model config has no `family`, its config names the modules of then)."""
    run = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run_before_families", run)
    model, tokenizer = lightning_gpt.load(run)
    assert (model.config.family, model.config.n_layer, tokenizer.name) == ("gpt2", 1, "char")
    assert len(lightning_gpt.complete(model, tokenizer, "ROMEO:", max_new_tokens=5, seed=0)[0]) == 11
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [f"ckpt_path={run}", "trainer.max_steps=6", f"data.path={TINY_SHAKESPEARE}", f"paths.cache_dir={cache_dir}"]
        )
        == 0
    )
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_saved_callback_gets_the_settings_added_to_it_since(tmp_path):
    """A run saved before StopAtLoss had `monitor` resumes with the conf file's value, interpolations kept."""
    from omegaconf import OmegaConf

    from lightning_gpt.runs import load_run_config

    saved = OmegaConf.load(ROOT / "tests" / "data" / "run_before_families" / "config.yaml")
    saved.callbacks.stop_at_loss = {"_target_": "lightning_gpt.callbacks.StopAtLoss", "target": 1.5}
    saved.callbacks.sample_text.pop("max_new_tokens", None)
    OmegaConf.save(saved, tmp_path / "config.yaml")
    loaded = load_run_config(tmp_path / "config.yaml")
    assert loaded.callbacks.stop_at_loss == {
        "_target_": "lightning_gpt.training.callbacks.StopAtLoss",
        "target": 1.5,
        "monitor": "val/loss",
    }
    assert OmegaConf.to_container(loaded.callbacks.sample_text)["max_new_tokens"] == "${sample.max_new_tokens}"
    assert "window_size" not in loaded.callbacks.throughput  # a setting its class no longer takes


@pytest.mark.parametrize(
    "old", ["lightning_gpt.distributed.FSDPStrategy", "lightning_gpt.training.strategies.FSDPStrategy"]
)
def test_a_run_config_naming_an_old_fsdp_strategy_builds_todays_with_the_mesh_it_trained_on(old, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_gpt.parallel.strategy import FSDPStrategy
    from lightning_gpt.runs import load_run_config

    saved = OmegaConf.load(ROOT / "tests" / "data" / "run_before_families" / "config.yaml")
    strategy = {"activation_checkpointing": True, "reshard_after_forward": True, "save_distributed_checkpoint": False}
    saved.trainer.strategy = {"_target_": old, **strategy}
    OmegaConf.save(saved, tmp_path / "config.yaml")
    built = instantiate(load_run_config(tmp_path / "config.yaml").trainer.strategy)
    assert isinstance(built, FSDPStrategy) and built.activation_checkpointing
    assert (built.data_parallel_replicate, built.data_parallel_shard, built.tensor_parallel_size) == (1, "auto", 1)
