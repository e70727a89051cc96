"""GPT-2: a decoder-only Transformer with learned positions, in plain PyTorch.

Read top to bottom: attention, MLP, block, then the model that stacks them. Generation (the cache loop,
sampling) lives in `lightning_gpt.generation`; this file only runs positions forward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_gpt.models.base import LanguageModel
from lightning_gpt.models.document_mask import positions, sdpa_mask
from lightning_gpt.models.gpt2.config import GPTConfig
from lightning_gpt.models.kv_cache import KVCache, causal_mask


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # where this layer keeps its keys and values in a KVCache
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # back to the residual
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask (B, 1, T, T), True where a query may attend a key: packed documents kept apart (see hidden_states)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_head, past + T, head_dim)
        # A query at position t sees keys 0..t. With a cache, one new query sees every stored key.
        if mask is None and past and T > 1:
            mask = causal_mask(T, past, x.device)  # (T, past + T)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask=mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the residual output projections by 1/sqrt(2 * n_layer): each block adds two.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def embedding_params(self) -> Iterator[nn.Parameter]:
        """The position table only, as nanoGPT counts (123.65M for GPT-2 small): the token table is the head."""
        yield self.transformer.wpe.weight

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, c.n_head, c.head_dim, c.block_size, batch_size, device, dtype)

    def hidden_states(
        self, idx: torch.Tensor, cache: KVCache | None = None, *, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd) for token ids (B, T).

        With a cache, idx holds only the new tokens and positions continue from cache.length. With doc_ids
        (B, T), the segment of its row each token is in (rows packed from several documents), attention stays
        inside each document and positions restart at 0 at each one: a document is computed as if alone.
        """
        start = cache.length if cache is not None else 0
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} is longer than block_size {self.config.block_size}")
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids are for packed training rows, which never run with a cache")
        pos = torch.arange(start, end, dtype=torch.long, device=idx.device)  # (T,)
        mask = None
        if doc_ids is not None:
            pos = positions(doc_ids)  # (B, T): 0 at each document's first token
            mask = sdpa_mask(doc_ids)  # (B, 1, T, T): same document and causal
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, n_embd)
        for block in self.transformer.h:
            x = block(x, cache, mask=mask)
        return self.transformer.ln_f(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[..., : self.config.vocab_size]
