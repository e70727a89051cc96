"""Mamba (Gu & Dao, 2023): a selective state-space model, in plain PyTorch.

Read top to bottom: the scan, the mixer (the paper's Mamba block: in_proj, causal conv, selective SSM, gate,
out_proj), the residual block around it, then the model that stacks them. There is no attention and no
position table: each layer carries a fixed-size state from one position to the next, so training runs the
whole sequence with a parallel scan and generation feeds one position per step in constant time and memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_gpt.models.base import Cache, LanguageModel
from lightning_gpt.models.mamba.config import MambaConfig


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every state of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim 1, in log2(T) rounds of tensor ops.

    Two neighbouring steps make one two-step transition, h_{2i+1} = (a_{2i+1} a_2i) h_{2i-1} + (a_{2i+1} b_2i
    + b_{2i+1}): scanning those pairs (half as many) gives the states at odd positions, and each even position
    is one step on from the odd one before it. O(T) work in all; only products of decays a in (0, 1] and
    sums, so nothing overflows whatever the step sizes. Differentiate through `LinearScan`, not this.
    """
    T = a.size(1)
    if T == 1:
        return b
    pairs = 2 * (T // 2)  # an odd last position has no partner: it is an even position below
    h_odd = linear_scan(a[:, 1::2] * a[:, 0:pairs:2], torch.addcmul(b[:, 1::2], a[:, 1::2], b[:, 0:pairs:2]))
    h = torch.empty_like(b)
    h[:, 0] = b[:, 0]
    h[:, 1::2] = h_odd
    h[:, 2::2] = torch.addcmul(b[:, 2::2], a[:, 2::2], h_odd[:, : (T - 1) // 2])
    return h


class LinearScan(torch.autograd.Function):
    """linear_scan with a backward that is the same scan run backwards in time: dL/db_t = g_t + a_{t+1}
    dL/db_{t+1}, and dL/da_t = dL/db_t h_{t-1}. It keeps only a and h, not every round's intermediates
    (and ran 1.5-2x faster than autograd through the rounds on a CPU)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = linear_scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        T = a.size(1)
        backwards = torch.arange(T - 1, -1, -1, device=a.device)  # index_select: 3x faster than flip on CPUs
        a_next = torch.cat((torch.zeros_like(a[:, :1]), a.index_select(1, backwards[:-1])), dim=1)  # a_{t+1}, reversed
        grad_b = linear_scan(a_next, grad_h.index_select(1, backwards)).index_select(1, backwards)
        h_before = torch.cat((torch.zeros_like(h[:, :1]), h[:, :-1]), dim=1)  # h_{t-1}; zeros before the first
        return grad_b * h_before, grad_b


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    h0: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective SSM (the paper's Algorithm 2) over a whole sequence, in float32.

    x, dt: (B, T, d_inner); A: (d_inner, N), negative; B, C: (B, T, N); D: (d_inner,); h0: (B, d_inner, N)
    the state before the first position (None: zeros). Returns y (B, T, d_inner) and the last state.
    Zero-order hold: h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, and y_t = C_t h_t + D x_t.
    Runs `chunk` positions at a time, each chunk one parallel scan from the state the last one left: the
    same result, with (B, chunk, d_inner, N) tensors small enough to stay in cache (3-4x faster than one
    scan over T=1024 on a CPU).
    """
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    h = h0 if h0 is not None else x.new_zeros(x.size(0), x.size(2), A.size(1))  # (B, d_inner, N)
    ys = []
    for start in range(0, x.size(1), chunk):
        t = slice(start, start + chunk)
        decay = torch.exp(dt[:, t, :, None] * A)  # (B, chunk, d_inner, N), in (0, 1]
        inputs = (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]  # (B, chunk, d_inner, N)
        inputs[:, 0] += decay[:, 0] * h  # the carried state enters through the chunk's first step
        states = LinearScan.apply(decay, inputs)  # (B, chunk, d_inner, N)
        ys.append((states * C[:, t, None, :]).sum(-1))  # (B, chunk, d_inner)
        h = states[:, -1]
    return torch.cat(ys, dim=1) + D * x, h


class MambaCache(Cache):
    """Per layer, what the next position needs of the past: the last d_conv - 1 inputs of the convolution
    (B, d_inner, d_conv - 1) and the SSM state (B, d_inner, d_state, in float32). Its size never grows, so
    it has no capacity; the last layer's update advances `length`."""

    def __init__(self, config: MambaConfig, batch_size: int, device, dtype) -> None:
        c = config
        self.conv = [
            torch.zeros(batch_size, c.d_inner, c.d_conv - 1, device=device, dtype=dtype) for _ in range(c.n_layer)
        ]
        self.ssm = [torch.zeros(batch_size, c.d_inner, c.d_state, device=device) for _ in range(c.n_layer)]
        self.capacity = None
        self.length = 0


class MambaMixer(nn.Module):
    """The Mamba block of the paper's Figure 3: a gated, selective SSM between two projections."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # where this layer keeps its states in a MambaCache
        self.last_layer = layer_idx == config.n_layer - 1  # advances the cache
        d_inner, N, r = config.d_inner, config.d_state, config.time_step_rank
        self.split = (r, N, N)
        self.in_proj = nn.Linear(config.n_embd, 2 * d_inner, bias=config.bias)  # x and the gate z
        # Depthwise: each channel mixes its own last d_conv inputs. Padded by hand (zeros or the cache).
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, bias=config.conv_bias)
        self.x_proj = nn.Linear(d_inner, r + 2 * N, bias=False)  # input-dependent dt (low rank), B, C
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, N))  # A = -exp(A_log): every state decays
        self.D = nn.Parameter(torch.empty(d_inner))  # skip connection around the SSM
        self.out_proj = nn.Linear(d_inner, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        batch, T, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        x = x.transpose(1, 2)  # (B, d_inner, T): channels first for the convolution
        if cache is None:
            past = x.new_zeros(batch, x.size(1), self.conv1d.kernel_size[0] - 1)
        else:
            past = cache.conv[self.layer_idx]
        x = torch.cat((past, x), dim=2)  # (B, d_inner, d_conv - 1 + T)
        if cache is not None:
            # The last d_conv - 1 inputs, for the next position; copies, as views would keep the prompt's alive.
            cache.conv[self.layer_idx] = x[:, :, T:].clone()
        x = F.silu(self.conv1d(x)).transpose(1, 2)  # (B, T, d_inner): position t sees inputs t - d_conv + 1 .. t
        dt, B, C = self.x_proj(x).split(self.split, dim=-1)  # (B, T, dt_rank), (B, T, N), (B, T, N)
        dt = F.softplus(self.dt_proj(dt))  # (B, T, d_inner): a positive step size per channel and position
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        h0 = cache.ssm[self.layer_idx] if cache is not None else None
        y, h = selective_scan(x, dt, A, B, C, self.D, h0)  # (B, T, d_inner), (B, d_inner, N)
        if cache is not None:
            cache.ssm[self.layer_idx] = h.clone()
            if self.last_layer:
                cache.length += T
        y = y.to(z.dtype) * F.silu(z)  # the gate
        return self.out_proj(y)  # (B, T, n_embd)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)). Mamba has no separate MLP: the mixer is the whole layer."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mixer = MambaMixer(config, layer_idx)

    def forward(self, x: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        return x + self.mixer(self.norm(x), cache)


class Mamba(LanguageModel):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm_f = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mamba's own initialisation (state-spaces/mamba), tensor by tensor:

        - embedding (and an untied head): normal(0, 0.02);
        - in_proj, x_proj, conv1d: PyTorch's default (Kaiming-uniform), their biases zero;
        - out_proj: the same scaled by 1/sqrt(n_layer), as each layer adds one output to the residual;
        - dt_proj: weight uniform in +-dt_rank^-0.5; bias the inverse softplus of step sizes drawn log-uniform
          in [dt_min, dt_max] (at least dt_init_floor), so softplus(bias) starts at those step sizes;
        - A_log: log(1..d_state) in every channel (S4D-real: A = -1, -2, ..., -d_state); D: ones;
        - RMSNorm gains: ones.
        """
        c = self.config
        nn.init.normal_(self.embeddings.weight, std=0.02)
        if not c.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        for block in self.layers:
            m = block.mixer
            for layer in (m.in_proj, m.x_proj, m.conv1d, m.out_proj):
                layer.reset_parameters()
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            m.out_proj.weight /= math.sqrt(c.n_layer)
            std = c.time_step_rank**-0.5
            nn.init.uniform_(m.dt_proj.weight, -std, std)
            log_dt = torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
            dt = log_dt.exp().clamp(min=c.dt_init_floor)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt) = log(exp(dt) - 1)
            m.A_log.copy_(torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32)).expand(c.d_inner, -1))
            nn.init.ones_(m.D)
            nn.init.ones_(block.norm.weight)
        nn.init.ones_(self.norm_f.weight)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def embedding_params(self) -> Iterator[nn.Parameter]:
        """The token table (which, tied, is also the head): mamba-130m is 90.5M parameters without it."""
        yield self.embeddings.weight

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N for the weights, each used once per token, plus
        the scan's products that involve no weight, 3 x 6 d_inner d_state per layer (forward: dt B x 2, the
        state update a h + b 2, the read-out C h 2; backward twice that)."""
        c = self.config
        return 6 * self.num_params(non_embedding=False) + 18 * c.n_layer * c.d_inner * c.d_state

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """As every family's, except A_log: decaying it would pull every state's decay rate towards A = -1,
        so Mamba's authors exempt it (and D, a vector anyway)."""
        decay, no_decay = super().optimizer_groups(weight_decay)
        exempt = {id(block.mixer.A_log) for block in self.layers}
        no_decay["params"] += [p for p in decay["params"] if id(p) in exempt]
        decay["params"] = [p for p in decay["params"] if id(p) not in exempt]
        return [decay, no_decay]

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaCache:
        return MambaCache(self.config, batch_size, device, dtype)

    def hidden_states(
        self, idx: torch.Tensor, cache: MambaCache | None = None, *, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm activations (B, T, n_embd) for token ids (B, T).

        With a cache, idx holds only the new tokens: the prompt runs through the parallel scan and leaves
        each layer's state in the cache; each later token is one step of the recurrence from there. doc_ids
        are refused: the scan carries its state across a document boundary, there is no attention to mask.
        """
        if doc_ids is not None:
            raise ValueError("the mamba family cannot keep packed documents apart (no attention to mask): no doc_ids")
        x = self.drop(self.embeddings(idx))  # (B, T, n_embd)
        for block in self.layers:
            x = block(x, cache)
        return self.norm_f(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[..., : self.config.vocab_size]
