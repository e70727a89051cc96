"""GPT-2 <-> transformers' GPT2LMHeadModel.

Both sides have the same layout and parameter names (ours follow GPT-2's), with two differences:
HF's Conv1D stores weights as (in, out) where our nn.Linear stores (out, in), and HF names the
tanh-approximate GELU "gelu_new". So converting is: rename, transpose four matrices, map the activation.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.models.gpt2.config import GPTConfig
from lightning_gpt.models.gpt2.model import GPT

MODEL_TYPE = "gpt2"  # config.json's model_type

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF -> ours


def config_from_hf(hf: dict[str, Any], source: str, block_size: int | None, dropout: float) -> GPTConfig:
    activation = hf.get("activation_function", "gelu_new")
    problems = []
    if activation not in _ACTIVATIONS:
        problems.append(f"activation_function {activation!r} is not one of {', '.join(_ACTIVATIONS)}")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
        problems.append("n_inner is not 4 * n_embd")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append("layer_norm_epsilon is not 1e-5")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("attention is not scaled by 1/sqrt(head_dim)")
    if problems:
        raise UserError(f"{source!r} is not a GPT-2 model we can load: {'; '.join(problems)}")
    positions = hf.get("n_positions", 1024)
    if block_size is not None and block_size > positions:
        raise ValueError(  # a ValueError naming the setting: the caller adds its key (model.block_size)
            f"block_size={block_size} is longer than {source!r}'s {positions} positions; "
            f"use block_size={positions} or less"
        )
    return GPTConfig(
        block_size=block_size or positions,
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        dropout=dropout,
        bias=True,
        activation=_ACTIVATIONS[activation],
    )


def state_from_hf(
    hf_state: dict[str, torch.Tensor], hf: dict[str, Any], source: str, block_size: int | None
) -> dict[str, torch.Tensor]:
    """A GPT-2 model's weights under our names and layout, the position table cropped to block_size."""
    tied = hf.get("tie_word_embeddings", True)
    state = {}
    for name, tensor in hf_state.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not weights
        if name == "lm_head.weight":
            if not tied and not torch.equal(tensor, hf_state.get("transformer.wte.weight", hf_state.get("wte.weight"))):
                raise UserError(f"{source!r} has an output head separate from its token embedding; ours is tied")
            continue
        state["transformer." + name] = tensor.t() if name.endswith(_CONV1D) else tensor
    if "transformer.wpe.weight" not in state:
        raise UserError(f"{source} holds no GPT-2 weights (no wpe.weight); give a GPT-2 checkpoint folder")
    if block_size is not None:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size]
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as in GPT-2
    return state


def config_to_hf(c: GPTConfig, eot: int | None) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


def state_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2's names and Conv1D layout; the tied head is stored once, as transformers does. The padded
    vocabulary rows are dropped (they are never predicted) and biases are zeros when bias=False."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        state[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    if not model.config.bias:  # HF GPT-2 always has biases: zeros are the same function
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                width = module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
                state[f"{name}.bias"] = torch.zeros(width)
    return state
