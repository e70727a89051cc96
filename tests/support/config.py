"""Where the tests find the shared data, the tiny model they train, and the one way they compose a config."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightning_gpt.apps.launch import CONF_DIR, register_resolvers

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LGPT_SHARED", ROOT.parent / "shared")).resolve()
TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
TINY_SHAKESPEARE_DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]

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


def compose(app: str, *overrides: str, hydra: bool = False) -> DictConfig:
    """An app's config (conf/<app>.yaml) as its command line would compose it: the job config, without the
    hydra node, which HydraConfig holds as under @hydra.main (with hydra=True, the hydra node kept too)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = hydra_compose(app, overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
