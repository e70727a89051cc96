"""What lgpt-explain and the attention-maps callback read of a GPT-2 (see lightning_gpt/inspection.py):
each head's attention weights, the token and learned position embeddings, the residual stream."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from lightning_gpt.models.gpt2.config import GPTConfig
from lightning_gpt.models.gpt2.model import GPT, CausalSelfAttention
from lightning_gpt.models.tracing import Recorder, Trace


def attention_weights(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The weights (B, n_head, T, T) that attn's scaled_dot_product_attention applies to x (its input, after
    ln_1): softmax(q k^T / sqrt(head_dim)) with future keys masked. The fused kernel never materializes them,
    so they are recomputed from the block's own c_attn."""
    B, T, C = x.shape
    q, k, _ = attn.c_attn(x).split(C, dim=2)
    q, k = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
    return scores.float().masked_fill(future, float("-inf")).softmax(dim=-1)


def trace(model: GPT, idx: torch.Tensor) -> Trace:
    """One forward pass of idx (1, T), recorded: embeddings, every block's attention weights and output."""
    t = model.transformer
    with Recorder() as rec:
        rec.output("token", t.wte)
        rec.output("position", t.wpe, batched=False)  # wpe reads positions (T,), no batch
        rec.output("residual", t.drop)  # token + position: the stream entering block 1
        for block in t.h:
            rec.input("attention", block.attn, lambda attn, x, cache=None: attention_weights(attn, x)[0])
            rec.output("residual", block)
        logits = model(idx)[0][0]  # (T, vocab_size)
    seen = rec.seen
    return Trace(
        token=seen["token"][0],
        position=seen["position"][0],
        residual=seen["residual"],
        attention=torch.stack(seen["attention"]),  # (L, H, T, T)
        logits=logits,
    )


def final_norm(model: GPT) -> nn.Module:
    return model.transformer.ln_f


def token_table(model: GPT) -> torch.Tensor:
    return model.transformer.wte.weight


def describe(config: GPTConfig) -> dict[str, Any]:
    return {
        "name": "GPT-2",
        "about": "GPT-2: attention with learned positions. Each position has a vector of its own (a row of the "
        "position embedding, learned in training) that is added to the token's vector before the first block; "
        "attention itself does not know where a token is.",
        "positions": "learned",
        "final_norm": "LayerNorm",
        "n_head": config.n_head,
        "head_dim": config.head_dim,
    }
