"""Packing: how fast the training loader makes batches with data.packing=bos_aligned against random windows,
at nanogpt_baby's sizes (batch 12, block 64, char tokens of Tiny Shakespeare).

Both loaders run in this process (num_workers=0, as nanogpt_baby trains), taking turns chunk by chunk
(random, bos_aligned, bos_aligned, random, ...) so that both see the same background load; each reports
the median of its chunks' tokens/s. Cases: the file as one document (every row one piece of it), and by
paragraph (speeches: mostly longer than a row, so rows are pieces of them) and by line (40,000 lines of
37 characters on average, packed several to a row), each with and without doc_masking. Also reported: the
share of drawn tokens that bos_aligned crops (the tail of the segment cut to fill a row's end).

    python -m benchmarks.packing          # or: python -m benchmarks packing, once registered in MODULES
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict

from benchmarks import SHARED, TINY_SHAKESPEARE, row


def loader(cache: str, packing: str, sample_by: str, doc_masking: bool):
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.schema import DataConfig, TrainConfig

    data = {**asdict(DataConfig()), "block_size": 64, "batch_size": 12, "seed": TrainConfig.seed}
    settings = {"source": "local", "path": str(TINY_SHAKESPEARE), "sample_by": sample_by, "cache_dir": cache}
    dm = GPTDataModule(tokenizer="char", **{**data, **settings, "packing": packing, "doc_masking": doc_masking})
    dm.setup()
    return dm, iter(dm.train_dataloader())


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
    chunks, per_chunk = (6, 100) if quick else (20, 300)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-packing-") as cache:
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
                sampler = loaders["bos_aligned"][0]
                cropped = _cropped_share(sampler)
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
                            target=">= 0.95" if packing == "bos_aligned" else None,
                            note=f"median of {chunks} chunks of {per_chunk} batches, taking turns; load "
                            f"{os.getloadavg()[0]:.1f}"
                            + (f"; {cropped:.1%} of drawn tokens cropped" if packing == "bos_aligned" else ""),
                        )
                    )
    return rows


def _cropped_share(dm) -> float:
    """Tokens bos_aligned left out of rows (a cropped segment's tail) per token drawn, over 200 batches."""
    import numpy as np

    from lightning_gpt.data.windows import PackedSampler

    sampler = PackedSampler(dm.tokens("train"), 64)
    cropped = 0
    for k in range(200):
        sampler.draw(np.random.default_rng([1, 0, k]), 12)
        cropped += sampler.cropped
    return cropped / (cropped + 200 * 12 * 65)


if __name__ == "__main__":
    from benchmarks.__main__ import markdown

    results = run("--quick" in sys.argv)
    print(markdown(results))
