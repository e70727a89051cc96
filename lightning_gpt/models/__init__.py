"""Model families. Each folder here is one (see family.py for what it holds); importing this package
registers them all by importing each folder's config.py (no torch).

    build(config)            a freshly initialised model of the config's family
    config_from_dict(dict)   a family's config from its saved dict (checkpoints, config.yaml)
    config_class(family)     the family's config dataclass
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from lightning_gpt.models.family import FAMILIES, BaseConfig, family_module, register_family

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel

__all__ = ["FAMILIES", "BaseConfig", "build", "config_class", "config_from_dict", "family_module", "register_family"]

for _folder in pkgutil.iter_modules(__path__):
    if _folder.ispkg:
        importlib.import_module(f"{__name__}.{_folder.name}.config")


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
    return getattr(family_module(config, "model"), config.model_class)(config)
