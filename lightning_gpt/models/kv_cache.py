"""The key/value cache of attention families, and the causal mask of new queries after cached keys."""

from __future__ import annotations

import torch

from lightning_gpt.models.base import Cache


def causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """True where query i (at position past+i) may attend to key j: T new queries after past cached keys."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


class KVCache(Cache):
    """Keys and values of past positions for each attention layer, preallocated for `capacity` positions.

    Each layer stores its step's keys/values under its own index; the last layer's store advances the
    cache, so the next step starts at the next position.
    """

    def __init__(
        self, n_layer: int, n_kv_head: int, head_dim: int, capacity: int, batch_size: int, device, dtype
    ) -> None:
        shape = (batch_size, n_kv_head, capacity, head_dim)  # (B, n_kv_head, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.capacity = capacity
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys/values (B, n_kv_head, T, head_dim) at the next T positions; return all up to them."""
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        keys, values = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if layer == len(self.keys) - 1:
            self.length = end
        return keys, values
