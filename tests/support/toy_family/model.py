"""A causal bag of words: position t sees the mean of the token embeddings up to t, then MLP blocks. Its cache is
the running sum and count, so generation feeds one position per step, as a recurrent family's does."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from lightning_gpt.models.base import Cache, LanguageModel

from .config import ToyConfig


class SumCache(Cache):
    def __init__(self, batch_size: int, width: int, device: torch.device, dtype: torch.dtype):
        self.sum = torch.zeros(batch_size, width, device=device, dtype=dtype)
        self.length, self.capacity = 0, None


class Block(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.n_embd)
        self.up, self.down = nn.Linear(config.n_embd, config.hidden), nn.Linear(config.hidden, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Toy(LanguageModel):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def embedding_params(self) -> Iterator[nn.Parameter]:
        yield self.embed.weight

    def flops_per_token(self) -> int:
        return 6 * self.num_params(non_embedding=False)

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> SumCache:
        return SumCache(batch_size, self.config.n_embd, device, dtype)

    def hidden_states(self, idx: torch.Tensor, cache: SumCache | None = None) -> torch.Tensor:
        e = self.embed(idx)  # (B, T, C)
        past_sum, past = (cache.sum, cache.length) if cache is not None else (0, 0)
        sums = past_sum[:, None] + e.cumsum(dim=1) if cache is not None else e.cumsum(dim=1)  # (B, T, C)
        counts = torch.arange(past + 1, past + idx.size(1) + 1, device=idx.device, dtype=e.dtype)[:, None]  # (T, 1)
        if cache is not None:
            cache.sum, cache.length = sums[:, -1], past + idx.size(1)
        x = sums / counts  # (B, T, C): the mean embedding up to each position
        for block in self.layers:
            x = block(x)
        return self.norm(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[..., : self.config.vocab_size]
