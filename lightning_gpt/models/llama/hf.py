"""Llama <-> transformers' LlamaForCausalLM.

Our parameter names and layouts are transformers' own (model.layers.N.self_attn.q_proj.weight, ...), and
our rotary embedding pairs dimensions as its rotate_half does, so converting is renaming the config keys,
dropping padded vocabulary rows, and storing a tied head once. What transformers' Llama can be and ours
cannot (scaled RoPE, biases, another activation) is refused on import; QK-norm, which transformers'
Llama lacks, is refused on export.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.models.llama.config import LlamaConfig
from lightning_gpt.models.llama.model import Llama

MODEL_TYPE = "llama"  # config.json's model_type


def rope_theta(hf: dict[str, Any]) -> float:
    """transformers 5 nests it in rope_parameters; older config.json files have it at the top level."""
    return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], source: str, block_size: int | None, dropout: float) -> LlamaConfig:
    n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    rope_type = (hf.get("rope_parameters") or {}).get("rope_type", "default")
    problems = []
    if hf.get("rope_scaling") or rope_type != "default":
        scaling = hf.get("rope_scaling") or hf["rope_parameters"]
        problems.append(f"its rotary embedding is rescaled ({scaling.get('rope_type', scaling.get('type'))!r})")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("it has biases (attention_bias or mlp_bias)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {hf['hidden_act']!r}, not 'silu'")
    if hf.get("head_dim") not in (None, n_embd // n_head):
        problems.append(f"head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
    if problems:
        raise UserError(f"{source!r} is not a Llama model we can load: {'; '.join(problems)}")
    positions = hf.get("max_position_embeddings", 2048)
    if block_size is not None and block_size > positions:
        raise ValueError(  # a ValueError naming the setting: the caller adds its key (model.block_size)
            f"block_size={block_size} is longer than {source!r}'s {positions} positions; "
            f"use block_size={positions} or less"
        )
    return LlamaConfig(
        block_size=block_size or positions,
        vocab_size=hf.get("vocab_size", 32000),
        n_layer=hf.get("num_hidden_layers", 32),
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        intermediate_size=hf.get("intermediate_size", 11008),
        rope_theta=rope_theta(hf),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout=dropout,
    )


def state_from_hf(
    hf_state: dict[str, torch.Tensor], hf: dict[str, Any], source: str, block_size: int | None
) -> dict[str, torch.Tensor]:
    """A Llama model's weights under our names (the same as transformers'); a tied head stored once is shared."""
    state = {name: tensor for name, tensor in hf_state.items() if not name.endswith("rotary_emb.inv_freq")}
    if "model.embed_tokens.weight" not in state:
        raise UserError(f"{source} holds no Llama weights (no model.embed_tokens.weight); give a Llama checkpoint")
    if hf.get("tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def config_to_hf(c: LlamaConfig, eot: int | None) -> dict[str, Any]:
    if c.qk_norm:
        raise UserError("a model with qk_norm=true cannot be exported: transformers' Llama has no QK-norm")
    if c.mlp != "swiglu":
        raise UserError(f"a model with mlp={c.mlp} cannot be exported: transformers' Llama has a SwiGLU MLP only")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.block_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers >= 5
        "rope_theta": c.rope_theta,  # transformers 4
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": c.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


def state_to_hf(model: Llama) -> dict[str, torch.Tensor]:
    """transformers' names (ours); padded vocabulary rows dropped (never predicted), a tied head stored once."""
    vocab = model.config.vocab_size
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        state[name] = tensor[:vocab] if name in ("model.embed_tokens.weight", "lm_head.weight") else tensor
    return state
