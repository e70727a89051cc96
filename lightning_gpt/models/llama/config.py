"""The Llama family's shape: Llama 2/3, optional QK-norm and ReLU² MLP (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from lightning_gpt.models.family import BaseConfig, nearest_divisor, register_family


@register_family
@dataclass
class LlamaConfig(BaseConfig):
    """Shape of the network. Defaults are a Llama the size of GPT-2 small (12 layers, 768 wide); the
    presets in conf/model/ give Llama 2 7B and Llama 3 8B."""

    family: str = "llama"
    model_class: ClassVar[str] = "Llama"
    n_head: int = 12
    n_kv_head: int | None = None  # heads of keys/values, shared by groups of query heads; None: n_head (no sharing)
    intermediate_size: int | None = None  # MLP width; None: Llama's rule from multiple_of and ffn_dim_multiplier
    multiple_of: int = 256  # the rule rounds the MLP width up to a multiple of this
    ffn_dim_multiplier: float | None = None  # the rule scales 8/3 * n_embd by this first (Llama 3 8B: 1.3)
    rope_theta: float = 10000.0  # base of the rotary frequencies (Llama 3: 500000, for longer contexts)
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3, OLMo 2): steadier at high lr
    mlp: str = "swiglu"  # swiglu (Llama's gated MLP) or relu2: down(relu(up(x))^2), no gate (So et al. 2021)
    zero_init_out: bool = False  # o_proj and down_proj start at zero: every block starts as the identity
    tie_embeddings: bool = False  # output head = token embedding (Llama's is separate)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_head", "multiple_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_head={nearest_divisor(self.n_embd, self.n_head)}"
            )
        if self.head_dim % 2:
            raise ValueError(f"n_embd / n_head ({self.head_dim}) must be even for rotary embeddings; change n_head")
        if self.n_kv_head is not None and not 1 <= self.n_kv_head <= self.n_head:
            raise ValueError(f"n_kv_head must be between 1 and n_head ({self.n_head}), got {self.n_kv_head}")
        if self.n_head % self.kv_heads != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}); "
                f"try n_kv_head={nearest_divisor(self.n_head, self.kv_heads)}"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be a positive integer, got {self.intermediate_size}")
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise ValueError(f"ffn_dim_multiplier must be positive, got {self.ffn_dim_multiplier}")
        for name in ("rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.mlp not in ("swiglu", "relu2"):
            raise ValueError(f"mlp must be swiglu or relu2, got {self.mlp!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        """The MLP width: intermediate_size, else Meta's rule (8/3 * n_embd, scaled, rounded up)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        hidden = int(2 * 4 * self.n_embd / 3)  # SwiGLU's three matrices cost what a 4x GELU MLP's two do
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)
