"""GPT-2's shape: the gpt2 family's config (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lightning_gpt.models.family import BaseConfig, nearest_divisor, register_family


@register_family
@dataclass
class GPTConfig(BaseConfig):
    """Shape of the network. Defaults are GPT-2 small (124M parameters)."""

    family: str = "gpt2"
    model_class: ClassVar[str] = "GPT"
    n_head: int = 12
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    activation: str = "gelu_tanh"  # GPT-2's tanh-approximate GELU; "gelu" is the exact one (nanoGPT's)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_head < 1:
            raise ValueError(f"n_head must be a positive integer, got {self.n_head}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_head={nearest_divisor(self.n_embd, self.n_head)}"
            )
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation must be gelu or gelu_tanh, got {self.activation!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
