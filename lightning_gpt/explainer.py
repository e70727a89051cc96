"""lgpt-explain: follow one prompt through a trained model and write what happens as one HTML page.

lgpt-explain ckpt_path=outputs/train/runs/<stamp> prompt="ROMEO:"        # -> <run>/explain.html
lgpt-explain ckpt_path=<run or .ckpt> prompt=@prompt.txt out=page.html max_new_tokens=80

From Python:

    model, tokenizer = lightning_gpt.load("outputs/train/runs/<stamp>")
    data = explain(model, tokenizer, "ROMEO:")       # an Explanation: every number the page shows
    write_page(data, "explain.html")

The page is one file (data as inline JSON, script and style inline, no network, no libraries) showing, for
this checkpoint: the prompt's tokens; the token embedding and how the family gives positions (GPT-2: a learned
position embedding added to it; Llama: rotary angles that turn queries and keys; Mamba: none), with a PCA of
the embedding table; what mixes the tokens (GPT-2 and Llama: every head's causal attention pattern; Mamba:
each layer's step sizes dt and state norms per token); the logit lens (final norm + head applied to the
residual stream after each block); the next-token distribution with temperature, top-k and top-p controls and
a seeded sample button; and a generated continuation with each token's probability. What a family holds
inside comes from its folder's inspect.py (see lightning_gpt/inspection.py).

Size of the page, for L layers, H heads, C channels, T prompt tokens and V vocabulary entries (float32 as
base64, 5.3 characters per number): attention L*H*T*(T+1)/2 numbers (Mamba instead: step sizes and state
norms L*T*(2 + channels)), embeddings T*C (GPT-2: 2*T*C; Llama's rotary angles: T*head_dim/2), logit lens
(L+1)*T*lens_top token ids and probabilities, next-token logits V, PCA points 2*min(V, pca_points), plus
46 KB of script and style. nanoGPT's shakespeare_char model (6x6x384, V=65) with 64 tokens: 0.73 MB.
Attention grows with the square of the prompt, so the prompt is capped at max_prompt_tokens (128 by default).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gpt.errors import UserError
from lightning_gpt.generation import check_sampling, generate
from lightning_gpt.inspection import evaluating, inspector, logit_lens, pca_2d, token_piece, trace
from lightning_gpt.io import atomic_write, placing
from lightning_gpt.models.base import LanguageModel
from lightning_gpt.schema import ExplainAppConfig
from lightning_gpt.tokenizers import Tokenizer

PAGE_TEMPLATE = Path(__file__).with_name("explainer_page.html")
DEFAULTS = ExplainAppConfig  # lgpt-explain's settings: the schema holds their only defaults
GENERATOR = '<meta name="generator" content="lgpt-explain">'  # how a page of ours is told from another file


@dataclass
class Explanation:
    """What one prompt does inside one model: everything the page shows, as arrays. Fields a family has no
    use for are None: positions (GPT-2 learned, Llama rotary, Mamba none), attention (GPT-2, Llama) or the
    state-space view (Mamba)."""

    prompt: str
    tokens: list[int]  # the prompt's token ids (T)
    pieces: dict[int, str]  # token id -> its text, for every id the page names
    model: dict[str, Any]  # family, its description (inspect.describe) and shape, parameters, tokenizer
    token_embedding: np.ndarray  # (T, C) rows of the token embedding table
    lens_ids: np.ndarray  # (L + 1, T, lens_top) top tokens of the logit lens; layer 0 is block 1's input
    lens_probs: np.ndarray  # (L + 1, T, lens_top) their probabilities
    logits: np.ndarray  # (V,) next-token logits after the prompt
    pca_ids: np.ndarray  # (N,) token ids of the embedding table's rows shown in the PCA
    pca_xy: np.ndarray  # (N, 2) their projection on the first two principal components
    pca_variance: list[float]  # fraction of the variance along each component
    generated: list[int]  # a sampled continuation
    generated_probs: list[float]  # the model's probability (temperature 1, no cutoff) of each generated token
    sampling: dict[str, Any]  # temperature, top_k, top_p, seed used for the continuation (the controls' start)
    source: str = ""  # where the model came from (a checkpoint path), shown in the page's header
    caps: dict[str, int] = field(default_factory=dict)
    position_embedding: np.ndarray | None = None  # (T, C) learned position rows added to the tokens (GPT-2)
    rotary_angles: np.ndarray | None = None  # (T, head_dim/2) angle position t turns q and k pair i by (Llama)
    rotary_distance: np.ndarray | None = None  # (block_size,) rotated / unrotated q.k for q = k = ones, d apart
    attention: np.ndarray | None = None  # (L, H, T, T) softmax(q k^T / sqrt(head_dim)), causal: zero above the diagonal
    step_sizes: np.ndarray | None = None  # (L, T) a state-space layer's dt, averaged over its channels (Mamba)
    step_size_channels: np.ndarray | None = None  # (L, K) per layer, the K channels whose dt varies most here
    step_sizes_by_channel: np.ndarray | None = None  # (L, T, K) their dt
    state_norms: np.ndarray | None = None  # (L, T) the norm of each layer's state after each token

    def to_json(self) -> dict[str, Any]:
        """The page's data: small lists as JSON, arrays as base64 float32 (exact, and 5.3 characters a number)."""
        T = len(self.tokens)
        rows, cols = np.tril_indices(T)  # attention below and on the diagonal; the rest is masked (zero)
        rotary = None
        if self.rotary_angles is not None:
            rotary = {"angles": _b64(self.rotary_angles), "distance": _b64(self.rotary_distance)}
        ssm = None
        if self.step_sizes is not None:
            ssm = {
                "dt": _b64(self.step_sizes),
                "channels": self.step_size_channels.tolist(),
                "dt_channels": _b64(self.step_sizes_by_channel),
                "state_norms": _b64(self.state_norms),
            }
        return {
            "prompt": self.prompt,
            "tokens": self.tokens,
            "pieces": {str(k): v for k, v in self.pieces.items()},
            "model": self.model,
            "source": self.source,
            "caps": self.caps,
            "embedding": {
                "token": _b64(self.token_embedding),
                "position": None if self.position_embedding is None else _b64(self.position_embedding),
                "rotary": rotary,
            },
            # (L, H, T*(T+1)/2), row by row
            "attention": None if self.attention is None else _b64(self.attention[:, :, rows, cols]),
            "ssm": ssm,
            "lens": {"ids": self.lens_ids.reshape(-1).tolist(), "probs": _b64(self.lens_probs)},
            "logits": _b64(self.logits),
            "pca": {"ids": self.pca_ids.tolist(), "xy": _b64(self.pca_xy), "variance": self.pca_variance},
            "generated": {"ids": self.generated, "probs": self.generated_probs},
            "sampling": self.sampling,
        }


def _b64(a: np.ndarray | torch.Tensor) -> str:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else a
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _numpy(a: torch.Tensor | None) -> np.ndarray | None:
    return None if a is None else a.detach().float().cpu().numpy()


def varying_channels(step_sizes: torch.Tensor, k: int) -> torch.Tensor:
    """(L, k): per layer, the k channels (in index order) whose log step size varies most over the prompt's
    tokens (step_sizes (L, T, d_inner)): where the layer is most selective about what it takes in."""
    spread = step_sizes.float().clamp(min=1e-30).log().std(dim=1, correction=0)  # (L, d_inner)
    return spread.topk(min(k, spread.size(-1)), dim=-1).indices.sort(dim=-1).values


def explain(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    temperature: float = DEFAULTS.temperature,
    top_k: int | None = DEFAULTS.top_k,
    top_p: float | None = DEFAULTS.top_p,
    seed: int = DEFAULTS.seed,
    max_prompt_tokens: int = DEFAULTS.max_prompt_tokens,
    lens_top: int = DEFAULTS.lens_top,
    candidates: int = DEFAULTS.candidates,
    pca_points: int = DEFAULTS.pca_points,
    channels: int = 64,
) -> Explanation:
    """Everything the page shows for prompt, computed by model (any family with an inspect.py).

    Caps on what is kept: max_prompt_tokens (attention grows with its square), lens_top tokens per layer
    and position in the logit lens, candidates (the next tokens whose text is embedded; sampling in the
    page still draws from the whole vocabulary), pca_points rows of the embedding table, channels of each
    state-space layer shown one by one (Mamba). The continuation stops at the end of the context window
    (block_size) or at end-of-text.
    """
    hooks = inspector(model)  # first: a family without inspection hooks is refused before anything runs
    if not prompt:
        raise UserError('the prompt is empty; give one: prompt="ROMEO:" (or prompt=@file.txt)')
    try:
        check_sampling(max_new_tokens, temperature, top_k, top_p)
    except ValueError as e:
        raise UserError(str(e)) from e
    for name, value in (
        ("max_prompt_tokens", max_prompt_tokens),
        ("lens_top", lens_top),
        ("candidates", candidates),
        ("pca_points", pca_points),
        ("channels", channels),
    ):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    tokens = tokenizer.encode(prompt)
    block_size = model.config.block_size
    if len(tokens) > block_size:
        raise UserError(
            f"the prompt is {len(tokens)} tokens, longer than the model's context (block_size {block_size}); shorten it"
        )
    if len(tokens) > max_prompt_tokens:
        raise UserError(
            f"the prompt is {len(tokens)} tokens; the page shows at most max_prompt_tokens="
            f"{max_prompt_tokens} (attention maps grow with its square): shorten it or raise "
            "max_prompt_tokens"
        )
    device = next(model.parameters()).device
    idx = torch.tensor([tokens], device=device)
    seen = trace(model, idx)
    lens_ids, lens_probs = logit_lens(model, seen.residual, lens_top)
    logits = seen.logits[-1].float()

    with evaluating(model):
        generated, generated_probs = _continue(model, idx, tokenizer, max_new_tokens, temperature, top_k, top_p, seed)

    vocab = model.config.vocab_size
    top_candidates = logits.topk(min(candidates, vocab)).indices.tolist()
    named = set(tokens) | set(generated) | set(top_candidates)
    if vocab <= pca_points:
        pca_ids = torch.arange(vocab)
    else:  # the named tokens, then evenly spaced ids up to the cap
        spaced = torch.linspace(0, vocab - 1, max(pca_points - len(named), 0)).long().tolist()
        pca_ids = torch.tensor(sorted(named | set(spaced)))
    xy, variance = pca_2d(hooks.token_table(model)[:vocab].detach())
    named |= set(lens_ids.reshape(-1).tolist()) | set(pca_ids.tolist())

    state_space = {}
    if seen.step_sizes is not None:  # (L, T, d_inner): the mean, and the channels that vary most, one by one
        chosen = varying_channels(seen.step_sizes, channels)  # (L, K)
        state_space = dict(
            step_sizes=_numpy(seen.step_sizes.mean(dim=-1)),
            step_size_channels=chosen.cpu().numpy(),
            step_sizes_by_channel=_numpy(seen.step_sizes.gather(2, chosen[:, None, :].expand(-1, len(tokens), -1))),
            state_norms=_numpy(seen.state_norms),
        )
    c = model.config
    return Explanation(
        prompt=prompt,
        tokens=tokens,
        pieces={i: token_piece(tokenizer, i) for i in sorted(named)},
        model={
            "family": c.family,
            **hooks.describe(c),
            "n_layer": c.n_layer,
            "n_embd": c.n_embd,
            "block_size": c.block_size,
            "vocab_size": vocab,
            "parameters": model.num_params(),
            "tokenizer": tokenizer.name,
        },
        token_embedding=_numpy(seen.token),
        position_embedding=_numpy(seen.position),
        rotary_angles=_numpy(seen.rotary_angles),
        rotary_distance=_numpy(seen.rotary_distance),
        attention=_numpy(seen.attention),
        **state_space,
        lens_ids=lens_ids.cpu().numpy(),
        lens_probs=lens_probs.cpu().numpy(),
        logits=logits.cpu().numpy(),
        pca_ids=pca_ids.numpy(),
        pca_xy=xy[pca_ids.to(xy.device)].cpu().numpy(),
        pca_variance=variance,
        generated=generated,
        generated_probs=generated_probs,
        sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed},
        caps={
            "max_prompt_tokens": max_prompt_tokens,
            "lens_top": lens_top,
            "candidates": candidates,
            "pca_points": pca_points,
            "max_new_tokens": max_new_tokens,
            "channels": channels,
        },
    )


@torch.no_grad()
def _continue(
    model: LanguageModel,
    idx: torch.Tensor,
    tokenizer: Tokenizer,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> tuple[list[int], list[float]]:
    """A continuation sampled as lgpt-sample does (same seed, same tokens), kept within the context window,
    and the model's probability of each of its tokens."""
    room = model.config.block_size - idx.size(1)
    if room < 1:
        return [], []
    generator = torch.Generator(idx.device).manual_seed(seed)
    steps = generate(
        model,
        idx,
        min(max_new_tokens, room),
        temperature,
        top_k,
        top_p,
        stop_token=tokenizer.eot_id,
        generator=generator,
    )
    new = [int(t[0, 0]) for t in steps]
    if tokenizer.eot_id in new:
        new = new[: new.index(tokenizer.eot_id) + 1]
    if not new:
        return [], []
    full = torch.cat([idx, torch.tensor([new], device=idx.device)], dim=1)
    probs = model(full[:, :-1])[0][0, idx.size(1) - 1 :].float().softmax(dim=-1)  # (len(new), V)
    return new, probs[torch.arange(len(new)), torch.tensor(new)].tolist()


def page(data: Explanation) -> str:
    """The self-contained HTML page for data."""
    payload = json.dumps(data.to_json(), ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c")  # "</script>" inside a token's text cannot end the script
    return PAGE_TEMPLATE.read_text(encoding="utf-8").replace("/*LGPT_DATA*/null", payload, 1)


def write_page(data: Explanation, out: str | Path) -> Path:
    """Write the page to out (parent folders created) and return its path. An existing file there is replaced
    only if it is a page of ours (written as a whole: lightning_gpt.io.atomic_write); a symlink or another
    file at out is refused, so nothing of the user's is overwritten and no link is followed."""
    path = Path(out).expanduser()
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; the page is written only as a file of its own: choose out=...")
    if path.exists() and not _is_our_page(path):
        raise UserError(f"{path} exists and is not a page of lgpt-explain; choose another out=... (or move it)")
    text = page(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with placing(path):
            atomic_write(path, text)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another out=...") from e
    return path


def _is_our_page(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return GENERATOR.encode() in f.read(4096)
    except OSError:
        return False
