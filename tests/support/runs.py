"""Tiny training runs through lgpt-train's own main(argv), in this process, and what they leave behind."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from lightning_gpt.apps.train import main as train_main

from .config import TINY, TINY_SHAKESPEARE_DATA


def train_args(root: Path, cache_dir: Path, run: str, *overrides: str) -> list[str]:
    """lgpt-train's command line for TINY on Tiny Shakespeare, in the run folder root/run. With model=<name>
    (model=pretrained, model=mamba_baby, ...) only TINY's context is kept: the rest of the shape is that model's,
    and the overrides' (a Mamba has no n_head to set)."""
    other_model = any(o.startswith("model=") for o in overrides)
    return [
        *(o for o in TINY if not other_model or not o.startswith("model.") or o.startswith("model.block_size")),
        *TINY_SHAKESPEARE_DATA,
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={root / run}",
        *overrides,
    ]


def train(root: Path, cache_dir: Path, run: str = "run", *overrides: str) -> Path:
    """Train TINY (as lgpt-train would, in this process); the run folder. Fails the test if it fails."""
    code = train_main(train_args(root, cache_dir, run, *overrides))
    assert code == 0, f"lgpt-train exited with {code}"
    return root / run


def train_tiny(root: Path, cache_dir: Path, *overrides: str) -> Path:
    """10 steps of TINY with one validation at the end; the run folder."""
    return train(root, cache_dir, "run", "trainer.max_steps=10", "trainer.val_check_interval=10", *overrides)


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def train_losses(run: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run) if r.get("train/loss")}


def saved_step(path: Path) -> int:
    """The step of a checkpoint file or sharded folder; -1 when it is not (yet) there or not whole."""
    from lightning_gpt.parallel.checkpoint import is_sharded, read_meta

    try:
        if is_sharded(path):  # a link swapped to a complete folder only once every process has written
            return read_meta(path)["global_step"]
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1
