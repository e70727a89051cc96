"""A decoder-only Transformer (GPT-2) in plain PyTorch.

Read top to bottom: attention, MLP, block, then the model that stacks them.
The model imports no Lightning, so it can be used, exported and tested alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Shape of the network. Defaults are GPT-2 small (124M parameters).

    New architecture options (RoPE, RMSNorm, SwiGLU, grouped-query attention, ...)
    are meant to arrive as new fields with defaults that keep today's GPT-2 behaviour.
    """

    block_size: int = 1024  # longest context the model attends over
    vocab_size: int = 50257  # tokens the tokenizer can produce (logits have this width)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    vocab_multiple: int = 1  # pad the embedding table to a multiple of this (64 is faster on GPUs)
    activation: str = "gelu_tanh"  # GPT-2's tanh-approximate GELU; "gelu" is the exact one (nanoGPT's)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try model.n_head={_nearest_divisor(self.n_embd, self.n_head)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"model.activation must be gelu or gelu_tanh, got {self.activation!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to vocab_multiple."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nearest_divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))


class KVCache:
    """Keys and values of past positions, so generation runs one new position per step."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.n_head, config.block_size, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled so far (the next token's position)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values and return all keys/values up to and including it."""
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # back to the residual
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        # A query at position t sees keys 0..t. With a cache, one new query sees every stored key.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=_causal_mask(T, past, x.device) if past and T > 1 else None,
            is_causal=past == 0 and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def _causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """True where query i (at position past+i) may attend to key j."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the residual output projections by 1/sqrt(2 * n_layer): each block adds two.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (the tied head is the token embedding).

        By default without the position embedding, as nanoGPT reports (123.65M for GPT-2 small).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N for the weights plus attention scores.

        From the PaLM paper's appendix B, as nanoGPT's MFU estimate.
        """
        c = self.config
        return 6 * self.num_params(non_embedding=False) + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd) for token ids (B, T).

        With a cache, idx holds only the new tokens and positions continue from cache.length.
        """
        start = cache.length if cache is not None else 0
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, end, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length = end
        return self.transformer.ln_f(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits. Padded vocabulary rows are never predicted: logits stop at vocab_size."""
        return self.lm_head(x)[..., : self.config.vocab_size]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for token ids (B, T); with targets, also the mean cross-entropy."""
        logits = self.head(self.hidden_states(idx))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Decay matrices and embeddings (>= 2 dims); never biases or norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_token: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ):
        """Yield next tokens (B, 1) one step at a time for prompts idx (B, T).

        temperature 0 is greedy decoding. With the cache, the prompt runs once and then one position
        per step; when the window is full the cache is rebuilt from the most recent half window, so
        every token still sees at least block_size/2 tokens of context. Without the cache, the last
        block_size tokens are recomputed at every step (nanoGPT's way).
        Stops early once every sequence has produced stop_token.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        block = self.config.block_size
        cache = None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        step_input = idx[:, -block:]
        for _ in range(max_new_tokens):
            if use_cache:
                if cache is None or cache.length + step_input.size(1) > block:
                    step_input = idx[:, -max(block // 2, 1) :] if cache is not None else idx[:, -block:]
                    cache = KVCache(self.config, idx.size(0), idx.device, self.lm_head.weight.dtype)
                last = self.hidden_states(step_input, cache)[:, -1]
            else:
                last = self.hidden_states(idx[:, -block:])[:, -1]
            next_token = sample_next(self.head(last), temperature, top_k, top_p, generator)
            if stop_token is not None:
                next_token = torch.where(finished[:, None], stop_token, next_token)
                finished |= next_token[:, 0] == stop_token
            idx = torch.cat((idx, next_token), dim=1)
            step_input = next_token
            yield next_token
            if stop_token is not None and bool(finished.all()):
                return


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not 0 <= temperature < math.inf:  # also refuses nan
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or null to disable), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row of logits (B, V): greedy, or sampled after top-k / top-p filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # Shifted so the largest is 0: a tiny temperature then tends to greedy instead of overflowing to nan.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
