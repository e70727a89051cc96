"""Looking inside a model, whatever its family: a recorded forward pass, the logit lens, the embedding table's
PCA, token pieces, and the pictures the AttentionMaps callback logs.

What a family computes inside (attention weights, rotary angles, state-space step sizes) is the family's own
business, so it lives in the family's folder: `lightning_gpt/models/<family>/inspect.py`, found through
`family_module(config, "inspect")`. Such a module provides

    trace(model, idx) -> Trace          one forward pass of idx (1, T), recorded with hooks; what it holds is
                                        listed in `Trace` (fields a family lacks stay None)
    final_norm(model) -> nn.Module      the norm the head reads: the logit lens applies it to any residual stream
    token_table(model) -> Tensor        the token embedding table (padded rows included), for its PCA
    describe(config) -> dict            what the page says about the family: its name, one sentence on how it
                                        mixes positions, the final norm's name, its shape fields

`lgpt-explain` draws its page from these, and the AttentionMaps callback its picture: a Trace's attention,
or else its step_sizes and state_norms. A family without inspect.py is refused with one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn

from lightning_gpt.errors import UserError
from lightning_gpt.models.base import LanguageModel
from lightning_gpt.models.family import family_module
from lightning_gpt.models.tracing import Trace
from lightning_gpt.tokenizers import ByteTokenizer, Tokenizer


def inspector(model: LanguageModel) -> ModuleType:
    """The model family's inspect module; a one-line UserError when the family has none."""
    config = model.config
    module = family_module(config, "inspect")
    if module is None:
        folder = type(config).__module__.rpartition(".")[0].replace(".", "/")
        raise UserError(
            f"the {config.family} family has no inspection hooks ({folder}/inspect.py): lgpt-explain and "
            "callbacks.attention_maps cannot look inside it; see lightning_gpt/inspection.py for what the file holds"
        )
    return module


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside, the caller's mode restored after: the callback calls in mid-training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def trace(model: LanguageModel, idx: torch.Tensor) -> Trace:
    """Run idx (1, T) through the model once in eval mode, recording with its family's hooks."""
    hooks = inspector(model)
    with evaluating(model):
        return hooks.trace(model, idx)


@torch.no_grad()
def logit_lens(model: LanguageModel, residual: list[torch.Tensor], top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top tokens and probabilities (len(residual), T, top) the model would predict from each residual
    stream (T, C) if the blocks stopped there: its final norm and its head applied to it."""
    norm = inspector(model).final_norm(model)
    probs = model.head(norm(torch.stack(residual))).float().softmax(dim=-1)
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


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def attention_figure(weights: np.ndarray | torch.Tensor, title: str = ""):
    """A matplotlib Figure of attention maps (L, H, T, T) as one image: a row per layer, a column per head,
    the masked upper triangles blank. One image in one Axes: quicker to draw than L*H subplots."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    w = _numpy(weights)
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
        ax.set_title(_short(title), fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, label="attention weight")
    return fig


def state_space_figure(
    step_sizes: np.ndarray | torch.Tensor, state_norms: np.ndarray | torch.Tensor, pieces: list[str], title: str = ""
):
    """A matplotlib Figure of what a state-space model has in place of attention maps, for one prompt: each
    layer's step size dt per token (averaged over channels: step_sizes (L, T)), and the norm of each layer's
    state after each token (state_norms (L, T)), a row per layer and a column per token (pieces)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator

    dt, norms = _numpy(step_sizes), _numpy(state_norms)
    L, T = dt.shape
    fig = Figure(figsize=(max(6.0, 2.5 + 0.16 * T), 2.6 + 0.5 * L), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    labels = [p.replace("\n", "⏎").replace(" ", "␣") for p in pieces]
    log = LogNorm(vmin=max(float(dt.min()), 1e-12), vmax=max(float(dt.max()), 1e-11))  # dt spans decades
    for ax, values, name, label, norm in (
        (top, dt, "step size dt of each token (mean over the layer's channels)", "dt", log),
        (bottom, norms, "norm of each layer's state after each token", "‖h‖", None),
    ):
        image = ax.imshow(values, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(L), [f"layer {n + 1}" for n in range(L)])
        ax.tick_params(length=0)
        ax.set_title(name, fontsize=9)
        bar = fig.colorbar(image, ax=ax, label=label, shrink=0.9)
        bar.ax.yaxis.set_major_locator(MaxNLocator(5))
        bar.ax.yaxis.set_minor_locator(NullLocator())
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    bottom.set_xticks(range(T), labels, fontsize=7, fontfamily="monospace")
    if title:
        fig.suptitle(_short(title), fontsize=9)
    return fig


def _short(title: str) -> str:
    return title if len(title) <= 60 else title[:57] + "..."
