"""Helpers for the sample, eval and export tests: compose an app's config in-process, train a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightning_gpt.cli import CONF_DIR

from .conftest import TINY, TINY_SHAKESPEARE

TINY_SHAKESPEARE_DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def compose_app(name: str, *overrides: str) -> DictConfig:
    """An app's config as its command line would compose it (the job config, without the hydra node)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


def train_tiny(root: Path, cache_dir: Path, *overrides: str) -> Path:
    """Train TINY on Tiny Shakespeare for 10 steps (one validation at the end); return the run folder."""
    from lightning_gpt.train import task

    run = root / "run"
    task(
        compose_app(
            "train",
            f"paths.root_dir={root}",
            f"paths.output_dir={run}",
            f"paths.cache_dir={cache_dir}",
            *TINY,
            *TINY_SHAKESPEARE_DATA,
            "trainer.max_steps=10",
            "trainer.val_check_interval=10",
            *overrides,
        )
    )
    return run
