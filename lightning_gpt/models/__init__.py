"""Model families, one module each, found by the `family` field of a model config.

    gpt.py     GPT-2: learned positions, LayerNorm, GELU MLP, tied head
    llama.py   Llama 2/3: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, untied head
    base.py    what families share: BaseConfig, the LanguageModel interface (loss, counts, generate)

Adding a family is adding a module with a `Config` (a BaseConfig subclass) and a `Model` (a LanguageModel
subclass), naming it in FAMILIES, and a conf/model/<preset>.yaml that sets `family:`. Modules load on
first use, so naming a family costs no import.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gpt.models.base import BaseConfig, LanguageModel

# family -> module holding `Config` and `Model`
FAMILIES = {"gpt2": "lightning_gpt.models.gpt", "llama": "lightning_gpt.models.llama"}


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return importlib.import_module(FAMILIES[family])


def config_from_dict(config: dict[str, Any]) -> BaseConfig:
    """A family's config from its dict (as saved in checkpoints; those from before families are GPT-2)."""
    family = config.get("family") or "gpt2"
    return family_module(family).Config(**{**config, "family": family})


def build(config: dict[str, Any] | BaseConfig) -> LanguageModel:
    """A freshly initialised model of the config's family."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return family_module(config.family).Model(config)
