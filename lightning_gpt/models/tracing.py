"""What a family's inspection hooks (its folder's inspect.py) record of one forward pass, and the forward-hook
machinery they record it with. lightning_gpt/inspection.py reads these for lgpt-explain and the attention-maps
callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


@dataclass
class Trace:
    """What one prompt (1, T) does inside a model: the batch's only row of each tensor. L layers, C channels."""

    token: torch.Tensor  # (T, C) the token embedding rows
    residual: list[torch.Tensor]  # L + 1 of (T, C): the stream entering block 1, then after each block
    logits: torch.Tensor  # (T, vocab_size) the model's output
    position: torch.Tensor | None = None  # (T, C) a learned position embedding added to the tokens (GPT-2)
    rotary_angles: torch.Tensor | None = None  # (T, head_dim/2) angle by which position t turns q and k pair i
    rotary_distance: torch.Tensor | None = None  # (block_size,) rotated over unrotated q.k, q = k = ones, d apart
    attention: torch.Tensor | None = None  # (L, H, T, T) the weights each head applies: causal, rows sum to 1
    step_sizes: torch.Tensor | None = None  # (L, T, d_inner) a state-space model's dt per token and channel
    state_norms: torch.Tensor | None = None  # (L, T) the norm of each layer's state after each token


class Recorder:
    """Forward hooks that keep what modules compute, in lists by name, removed on leaving the `with` block.
    The model runs unchanged: hooks read inputs and outputs, they never replace them. Each record is the
    batch's first row (the tracer runs one prompt)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}
        self._handles: list[Any] = []

    def output(self, name: str, module: nn.Module, batched: bool = True) -> None:
        """Record module's output (its first row when batched)."""
        self._handles.append(module.register_forward_hook(lambda m, args, out: self._keep(name, out, batched)))

    def input(self, name: str, module: nn.Module, read: Callable[..., Any]) -> None:
        """Record read(module, *args) for the positional arguments module is called with, before it runs."""
        self._handles.append(module.register_forward_pre_hook(lambda m, args: self._keep(name, read(m, *args), False)))

    def _keep(self, name: str, value: Any, batched: bool) -> None:
        self.seen.setdefault(name, []).append(value[0] if batched else value)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
