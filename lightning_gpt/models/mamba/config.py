"""The Mamba family's shape: a selective state-space model (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from lightning_gpt.models.family import BaseConfig, register_family


@register_family
@dataclass
class MambaConfig(BaseConfig):
    """Shape of the network. Defaults are mamba-130m's (24 layers, 768 wide), the vocabulary aside."""

    family: str = "mamba"
    model_class: ClassVar[str] = "Mamba"
    n_layer: int = 24
    d_state: int = 16  # N: state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # d_inner = expand * n_embd channels inside each block
    dt_rank: int | None = None  # rank of the step-size projection; None: ceil(n_embd / 16)
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # ... and at least this
    conv_bias: bool = True
    bias: bool = False  # biases in in_proj and out_proj
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head = token embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive integer (or null for ceil(n_embd / 16)), got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.dt_init_floor <= 0 or self.norm_eps <= 0:
            raise ValueError(f"dt_init_floor and norm_eps must be positive, got {self.dt_init_floor}, {self.norm_eps}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.n_embd

    @property
    def time_step_rank(self) -> int:
        return self.dt_rank or math.ceil(self.n_embd / 16)
