"""What every model family shares: the config fields, and the interface training and generation rely on.

A family is a `Config` dataclass (its defaults are the only copy of them) and a `LanguageModel` subclass
that turns token ids into final-layer activations (`hidden_states`) and those into logits (`head`).
Loss, parameter groups, parameter counts and text generation are written once, here and in
`lightning_gpt.generation`. Nothing here knows of Lightning, Hydra or command-line keys: errors name the
config's own fields (the apps prefix them with `model.`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BaseConfig:
    """Fields every family has. Subclasses set `family` and add their own shape fields."""

    family: str = ""
    block_size: int = 1024  # longest context trained on (and attended over by Transformers)
    vocab_size: int = 50257  # tokens the tokenizer can produce (logits have this width)
    n_layer: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    vocab_multiple: int = 1  # pad the embedding table to a multiple of this (64 is faster on GPUs)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_embd", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to vocab_multiple."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def nearest_divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))


def causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """True where query i (at position past+i) may attend to key j: T new queries after past cached keys."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


class Cache:
    """Per-sequence state that lets generation feed one new position per step.

    `length` is the number of positions consumed so far (the next token's position); the model advances
    it. `capacity` is the most positions it can hold (None: unbounded, as a recurrent state).
    """

    length: int = 0
    capacity: int | None = None


class LanguageModel(nn.Module):
    """A next-token model: token ids (B, T) -> logits (B, T, vocab_size)."""

    config: BaseConfig

    @property
    def blocks(self) -> nn.ModuleList:
        """The repeated layers: the units FSDP shards and activation checkpointing recomputes."""
        raise NotImplementedError

    def hidden_states(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd); with a cache, idx holds only the new positions."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits; padded vocabulary rows are never predicted: logits stop at vocab_size."""
        raise NotImplementedError

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Cache:
        raise NotImplementedError

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward)."""
        raise NotImplementedError

    def embedding_params(self) -> Iterator[nn.Parameter]:
        """Parameters that are lookup tables, not layers: left out of num_params(non_embedding=True)."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size); with targets (-1 where ignored), also the mean cross-entropy."""
        logits = self.head(self.hidden_states(idx))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (a tied head is its embedding), without the embeddings by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.embedding_params())
        return n

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Decay matrices and embeddings (>= 2 dims); never biases, norm gains or other vectors."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def generate(self, idx: torch.Tensor, max_new_tokens: int, *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        """Yield next tokens (B, 1) one step at a time: see `lightning_gpt.generation.generate`."""
        from lightning_gpt.generation import generate

        return generate(self, idx, max_new_tokens, *args, **kwargs)
