"""Optimizers and learning-rate schedules: AdamW, or Muon for the hidden weight matrices with AdamW for the rest
(muon.py: one process or many, sharded or not); nanoGPT's cosine schedule or warmup-stable-decay. Torch-only: the
Lightning module calls `build_optimizer`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lightning_gpt.models.base import LanguageModel
from lightning_gpt.optim.muon import MuonWithAdamW
from lightning_gpt.schema import OptimConfig

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Linear warmup to lr, cosine decay to min_lr at decay_steps, then min_lr (nanoGPT's schedule)."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def wsd_lr(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int, cooldown_frac: float) -> float:
    """Warmup-stable-decay (Hu et al. 2024, modded-nanogpt): linear warmup, lr held, then a linear decay to
    min_lr over the last cooldown_frac of decay_steps. Most of the loss drop comes in the decay."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    cooldown_start = decay_steps * (1.0 - cooldown_frac)
    if step < cooldown_start:
        return lr
    progress = min(1.0, (step - cooldown_start) / max(1.0, decay_steps - cooldown_start))
    return lr + progress * (min_lr - lr)


def schedule(o: OptimConfig) -> Callable[[int], float]:
    """The learning rate at a step as a multiple of the base rate: one curve for every parameter group."""
    if o.schedule == "wsd":
        return lambda step: wsd_lr(step, 1.0, o.min_lr / o.lr, o.warmup_steps, o.decay_steps, o.cooldown_frac)
    return lambda step: cosine_lr(step, 1.0, o.min_lr / o.lr, o.warmup_steps, o.decay_steps)


def check_optim(o: OptimConfig) -> None:
    """Plain ValueErrors naming the field: the apps prefix it with `optim.`."""
    for key in ("lr", "eps", "muon_lr"):
        if not getattr(o, key) > 0:
            raise ValueError(f"{key} must be positive, got {getattr(o, key)}")
    for key in ("min_lr", "weight_decay", "warmup_steps"):
        if getattr(o, key) < 0:
            raise ValueError(f"{key} must not be negative, got {getattr(o, key)}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ValueError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got {list(o.betas)}")
    if not 0.0 <= o.muon_momentum < 1.0:
        raise ValueError(f"muon_momentum must be in [0, 1), e.g. 0.95; got {o.muon_momentum}")
    if not 0.0 <= o.cooldown_frac <= 1.0:
        raise ValueError(f"cooldown_frac must be in [0, 1], e.g. 0.4; got {o.cooldown_frac}")
    if o.name not in OPTIMIZERS:
        raise ValueError(f"name must be one of {', '.join(OPTIMIZERS)}; got {o.name!r}")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {o.schedule!r}")


def param_groups(model: LanguageModel, o: OptimConfig) -> list[dict[str, Any]]:
    """The family's decay rule (model.optimizer_groups: matrices and embeddings decay, biases and gains do not),
    each group marked with the optimizer that steps it. With Muon, the weights of the Linear layers inside the
    blocks go to Muon; the embedding and the head stay with AdamW (Jordan et al. 2024: they train better so)."""
    decay, no_decay = model.optimizer_groups(o.weight_decay)
    to_muon = {id(p) for p in model.hidden_matrices()} if o.name == "muon" else set()
    adamw = dict(muon=False, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    groups = [
        dict(params=[p for p in decay["params"] if id(p) in to_muon], muon=True, lr=o.muon_lr),
        dict(params=[p for p in decay["params"] if id(p) not in to_muon], weight_decay=o.weight_decay, **adamw),
        dict(params=no_decay["params"], weight_decay=0.0, **adamw),
    ]
    groups[0].update(momentum=o.muon_momentum, weight_decay=o.weight_decay)
    return [g for g in groups if g["params"]]


def build_optimizer(model: LanguageModel, o: OptimConfig, fused: bool | None) -> torch.optim.Optimizer:
    groups = param_groups(model, o)
    if o.name == "muon":
        return MuonWithAdamW(groups, fused=fused)
    return torch.optim.AdamW(groups, fused=fused)
