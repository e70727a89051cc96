"""What every model family shares: the interface training and generation rely on.

A family is a config dataclass (its folder's config.py, see family.py) and a `LanguageModel` subclass that
turns token ids into final-layer activations (`hidden_states`) and those into logits (`head`). Loss,
parameter groups and parameter counts are written once, here; text generation in
`lightning_gpt.generation`. Nothing here knows of Lightning, Hydra or command-line keys: errors name the
config's own fields (the apps prefix them with `model.`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from lightning_gpt.models.family import BaseConfig


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

    def hidden_states(
        self, idx: torch.Tensor, cache: Cache | None = None, *, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd); with a cache, idx holds only the new positions. doc_ids (B, T)
        say which document of a packed row each token is in: a family that can keeps them apart (the attention
        families), others refuse them (see document_mask.check_doc_masking)."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits; padded vocabulary rows are never predicted: logits stop at vocab_size."""
        raise NotImplementedError

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Cache:
        raise NotImplementedError

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward) of a Transformer: 6N for the weights plus the
        attention scores (PaLM's appendix B, as nanoGPT's MFU estimate); shared key/value heads do not
        shrink the score matrices. Families without attention scores override it."""
        c = self.config
        return 6 * self.num_params(non_embedding=False) + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size

    def embedding_params(self) -> Iterator[nn.Parameter]:
        """Parameters that are lookup tables, not layers: left out of num_params(non_embedding=True)."""
        raise NotImplementedError

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, doc_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size); with targets (-1 where ignored), also the mean cross-entropy. doc_ids: see
        hidden_states."""
        # doc_ids only when given: a family that cannot mask documents need not take them
        hidden = self.hidden_states(idx) if doc_ids is None else self.hidden_states(idx, doc_ids=doc_ids)
        logits = self.head(hidden)
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

    def hidden_matrices(self) -> Iterator[nn.Parameter]:
        """Weights of the Linear layers inside the blocks: the matrices Muon orthogonalizes."""
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                yield module.weight
