"""lgpt-explain: follow one prompt through a trained GPT and write what happens as one HTML page.

lgpt-explain ckpt_path=outputs/train/runs/<stamp> prompt="ROMEO:"        # -> <run>/explain.html
lgpt-explain ckpt_path=<run or .ckpt> prompt=@prompt.txt out=page.html max_new_tokens=80

From Python:

    model, tokenizer = lightning_gpt.load("outputs/train/runs/<stamp>")
    data = explain(model, tokenizer, "ROMEO:")       # an Explanation: every number the page shows
    write_page(data, "explain.html")

The page is one file (data as inline JSON, script and style inline, no network, no libraries) showing, for
this checkpoint: the prompt's tokens; token and position embeddings and their sum, with a PCA of the
embedding table; every head's causal attention pattern; the logit lens (final norm + head applied to the
residual stream after each block); the next-token distribution with temperature, top-k and top-p controls
and a seeded sample button; and a generated continuation with each token's probability.

Size of the page, for L layers, H heads, C channels, T prompt tokens and V vocabulary entries (float32 as
base64, 5.3 characters per number): attention L*H*T*(T+1)/2 numbers, embeddings 2*T*C, logit lens
(L+1)*T*lens_top token ids and probabilities, next-token logits V, PCA points 2*min(V, pca_points), plus
31 KB of script and style. nanoGPT's shakespeare_char model (6x6x384, V=65) with 64 tokens: 0.71 MB.
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
from lightning_gpt.inspection import evaluating, logit_lens, pca_2d, token_piece, trace
from lightning_gpt.models.gpt2.model import GPT
from lightning_gpt.tokenizers import Tokenizer

PAGE_TEMPLATE = Path(__file__).with_name("explainer_page.html")


@dataclass
class Explanation:
    """What one prompt does inside one model: everything the page shows, as arrays."""

    prompt: str
    tokens: list[int]  # the prompt's token ids (T)
    pieces: dict[int, str]  # token id -> its text, for every id the page names
    model: dict[str, Any]  # shape and family: n_layer, n_head, n_embd, block_size, vocab_size, parameters
    token_embedding: np.ndarray  # (T, C) rows of wte
    position_embedding: np.ndarray  # (T, C) rows of wpe
    attention: np.ndarray  # (L, H, T, T) softmax(q k^T / sqrt(head_dim)), causal: zero above the diagonal
    lens_ids: np.ndarray  # (L + 1, T, lens_top) top tokens of the logit lens; layer 0 is the embedding sum
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

    def to_json(self) -> dict[str, Any]:
        """The page's data: small lists as JSON, arrays as base64 float32 (exact, and 5.3 characters a number)."""
        T = len(self.tokens)
        rows, cols = np.tril_indices(T)  # attention below and on the diagonal; the rest is masked (zero)
        return {
            "prompt": self.prompt,
            "tokens": self.tokens,
            "pieces": {str(k): v for k, v in self.pieces.items()},
            "model": self.model,
            "source": self.source,
            "caps": self.caps,
            "embedding": {"token": _b64(self.token_embedding), "position": _b64(self.position_embedding)},
            "attention": _b64(self.attention[:, :, rows, cols]),  # (L, H, T*(T+1)/2), row by row
            "lens": {"ids": self.lens_ids.reshape(-1).tolist(), "probs": _b64(self.lens_probs)},
            "logits": _b64(self.logits),
            "pca": {"ids": self.pca_ids.tolist(), "xy": _b64(self.pca_xy), "variance": self.pca_variance},
            "generated": {"ids": self.generated, "probs": self.generated_probs},
            "sampling": self.sampling,
        }


def _b64(a: np.ndarray | torch.Tensor) -> str:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else a
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def explain(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    max_prompt_tokens: int = 128,
    lens_top: int = 5,
    candidates: int = 100,
    pca_points: int = 2000,
) -> Explanation:
    """Everything the page shows for prompt, computed by model.

    Caps on what is kept: max_prompt_tokens (attention grows with its square), lens_top tokens per layer
    and position in the logit lens, candidates (the next tokens whose text is embedded; sampling in the
    page still draws from the whole vocabulary), pca_points rows of the embedding table. The continuation
    stops at the end of the context window (block_size) or at end-of-text.
    """
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
            f"{max_prompt_tokens} (the attention maps grow with its square): shorten it or raise "
            "max_prompt_tokens"
        )
    device = model.lm_head.weight.device
    idx = torch.tensor([tokens], device=device)
    seen = trace(model, idx)
    embedding_sum = seen["token"] + seen["position"]  # the residual stream before the first block
    lens_ids, lens_probs = logit_lens(model, [embedding_sum, *seen["residual"]], lens_top)
    logits = seen["logits"][-1].float()

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
    table = model.transformer.wte.weight[:vocab].detach()
    xy, variance = pca_2d(table)
    named |= set(lens_ids.reshape(-1).tolist()) | set(pca_ids.tolist())
    c = model.config
    return Explanation(
        prompt=prompt,
        tokens=tokens,
        pieces={i: token_piece(tokenizer, i) for i in sorted(named)},
        model={
            "family": "gpt",
            "positions": "learned",
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_embd": c.n_embd,
            "block_size": c.block_size,
            "vocab_size": vocab,
            "parameters": model.num_params(),
            "tokenizer": tokenizer.name,
        },
        token_embedding=seen["token"].float().cpu().numpy(),
        position_embedding=seen["position"].float().cpu().numpy(),
        attention=seen["attention"].cpu().numpy(),
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
        },
    )


@torch.no_grad()
def _continue(
    model: GPT,
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
    """Write the page to out (parent folders created) and return its path."""
    path = Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(data), encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another out=...") from e
    return path
