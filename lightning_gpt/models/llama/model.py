"""Llama-style Transformer: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, in plain PyTorch.

The Llama 2 / Llama 3 architecture (Touvron et al. 2023; Meta 2024) with the names of transformers'
LlamaForCausalLM, so its weights load with no reshuffling. Read top to bottom: rotary embedding,
attention, MLP, block, then the model that stacks them. Optional QK-norm (RMSNorm of each head's
queries and keys before the rotation, as Qwen3) is the one addition transformers' Llama lacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_gpt.models.base import LanguageModel
from lightning_gpt.models.document_mask import positions, sdpa_mask
from lightning_gpt.models.kv_cache import KVCache, causal_mask
from lightning_gpt.models.llama.config import LlamaConfig


def rotary_cos_sin(config: LlamaConfig, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """cos and sin (end - start, head_dim) of positions start..end-1, computed in float32 every call:
    no buffer to go stale under a cast to bf16, a meta device or FSDP. Dimension i and i + head_dim/2 share
    frequency theta^(-2i/head_dim) (transformers' layout, so its weights need no permutation)."""
    dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim)  # (head_dim/2,)
    freqs = torch.arange(start, end, device=device).float()[:, None] * inv_freq  # (T, head_dim/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+head_dim/2}) of x (B, heads, T, head_dim) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # transformers' rotate_half
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention where groups of n_head / n_kv_head query heads share one key/value head."""

    def __init__(self, config: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # where this layer keeps its keys and values in a KVCache
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)  # back to the residual
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask (B, 1, T, T), True where a query may attend a key: packed documents kept apart (see hidden_states)."""
        B, T, C = x.shape
        # (B, T, heads * head_dim) -> (B, heads, T, head_dim)
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)  # positions enter here, not in the embedding
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_kv_head, past + T, head_dim): only the shared heads
        if mask is None and past and T > 1:
            mask = causal_mask(T, past, x.device)  # (T, past + T)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,  # each key/value head serves n_head / n_kv_head queries
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)); or, with mlp=relu2, the ungated squared ReLU of
    Primer (So et al. 2021) and modded-nanogpt: down(relu(up(x))^2), two matrices instead of three."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        if self.gated:
            self.gate_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate_proj(x)) * self.up_proj(x) if self.gated else F.relu(self.up_proj(x)).square()
        return self.dropout(self.down_proj(h))  # (B, T, hidden_dim) -> (B, T, n_embd)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), with RMSNorm (no mean, no bias)."""

    def __init__(self, config: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, mask=mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Llama(LanguageModel):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.padded_vocab_size, config.n_embd),  # tokens only: no positions
                drop=nn.Dropout(config.dropout),
                layers=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                norm=nn.RMSNorm(config.n_embd, eps=config.norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's init: every matrix and the embedding normal(0, 0.02), except the residual output
        projections (o_proj, down_proj: each block adds two) at 0.02 / sqrt(2 * n_layer), or zero with
        zero_init_out (modded-nanogpt: each block starts as the identity, the gradient still reaches it);
        norm gains 1."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("o_proj.weight", "down_proj.weight")) and self.config.zero_init_out:
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embedding_params(self) -> Iterator[nn.Parameter]:
        """The token table only, as transformers' "without embeddings" counts: an untied head is a layer."""
        yield self.model.embed_tokens.weight

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        c = self.config
        # The key/value heads attention computes with: under tensor parallelism, this process's share.
        kv_heads = self.model.layers[0].self_attn.n_kv_head
        return KVCache(c.n_layer, kv_heads, c.head_dim, c.block_size, batch_size, device, dtype)

    def hidden_states(
        self, idx: torch.Tensor, cache: KVCache | None = None, *, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd) for token ids (B, T).

        With a cache, idx holds only the new tokens and positions continue from cache.length. With doc_ids
        (B, T), the segment of its row each token is in (rows packed from several documents), attention stays
        inside each document and the rotation restarts at position 0 at each one: a document is computed as
        if alone.
        """
        start = cache.length if cache is not None else 0
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} is longer than block_size {self.config.block_size}")
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids are for packed training rows, which never run with a cache")
        x = self.model.drop(self.model.embed_tokens(idx))  # (B, T, n_embd)
        cos, sin = rotary_cos_sin(self.config, start, end, idx.device)  # (T, head_dim) each, shared by all layers
        mask = None
        if doc_ids is not None:
            pos = positions(doc_ids)  # (B, T): 0 at each document's first token
            cos, sin = cos[pos][:, None], sin[pos][:, None]  # (B, 1, T, head_dim): each token's own angle
            mask = sdpa_mask(doc_ids)  # (B, 1, T, T): same document and causal
        rope = (cos.to(x.dtype), sin.to(x.dtype))
        for block in self.model.layers:
            x = block(x, rope, cache, mask=mask)
        return self.model.norm(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[..., : self.config.vocab_size]
