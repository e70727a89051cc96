"""Model families: their configs (configs.py, no torch) and one module per family's model.

    configs.py  every family's config dataclass, registered by `family` (the only copy of its defaults)
    base.py     what families share: the LanguageModel interface (loss, counts, generate) and Cache
    gpt.py      GPT-2: learned positions, LayerNorm, GELU MLP, tied head
    llama.py    Llama 2/3: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, untied head
    mamba.py    Mamba: selective state-space layers (no attention), a parallel scan, a recurrent cache

Adding a family: a `@family` dataclass in configs.py naming its model class, the model's module here,
its transformers mapping in lightning_gpt/hf/, and conf/model/<preset>.yaml files that set `family:`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_gpt.models.configs import FAMILIES, BaseConfig

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel


def config_class(family: str) -> type[BaseConfig]:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return FAMILIES[family]


def config_from_dict(config: dict[str, Any]) -> BaseConfig:
    """A family's config from its dict (as saved in checkpoints; those from before families are GPT-2)."""
    family = config.get("family") or "gpt2"
    return config_class(family)(**{**config, "family": family})


def build(config: dict[str, Any] | BaseConfig) -> LanguageModel:
    """A freshly initialised model of the config's family."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    module, name = type(config).model_class.split(":")
    return getattr(importlib.import_module(module), name)(config)
