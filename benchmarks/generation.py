"""Generation speed on CPU: new tokens per second from the nanogpt_shakespeare_char model shape (6 layers,
6 heads, 384 wide, 256-token context, 65-character vocabulary; random weights), one sequence, with the
KV cache vs recomputing the whole context at every step (nanoGPT's way).

The full run generates 500 tokens from a one-character prompt, as `lgpt-sample` does with an empty one (so
the context slides past 256 tokens); --quick generates 64 tokens after a 192-token prompt, the steady state
of a nearly full context, in a fraction of the time (recomputing is slow: about 4 tokens/s on 2 cores).

    python -m benchmarks.generation [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks import row

FULL, QUICK = (1, 500), (192, 64)  # (prompt tokens, new tokens)


def nano_char_model():
    import torch
    from omegaconf import OmegaConf

    from lightning_gpt.apps.launch import CONF_DIR
    from lightning_gpt.models.gpt2.model import GPT, GPTConfig

    shape = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "nano_char.yaml"))
    shape.pop("defaults")  # the family it builds on: gpt2, this class
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=65, **shape)).eval()


def tokens_per_second(model, prompt_tokens: int, new_tokens: int, use_cache: bool) -> float:
    import torch

    from lightning_gpt.generation import generate

    prompt = torch.randint(0, 65, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    for _ in generate(model, prompt, 8, use_cache=use_cache):  # warm-up
        pass
    start = time.perf_counter()
    steps = generate(model, prompt, new_tokens, temperature=0.8, top_k=200, use_cache=use_cache, generator=generator)
    count = sum(1 for _ in steps)
    return count / (time.perf_counter() - start)


def run(quick: bool) -> list[dict]:
    model = nano_char_model()
    prompt_tokens, new_tokens = QUICK if quick else FULL
    cached = tokens_per_second(model, prompt_tokens, new_tokens, use_cache=True)
    recomputed = tokens_per_second(model, prompt_tokens, new_tokens, use_cache=False)
    case = f"nano_char (10.7M), {new_tokens} new tokens after {prompt_tokens}, CPU"
    return [
        row(
            "generation",
            case,
            "tokens/s with KV cache",
            round(cached, 1),
            "tokens/s",
            ratio=round(cached / recomputed, 2),
            target=">= 5",
            note="ratio: vs recomputing the context",
        ),
        row(
            "generation",
            case,
            "tokens/s recomputing the context",
            round(recomputed, 1),
            "tokens/s",
            note="nanoGPT's generate",
        ),
    ]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(r)
