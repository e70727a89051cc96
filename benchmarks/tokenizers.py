"""Tokenizers: compression (UTF-8 bytes per token) on text none of them was trained on.

Tiny Shakespeare is split by characters: the first 90% trains `tokenizer=bpe` at 4096 and 32000 tokens (as
lgpt-train does on first use, with the same code); the last 10% is encoded by each tokenizer, beside GPT-2's
and cl100k's fixed BPEs. More bytes per token means shorter sequences: more text per context window and per
step. `ratio` is against GPT-2's.

    python -m benchmarks --only tokenizers
"""

from __future__ import annotations

import os

from benchmarks import SHARED, TINY_SHAKESPEARE, Stopwatch, row

CASES = ({"name": "bpe", "vocab_size": 4096}, {"name": "bpe", "vocab_size": 32000}, "gpt2", "cl100k_base")


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
    from lightning_gpt.tokenizers import build_tokenizer

    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    cut = text.index("\n", int(len(text) * 0.9)) + 1  # at a line end, as a validation tenth
    train, val = text[:cut], text[cut:]
    val_bytes = len(val.encode("utf-8"))
    measured = []
    for spec in CASES:
        with Stopwatch() as t:
            tokenizer = build_tokenizer(spec, iter([train]))  # fixed encodings ignore the texts
        tokens = len(tokenizer.encode(val))
        case = f"bpe {spec['vocab_size']}" if isinstance(spec, dict) else spec
        note = f"{tokenizer.vocab_size:,} tokens, {tokens:,} for {val_bytes:,} bytes"
        if isinstance(spec, dict):
            note += f"; trained on {len(train.encode('utf-8')):,} bytes in {t.seconds:.1f} s"
        measured.append((case, val_bytes / tokens, note))
    gpt2 = dict((case, value) for case, value, _ in measured)["gpt2"]
    metric = "bytes per token, held-out text"
    return [
        row("tokenizers", case, metric, round(value, 3), "bytes/token", round(value / gpt2, 3), note=note)
        for case, value, note in measured
    ]
