"""What lgpt-explain and the attention-maps callback read of a Mamba (see lightning_gpt/inspection.py). Mamba has
no attention to show; its equivalent is how each layer's state takes in each token: the step size dt (large:
the token overwrites the state; small: the state keeps the past and the token passes by) and the size of the
state after each token. Also the token embedding and the residual stream; there are no positions to show."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_gpt.models.mamba.config import MambaConfig
from lightning_gpt.models.mamba.model import Mamba, MambaMixer, linear_scan
from lightning_gpt.models.tracing import Recorder, Trace


def mixer_internals(mixer: MambaMixer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step sizes dt (B, T, d_inner), every state h_t (B, T, d_inner, d_state, float32) and the output
    (B, T, n_embd) of mixer on x (its input, after the block's norm, no cache), computed as MambaMixer.forward
    does, except that the scan keeps every position's state, not only the last."""
    x, z = mixer.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
    x = x.transpose(1, 2)  # (B, d_inner, T)
    x = torch.cat((x.new_zeros(*x.shape[:2], mixer.conv1d.kernel_size[0] - 1), x), dim=2)  # causal padding
    x = F.silu(mixer.conv1d(x)).transpose(1, 2)  # (B, T, d_inner)
    dt, B, C = mixer.x_proj(x).split(mixer.split, dim=-1)  # (B, T, dt_rank), (B, T, N), (B, T, N)
    dt = F.softplus(mixer.dt_proj(dt))  # (B, T, d_inner)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, N)
    decay = torch.exp(dt.float()[..., None] * A)  # (B, T, d_inner, N): how much of h_{t-1} survives step t
    inputs = (dt.float() * x.float())[..., None] * B.float()[:, :, None, :]  # (B, T, d_inner, N)
    states = linear_scan(decay, inputs)  # (B, T, d_inner, N): h_t = decay_t * h_{t-1} + inputs_t
    y = (states * C.float()[:, :, None, :]).sum(-1) + mixer.D * x.float()  # (B, T, d_inner)
    y = y.to(z.dtype) * F.silu(z)
    return dt, states, mixer.out_proj(y)


def _dt_and_norms(mixer: MambaMixer, x: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    dt, states, _ = mixer_internals(mixer, x)
    return dt[0], states[0].flatten(-2).norm(dim=-1)  # (T, d_inner), (T,): the whole state's norm


def trace(model: Mamba, idx: torch.Tensor) -> Trace:
    """One forward pass of idx (1, T), recorded: token embedding, every layer's step sizes and state norms,
    every block's output."""
    with Recorder() as rec:
        rec.output("token", model.embeddings)
        rec.output("residual", model.drop)  # the token embedding alone: the stream entering block 1
        for block in model.layers:
            rec.input("ssm", block.mixer, _dt_and_norms)
            rec.output("residual", block)
        logits = model(idx)[0][0]  # (T, vocab_size)
    seen = rec.seen
    return Trace(
        token=seen["token"][0],
        residual=seen["residual"],
        step_sizes=torch.stack([dt for dt, _ in seen["ssm"]]),  # (L, T, d_inner)
        state_norms=torch.stack([norms for _, norms in seen["ssm"]]),  # (L, T)
        logits=logits,
    )


def final_norm(model: Mamba) -> nn.Module:
    return model.norm_f


def token_table(model: Mamba) -> torch.Tensor:
    return model.embeddings.weight


def describe(config: MambaConfig) -> dict[str, Any]:
    c = config
    return {
        "name": "Mamba",
        "about": "Mamba: a selective state-space model, with no attention and no positions. Each layer carries "
        f"a fixed-size state ({c.d_inner} channels x {c.d_state} numbers) from one token to the next; how much a "
        "token changes it is the token's own step size dt (panel 3, in place of attention maps). Order enters "
        f"only through that recurrence and a causal convolution over the last {c.d_conv} tokens.",
        "positions": "none",
        "final_norm": "RMSNorm",
        "d_inner": c.d_inner,
        "d_state": c.d_state,
        "d_conv": c.d_conv,
    }
