"""What a model family is: the fields every family's config has, and the registry of families (no torch).

A family is a folder `lightning_gpt/models/<family>/`:

    config.py   its config dataclass, decorated with @register_family: the only copy of its defaults
    model.py    the model, a `LanguageModel` subclass named by the config's `model_class`
    hf.py       optional: the transformers mapping (MODEL_TYPE, config_from_hf, state_from_hf, config_to_hf,
                state_to_hf); without it lgpt-export refuses the family
    inspect.py  optional: what lgpt-explain and the attention-maps callback read (`trace`, `final_norm`,
                `token_table`, `describe`: see lightning_gpt/inspection.py); without it they refuse the family

Nothing outside the folder names a family: `lightning_gpt.models` imports every folder's config.py, and
everything else reaches the folder's modules through `family_module`. Hydra reads the dataclasses while
composing a config, which must stay fast: config.py files import no torch.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, fields
from types import ModuleType
from typing import Any, ClassVar

FAMILIES: dict[str, type[BaseConfig]] = {}  # family name -> its config dataclass


def register_family(cls: type[BaseConfig]) -> type[BaseConfig]:
    """Register a family's config dataclass under its `family` default."""
    FAMILIES[cls.family] = cls
    return cls


def family_module(config: type[BaseConfig] | BaseConfig, part: str) -> ModuleType | None:
    """A module of the config's family folder (model, hf, inspect), or None when the family has none."""
    cls = config if isinstance(config, type) else type(config)
    package = cls.__module__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{part}")
    except ModuleNotFoundError as e:
        if e.name == f"{package}.{part}":
            return None
        raise


@dataclass
class BaseConfig:
    """Fields every family has. Subclasses set `family` and `model_class` and add their own shape fields."""

    family: str = ""
    model_class: ClassVar[str] = ""  # the model's class in the family's model.py
    block_size: int = 1024  # longest context trained on (and attended over by Transformers)
    vocab_size: int = 50257  # tokens the tokenizer can produce (logits have this width)
    n_layer: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    vocab_multiple: int = 1  # pad the embedding table to a multiple of this (64 is faster on GPUs)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_embd", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to vocab_multiple."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def nearest_divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))
