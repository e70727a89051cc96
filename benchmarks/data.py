"""Data: tokenization speed on the embedded corpus (about 4.8 MB of Shakespeare) and cached-load time.

- tokenizer alone: `encode_documents` over every play, in memory (tiktoken uses one thread per core);
- whole pipeline: `prepare_tokens` into a fresh cache folder, i.e. reading the corpus, tokenizing it with
  num_proc processes and writing the shards and manifest (lgpt-prepare's pipeline): what the first
  `lgpt-train` on a corpus pays;
- cached load: a new `GPTDataModule` finding that cache and producing its first batch.
Each figure is the best of a few repeats.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict

from benchmarks import SHARED, Stopwatch, row


def best_seconds(repeats: int, fn, *args) -> float:
    times = []
    for _ in range(repeats):
        with Stopwatch() as t:
            fn(*args)
        times.append(t.seconds)
    return min(times)


def prepare_fresh(name: str, num_proc: int) -> None:
    from lightning_gpt.data.cache import prepare_tokens
    from lightning_gpt.data.sources import Source

    with tempfile.TemporaryDirectory(prefix="lgpt-bench-data-") as cache:
        prepare_tokens(Source("embedded"), name, 0.1, cache, num_proc)


def load_cached(name: str, cache: str) -> None:
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.schema import DataConfig, TrainConfig

    data = {**asdict(DataConfig()), "block_size": 256, "batch_size": 64, "seed": TrainConfig.seed, "cache_dir": cache}
    datamodule = GPTDataModule(tokenizer=name, **data)
    datamodule.setup("fit")
    next(iter(datamodule.train_dataloader()))


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
    from datasets.utils.logging import disable_progress_bar

    from lightning_gpt.data.cache import prepare_tokens
    from lightning_gpt.data.shakespeare import load_plays
    from lightning_gpt.data.sources import Source
    from lightning_gpt.tokenizers import build_tokenizer

    disable_progress_bar()
    repeats = 1 if quick else 3
    texts = load_plays()
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    rows = [
        row(
            "data",
            "embedded corpus",
            "read and convert the plays",
            round(best_seconds(repeats, load_plays), 3),
            "s",
            note=f"{len(texts)} plays, {megabytes:.2f} MB of UTF-8 text",
        )
    ]
    cores = os.cpu_count() or 1
    for name in ("char", "gpt2"):
        tokenizer = build_tokenizer(name, texts)
        seconds = best_seconds(repeats, tokenizer.encode_documents, texts)
        rows.append(row("data", f"{name} tokenizer alone", "tokenize", round(megabytes / seconds, 1), "MB/s"))
        for num_proc in sorted({1, cores}):
            target = ">= 5" if name == "gpt2" and num_proc == cores else None
            seconds = best_seconds(repeats, prepare_fresh, name, num_proc)
            rows.append(
                row(
                    "data",
                    f"{name} pipeline, num_proc={num_proc}",
                    "tokenize into a fresh cache",
                    round(megabytes / seconds, 1),
                    "MB/s",
                    target=target,
                    note=f"{seconds:.2f} s, reading the corpus included",
                )
            )
        with tempfile.TemporaryDirectory(prefix="lgpt-bench-data-") as cache:
            prepare_tokens(Source("embedded"), name, 0.1, cache)
            seconds = best_seconds(repeats, load_cached, name, cache)
        rows.append(
            row(
                "data",
                f"{name} cached",
                "load the cache, first batch",
                round(seconds, 3),
                "s",
                target="< 1",
                note="in a process that has already imported torch and lightning",
            )
        )
    return rows
