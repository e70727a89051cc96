"""What lgpt-explain and the attention-maps callback read of a Llama (see lightning_gpt/inspection.py): each
head's attention weights (QK-norm and rotary applied, shared key heads expanded), the rotary angles, the token
embedding and the residual stream. Llama adds no position vector: positions enter as rotations of q and k."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from lightning_gpt.models.llama.config import LlamaConfig
from lightning_gpt.models.llama.model import Attention, Llama, apply_rotary, rotary_cos_sin
from lightning_gpt.models.tracing import Recorder, Trace


def attention_weights(attn: Attention, x: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The weights (B, n_head, T, T) attn's scaled_dot_product_attention applies to x (its input, after
    input_layernorm), recomputed as the block computes q and k: projected, QK-normed (when on), rotated by
    their positions' angles; each group of n_head / n_kv_head query heads reads one shared key head."""
    B, T, _ = x.shape
    # (B, T, heads * head_dim) -> (B, heads, T, head_dim)
    q = attn.q_norm(attn.q_proj(x).view(B, T, attn.n_head, attn.head_dim)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, T, attn.n_kv_head, attn.head_dim)).transpose(1, 2)
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (B, n_head, T, head_dim): head h reads h // group
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)  # (B, n_head, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
    return scores.float().masked_fill(future, float("-inf")).softmax(dim=-1)


def rotary_angles(config: LlamaConfig, T: int) -> torch.Tensor:
    """(T, head_dim/2): the angle t * theta^(-2i/head_dim) by which position t turns pair i (dimensions i and
    i + head_dim/2) of every query and key; its cos and sin are rotary_cos_sin's (a test checks)."""
    i = torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
    return torch.arange(T, dtype=torch.float64)[:, None] / config.rope_theta**i  # (T, head_dim/2)


def rotary_distance(config: LlamaConfig) -> torch.Tensor:
    """(block_size,): what rotation alone does to a score, at each distance d the context allows. A query and
    a key that are the same vector (all ones), d positions apart, rotated by the model's own rotary_cos_sin and
    apply_rotary: their q.k over the unrotated q.k (head_dim), which is the mean over frequency pairs of
    cos(d * theta_i). 1 at d = 0; it wavers and falls as d grows."""
    cos, sin = rotary_cos_sin(config, 0, config.block_size, torch.device("cpu"))  # (block_size, head_dim)
    rotated = apply_rotary(torch.ones(1, 1, *cos.shape), cos, sin)[0, 0]  # (block_size, head_dim): one per position
    return rotated @ rotated[0] / config.head_dim  # the key at position 0, the query at d


def trace(model: Llama, idx: torch.Tensor) -> Trace:
    """One forward pass of idx (1, T), recorded: token embedding, rotary angles, every block's attention weights
    and output."""
    m = model.model
    with Recorder() as rec:
        rec.output("token", m.embed_tokens)
        rec.output("residual", m.drop)  # the token embedding alone: the stream entering block 1
        for block in m.layers:
            rec.input(
                "attention", block.self_attn, lambda attn, x, rope, cache=None: attention_weights(attn, x, rope)[0]
            )
            rec.output("residual", block)
        logits = model(idx)[0][0]  # (T, vocab_size)
    seen = rec.seen
    T = idx.size(1)
    return Trace(
        token=seen["token"][0],
        residual=seen["residual"],
        rotary_angles=rotary_angles(model.config, T).float(),
        rotary_distance=rotary_distance(model.config),
        attention=torch.stack(seen["attention"]),  # (L, H, T, T)
        logits=logits,
    )


def final_norm(model: Llama) -> nn.Module:
    return model.model.norm


def token_table(model: Llama) -> torch.Tensor:
    return model.model.embed_tokens.weight


def describe(config: LlamaConfig) -> dict[str, Any]:
    c = config
    group = c.n_head // c.kv_heads
    sharing = (
        f"grouped-query attention: each of the {c.kv_heads} key/value heads serves {group} query heads"
        if group > 1
        else "every query head has its own key and value head"
    )
    return {
        "name": "Llama",
        "about": "Llama: attention with rotary positions, RMSNorm and a SwiGLU MLP"
        + (" (ReLU² here)" if c.mlp == "relu2" else "")
        + f"; {sharing}"
        + ("; QK-norm: each head's queries and keys are RMS-normalized before the rotation" if c.qk_norm else "")
        + ". No position vector is added to the tokens: each position turns every query and key by its own "
        "angles (panel 2), so what the rotation does to a score depends on how far apart two tokens are, not on "
        "where they are.",
        "positions": "rotary",
        "final_norm": "RMSNorm",
        "n_head": c.n_head,
        "n_kv_head": c.kv_heads,
        "head_dim": c.head_dim,
        "qk_norm": c.qk_norm,
        "rope_theta": c.rope_theta,
    }
