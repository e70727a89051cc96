"""Mamba <-> transformers' MambaForCausalLM.

Our parameter names are transformers' without the `backbone.` prefix, in the same layout (HF's conv1d pads
inside the layer, ours by hand: the weights are the same). So converting is a rename and the config's keys.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.models.mamba.config import MambaConfig
from lightning_gpt.models.mamba.model import Mamba

MODEL_TYPE = "mamba"  # config.json's model_type


def config_from_hf(hf: dict[str, Any], source: str, block_size: int | None, dropout: float) -> MambaConfig:
    """Our config for a MambaForCausalLM config.json. Its options that only choose an implementation
    (use_mambapy, use_associative_scan, residual_in_fp32) or an initialisation (time_step_scale,
    rescale_prenorm_residual, ...) do not change what loaded weights compute, so they are accepted."""
    hidden, expand = hf.get("hidden_size", 768), hf.get("expand", 2)
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {hf['hidden_act']!r}, not silu")
    if expand != int(expand):
        problems.append(f"expand is {expand}, not a whole number")
    if problems:
        raise UserError(f"{source!r} is not a Mamba model we can load: {'; '.join(problems)}")
    defaults = MambaConfig()
    rank = hf.get("time_step_rank", "auto")
    return MambaConfig(
        block_size=block_size or defaults.block_size,  # a Mamba has no position table: any context works
        vocab_size=hf.get("vocab_size", 50280),
        n_layer=hf.get("num_hidden_layers", 32),
        n_embd=hidden,
        dropout=dropout,
        d_state=hf.get("state_size", 16),
        d_conv=hf.get("conv_kernel", 4),
        expand=int(expand),
        dt_rank=None if rank == "auto" else rank,
        dt_min=hf.get("time_step_min", defaults.dt_min),
        dt_max=hf.get("time_step_max", defaults.dt_max),
        dt_init_floor=hf.get("time_step_floor", defaults.dt_init_floor),
        conv_bias=hf.get("use_conv_bias", True),
        bias=hf.get("use_bias", False),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def state_from_hf(
    hf_state: dict[str, torch.Tensor], hf: dict[str, Any], source: str, block_size: int | None
) -> dict[str, torch.Tensor]:
    """A MambaForCausalLM's weights under our names (block_size changes nothing: there are no positions)."""
    state = {}
    for name, tensor in hf_state.items():
        name = name.removeprefix("backbone.")
        state["embeddings.weight" if name == "embedding.weight" else name] = tensor  # older files: embedding
    if "embeddings.weight" not in state:
        raise UserError(f"{source} holds no Mamba weights (no backbone.embeddings.weight); give a Mamba folder")
    if hf.get("tie_word_embeddings", True):
        state["lm_head.weight"] = state["embeddings.weight"]
    return state


def config_to_hf(c: MambaConfig, eot: int | None) -> dict[str, Any]:
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "state_size": c.d_state,
        "conv_kernel": c.d_conv,
        "expand": c.expand,
        "time_step_rank": c.time_step_rank,
        "time_step_min": c.dt_min,
        "time_step_max": c.dt_max,
        "time_step_floor": c.dt_init_floor,
        "use_conv_bias": c.conv_bias,
        "use_bias": c.bias,
        "hidden_act": "silu",
        "layer_norm_epsilon": c.norm_eps,
        "residual_in_fp32": True,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
    }


def state_to_hf(model: Mamba) -> dict[str, torch.Tensor]:
    """transformers' names; the tied head is stored once, as transformers does, and the padded vocabulary
    rows are dropped (they are never predicted)."""
    vocab = model.config.vocab_size
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if not model.config.tie_embeddings:
                state[name] = tensor[:vocab]
            continue
        state["backbone." + name] = tensor[:vocab] if name == "embeddings.weight" else tensor
    return state
