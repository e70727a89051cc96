"""Looking inside a GPT: attention weights, the residual stream, the logit lens, the embedding table's PCA.

Forward hooks record what a model computes without changing it. `lgpt-explain` shows these on a page;
the AttentionMaps callback logs the attention maps at each validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from lightning_gpt.models.gpt2.model import GPT, CausalSelfAttention
from lightning_gpt.tokenizers import ByteTokenizer, Tokenizer


def attention_weights(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The weights (B, n_head, T, T) that attn's scaled_dot_product_attention applies to x (its input, after
    ln_1): softmax(q k^T / sqrt(head_dim)) with future keys masked. The fused kernel never materializes them,
    so they are recomputed from the block's own c_attn."""
    B, T, C = x.shape
    q, k, _ = attn.c_attn(x).split(C, dim=2)
    q, k = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
    return scores.float().masked_fill(future, float("-inf")).softmax(dim=-1)


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside, the caller's mode restored after: the callback calls in mid-training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def trace(model: GPT, idx: torch.Tensor) -> dict[str, Any]:
    """Run idx (1, T) through the model once, recording with forward hooks (the model is not changed):
    token and position embeddings, each block's attention weights and output (the residual stream),
    and the logits."""
    seen: dict[str, Any] = {"attention": [], "residual": []}
    t = model.transformer
    hooks = [
        t.wte.register_forward_hook(lambda m, args, out: seen.__setitem__("token", out[0])),
        t.wpe.register_forward_hook(lambda m, args, out: seen.__setitem__("position", out)),
    ]
    for block in t.h:
        hooks.append(
            block.attn.register_forward_pre_hook(
                lambda m, args: seen["attention"].append(attention_weights(m, args[0])[0])
            )
        )
        hooks.append(block.register_forward_hook(lambda m, args, out: seen["residual"].append(out[0])))
    try:
        with evaluating(model):
            seen["logits"] = model(idx)[0][0]  # (T, vocab_size)
    finally:
        for hook in hooks:
            hook.remove()
    seen["attention"] = torch.stack(seen["attention"])  # (L, H, T, T)
    return seen


def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Every layer's and head's attention weights (L, H, T, T) for one prompt idx (1, T)."""
    return trace(model, idx)["attention"]


@torch.no_grad()
def logit_lens(model: GPT, residual: list[torch.Tensor], top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top tokens and probabilities (len(residual), T, top) the model would predict from each residual
    stream (T, C) if the blocks stopped there: the final LayerNorm and the head applied to it."""
    probs = model.head(model.transformer.ln_f(torch.stack(residual))).float().softmax(dim=-1)
    values, ids = probs.topk(min(top, probs.size(-1)), dim=-1)
    return ids, values


@torch.no_grad()
def pca_2d(table: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Rows of table (N, C) on its first two principal components (exact: the covariance's eigenvectors),
    and the fraction of the variance each holds."""
    x = table.double() - table.double().mean(dim=0)
    variances, vectors = torch.linalg.eigh(x.T @ x)  # ascending
    top = vectors[:, [-1, -2]]
    top = top * torch.sign(top.sum(dim=0))  # a fixed sign, so the picture does not flip between runs
    total = float(variances.clamp(min=0).sum()) or 1.0
    return (x @ top).float(), [float(variances[-1]) / total, float(variances[-2]) / total]


def token_piece(tokenizer: Tokenizer, token: int) -> str:
    """A token's own text: a character, a byte (undecodable alone: shown as <0xE2>) or a BPE piece."""
    encoding = getattr(tokenizer, "encoding", None)
    if encoding is not None:  # tiktoken: a piece may hold part of a UTF-8 character
        raw = encoding.decode_single_token_bytes(token)
    elif isinstance(tokenizer, ByteTokenizer):
        raw = bytes([token]) if token < 256 else b"<|endoftext|>"
    else:
        return tokenizer.decode([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" if b >= 0x80 else chr(b) for b in raw)


def attention_figure(weights: np.ndarray | torch.Tensor, title: str = ""):
    """A matplotlib Figure of attention maps (L, H, T, T) as one image: a row per layer, a column per head,
    the masked upper triangles blank. One image in one Axes: quicker to draw than L*H subplots."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    L, H, T, _ = w.shape
    gap = max(1, T // 8)
    grid = np.full((L * (T + gap) - gap, H * (T + gap) - gap), np.nan, dtype=np.float32)
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    for layer in range(L):
        for head in range(H):
            tile = np.where(upper, np.nan, w[layer, head])
            r, c = layer * (T + gap), head * (T + gap)
            grid[r : r + T, c : c + T] = tile
    size = 1.3  # inches per map
    fig = Figure(figsize=(max(5.0, 2.2 + size * H), 1.0 + size * L), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")  # the gaps and masked triangles
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([h * (T + gap) + T / 2 - 0.5 for h in range(H)], [f"head {h + 1}" for h in range(H)])
    ax.set_yticks([n * (T + gap) + T / 2 - 0.5 for n in range(L)], [f"layer {n + 1}" for n in range(L)])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title if len(title) <= 60 else title[:57] + "...", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, label="attention weight")
    return fig
