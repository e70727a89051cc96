"""Packing, document masking and mixtures at nanogpt_baby's sizes (batch 12, block 64, char tokens of Tiny
Shakespeare): the loader's speed, the mask's cost in a training step, and a mixture's draws against its weights.
(What packing and masking do to the loss: benchmarks/packing_loss.py, a longer one.)

Loader: how fast the training loader makes batches with data.packing=bos_aligned against random windows.
Both loaders run in this process (num_workers=0, as nanogpt_baby trains), taking turns chunk by chunk
(random, bos_aligned, bos_aligned, random, ...) so that both see the same background load; each reports
the median of its chunks' tokens/s. Cases: the file as one document (every row one piece of it), and by
paragraph (speeches: mostly longer than a row, so rows are pieces of them) and by line (40,000 lines of
37 characters on average, packed several to a row), each with and without doc_masking. Also reported: the
share of drawn tokens that bos_aligned crops (the tail of the segment cut to fill a row's end), and how evenly
it draws: each token's rate of being in a row, relative to the mean, by tenth of the split and for documents
shorter than a row (random windows: 1 everywhere).

Mask: training steps (forward, backward, AdamW) of nanogpt_baby's model (GPT-2, 4 layers, 4 heads, 128 wide)
and of the llama family at the same size, on one bos_aligned batch of lines (packed several to a row), with
its doc_ids (SDPA with a same-document mask, positions restarting per document) and without (SDPA's causal
kernel), taking turns chunk by chunk in this process.

Mixture: three sources (Tiny Shakespeare's speeches dealt out in turn) weighted 0.6, 0.3, 0.1; the share of
the training tokens drawn from each (GPTDataModule.tokens_drawn) against its weight, with the binomial
standard error of a share of that many rows.

    python -m benchmarks.packing [--quick]     # or: python -m benchmarks packing
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import SHARED, TINY_SHAKESPEARE, row


def datamodule(cache: str, **settings):
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.schema import DataConfig, TrainConfig

    data = {**asdict(DataConfig()), "block_size": 64, "batch_size": 12, "seed": TrainConfig.seed, "cache_dir": cache}
    dm = GPTDataModule(tokenizer="char", **{**data, **settings})
    dm.setup()
    return dm


def loader(cache: str, packing: str, sample_by: str, doc_masking: bool):
    settings = {"source": "local", "path": str(TINY_SHAKESPEARE), "sample_by": sample_by}
    dm = datamodule(cache, **settings, packing=packing, doc_masking=doc_masking)
    return dm, iter(dm.train_dataloader())


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-packing-") as cache:
        return loader_speed(cache, quick) + mask_cost(cache, quick) + mixture_draws(cache, quick)


def loader_speed(cache: str, quick: bool) -> list[dict]:
    chunks, per_chunk = (6, 100) if quick else (20, 300)
    rows = []
    for sample_by in ("document", "paragraph", "line"):
        for doc_masking in (False, True):
            loaders = {p: loader(cache, p, sample_by, doc_masking) for p in ("random", "bos_aligned")}
            for _, batches in loaders.values():  # warm: memory maps, segment tables
                next(batches)
            rates: dict[str, list[float]] = {p: [] for p in loaders}
            for chunk in range(chunks):
                for packing in ("random", "bos_aligned") if chunk % 2 == 0 else ("bos_aligned", "random"):
                    batches = loaders[packing][1]
                    start = time.perf_counter()
                    for _ in range(per_chunk):
                        next(batches)
                    rates[packing].append(per_chunk * 12 * 64 / (time.perf_counter() - start))
            base = statistics.median(rates["random"])
            coverage = _coverage(loaders["bos_aligned"][0])
            case = f"{sample_by}{', doc_masking' if doc_masking else ''}"
            for packing, values in rates.items():
                rate = statistics.median(values)
                rows.append(
                    row(
                        "packing",
                        f"{case}: {packing}",
                        "loader tokens/s (ratio: to random)",
                        round(rate),
                        "tokens/s",
                        ratio=round(rate / base, 3),
                        target=">= 0.5" if packing == "bos_aligned" else None,  # far above what training reads
                        note=f"median of {chunks} chunks of {per_chunk} batches, taking turns; load "
                        f"{os.getloadavg()[0]:.1f}" + (f"; {coverage}" if packing == "bos_aligned" else ""),
                    )
                )
    return rows


def mask_cost(cache: str, quick: bool) -> list[dict]:
    import torch

    from lightning_gpt.models import build

    chunks, per_chunk = (4, 3) if quick else (10, 10)
    dm, batches = loader(cache, "bos_aligned", "line", True)
    batch = next(batches)
    segments = float((batch.doc_ids[:, -1] + 1).float().mean())
    rows = []
    for family in ("gpt2", "llama"):
        torch.manual_seed(0)
        shape = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": dm.tokenizer.vocab_size}
        model = build({"family": family, **shape})
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step = partial(train_step, model, optimizer, batch)
        for ids in (None, batch.doc_ids):  # warm
            step(ids)
        rates: dict[str, list[float]] = {"causal": [], "masked": []}
        for chunk in range(chunks):
            turns = [("causal", None), ("masked", batch.doc_ids)]
            for name, ids in turns if chunk % 2 == 0 else turns[::-1]:
                start = time.perf_counter()
                for _ in range(per_chunk):
                    step(ids)
                rates[name].append(per_chunk * batch.x.numel() / (time.perf_counter() - start))
        base = statistics.median(rates["causal"])
        for name, values in rates.items():
            rate = statistics.median(values)
            rows.append(
                row(
                    "packing",
                    f"mask cost, {family} 4x4x128: {name}",
                    "training tokens/s (ratio: to causal)",
                    round(rate),
                    "tokens/s",
                    ratio=round(rate / base, 3),
                    note=f"median of {chunks} chunks of {per_chunk} steps, taking turns; {segments:.1f} documents a "
                    f"row; {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}",
                )
            )
    return rows


def train_step(model: Any, optimizer: Any, batch: Any, doc_ids: Any) -> None:
    _, loss = model(batch.x, batch.y, doc_ids=doc_ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def mixture_draws(cache: str, quick: bool) -> list[dict]:
    steps = 200 if quick else 2000
    speeches = [p for p in TINY_SHAKESPEARE.read_text().split("\n\n") if p.strip()]
    weights = {"first": 0.6, "second": 0.3, "third": 0.1}
    folder = Path(cache) / "mixture"
    folder.mkdir(exist_ok=True)
    sources = {}
    for i, (name, weight) in enumerate(weights.items()):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in speeches[i :: len(weights)]))
        sources[name] = {"path": str(path), "weight": weight}
    dm = datamodule(cache, source="mixture", sources=sources)
    batches = iter(dm.train_dataloader())
    for _ in range(steps):
        dm.on_before_batch_transfer(next(batches), 0)  # counted as the training process counts them
    total, rows_drawn = sum(dm.tokens_drawn.values()), steps * 12
    rows = []
    for name, weight in weights.items():
        share = dm.tokens_drawn[name] / total
        error = math.sqrt(weight * (1 - weight) / rows_drawn)
        rows.append(
            row(
                "packing",
                f"mixture: {name} (weight {weight})",
                "share of training tokens drawn",
                round(share, 4),
                "",
                note=f"{dm.tokens_drawn[name]:,} of {total:,} tokens in {steps} batches of 12 rows; binomial standard "
                f"error {error:.4f}, off by {abs(share - weight) / error:.1f} of them",
            )
        )
    return rows


def _coverage(dm, batches: int = 400) -> str:
    """What bos_aligned draws, over `batches` batches: the share of drawn tokens left out of rows (cropped tails,
    a batch's overflow), and how often a token is in a row relative to the mean, by tenth of the split (the
    lowest and highest) and for documents shorter than a row."""
    import numpy as np

    from lightning_gpt.data.windows import PackedSampler

    split = dm.tokens("train")
    sampler = PackedSampler(split, 64)
    hits, cropped = np.zeros(len(split)), 0
    for k in range(batches):
        positions, _ = sampler.layout(np.random.default_rng([1, 0, k]), 12)
        np.add.at(hits, positions, 1)
        cropped += sampler.cropped
    rate = hits / hits.mean()
    tenths = [part.mean() for part in np.array_split(rate, 10)]
    ends = np.append(split.segments[1:], len(split))
    short = np.repeat(ends - split.segments < 65, ends - split.segments)
    note = f"{cropped / (cropped + batches * 12 * 65):.1%} of drawn tokens cropped; draw rate by tenth of the "
    note += f"split {min(tenths):.2f}-{max(tenths):.2f}"
    return note + (f", of documents shorter than a row {rate[short].mean():.2f}" if short.any() else "")


if __name__ == "__main__":
    from benchmarks.__main__ import markdown

    results = run("--quick" in sys.argv)
    print(markdown(results))
