"""The toy family's shape: the fields every family has, and one of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lightning_gpt.models.family import BaseConfig, register_family


@register_family
@dataclass
class ToyConfig(BaseConfig):
    family: str = "toy"
    model_class: ClassVar[str] = "Toy"
    n_layer: int = 2
    n_embd: int = 32
    hidden: int = 64  # the MLP's width

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {self.hidden}")
