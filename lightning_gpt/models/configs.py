"""The config of every model family: plain dataclasses, importable without torch.

Each family's dataclass holds the only copy of its defaults. Hydra fills a model config's keys from
them when it composes (`lgpt-train --cfg job --resolve`), which must stay fast (no torch): so the
dataclasses live here and the models, which need torch, in their own modules.

Adding a family: a `@family` dataclass here naming its model class, and the model's module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

FAMILIES: dict[str, type[BaseConfig]] = {}  # family name -> its config dataclass


def family(cls: type[BaseConfig]) -> type[BaseConfig]:
    """Register a config dataclass under its `family` default."""
    FAMILIES[cls.family] = cls
    return cls


@dataclass
class BaseConfig:
    """Fields every family has. Subclasses set `family` and add their own shape fields."""

    family: str = ""
    model_class: ClassVar[str] = ""  # "module:Class" of the model this config builds
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


@family
@dataclass
class GPTConfig(BaseConfig):
    """Shape of the network. Defaults are GPT-2 small (124M parameters)."""

    family: str = "gpt2"
    model_class: ClassVar[str] = "lightning_gpt.models.gpt:GPT"
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


@family
@dataclass
class LlamaConfig(BaseConfig):
    """Shape of the network. Defaults are a Llama the size of GPT-2 small (12 layers, 768 wide); the
    presets in conf/model/ give Llama 2 7B and Llama 3 8B."""

    family: str = "llama"
    model_class: ClassVar[str] = "lightning_gpt.models.llama:Llama"
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


@family
@dataclass
class MambaConfig(BaseConfig):
    """Shape of the network. Defaults are mamba-130m's (24 layers, 768 wide), the vocabulary aside."""

    family: str = "mamba"
    model_class: ClassVar[str] = "lightning_gpt.models.mamba:Mamba"
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
