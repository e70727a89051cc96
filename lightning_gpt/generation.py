"""Text generation for every model family: the key/value cache, sampling filters, the loop, `complete`.

    model, tokenizer = lightning_gpt.load("outputs/train/runs/<stamp>")
    print(complete(model, tokenizer, "ROMEO:", max_new_tokens=100)[0])

The training callback, the sample printed after training, `lgpt-sample` and `lgpt-explain` all call
these; the models only run forward over the positions they are given and advance their cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.tokenizers import Tokenizer


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


@torch.no_grad()
def generate(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_token: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield next tokens (B, 1) one step at a time for prompts idx (B, T).

    temperature 0 is greedy decoding. With the cache, the prompt runs once and then one position per
    step. When a bounded cache (a Transformer's, block_size positions) is full it is rebuilt from the
    most recent half window, so every token still sees at least block_size/2 tokens of context; a
    recurrent state (Mamba's) never fills. Without the cache, the last block_size tokens are recomputed
    at every step (nanoGPT's way). Stops early once every sequence has produced stop_token.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    block = model.config.block_size
    dtype = next(model.parameters()).dtype
    cache = None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    step_input = idx
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or (cache.capacity is not None and cache.length + step_input.size(1) > cache.capacity):
                rebuilding = cache is not None
                cache = model.new_cache(idx.size(0), idx.device, dtype)
                window = cache.capacity or block
                step_input = idx[:, -max(window // 2, 1) :] if rebuilding else idx[:, -window:]
            last = model.hidden_states(step_input, cache)[:, -1]
        else:
            last = model.hidden_states(idx[:, -block:])[:, -1]
        next_token = sample_next(model.head(last), temperature, top_k, top_p, generator)
        if stop_token is not None:
            next_token = torch.where(finished[:, None], stop_token, next_token)
            finished |= next_token[:, 0] == stop_token
        idx = torch.cat((idx, next_token), dim=1)
        step_input = next_token
        yield next_token
        if stop_token is not None and bool(finished.all()):
            return


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """A prompt's ids; an empty prompt starts from end-of-text, or a newline where there is none (char)."""
    if prompt:
        return tokenizer.encode(prompt)
    return [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")


def complete(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    stop_at_eot: bool = True,
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    """num_samples continuations of prompt (generated as one batch), each with its prompt in front.

    on_text receives the first sample's new text as it is generated (a character whose bytes span
    several tokens arrives whole). The model runs in eval mode and is put back as it was.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids(tokenizer, prompt)] * num_samples, device=device)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    stop = tokenizer.eot_id if stop_at_eot else None
    stream, new_tokens, first_done = TextStream(tokenizer), [], False
    was_training = model.training
    model.eval()
    try:
        for token in generate(model, idx, max_new_tokens, temperature, top_k, top_p, stop, generator=generator):
            new_tokens.append(token)
            first_done = first_done or int(token[0, 0]) == stop
            if on_text is not None and not first_done:
                on_text(stream.push(int(token[0, 0])))
    finally:
        model.train(was_training)
    if on_text is not None:
        on_text(stream.flush())
    rows = torch.cat(new_tokens, dim=1).tolist()
    return [prompt + tokenizer.decode(row[: row.index(stop)] if stop in row else row) for row in rows]


class TextStream:
    """Decodes tokens one at a time, holding back a character whose bytes span several tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        # A UTF-8 character is at most 4 bytes: past that, a replacement character is really in the text.
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
