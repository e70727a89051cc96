"""The data pipeline: sources, the token cache, splits, windows, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from lightning_gpt.data import GPTDataModule
from lightning_gpt.data.cache import fingerprint, prepare_tokens
from lightning_gpt.data.shakespeare import load_plays
from lightning_gpt.data.sources import Source
from lightning_gpt.data.windows import FixedWindows, RandomWindows
from lightning_gpt.errors import UserError
from lightning_gpt.schema import DataConfig, TrainConfig

from .support.config import TINY_SHAKESPEARE


def datamodule(cache_dir, **overrides) -> GPTDataModule:
    """A data module with lgpt-train's defaults (the schema's), the char tokenizer and `overrides`."""
    data = {**asdict(DataConfig()), "block_size": 64, "seed": TrainConfig.seed}  # 64: model=baby, the default
    return GPTDataModule(**{"tokenizer": "char", **data, "cache_dir": str(cache_dir), **overrides})


def test_embedded_corpus_is_shakespeare_in_tiny_shakespeare_layout():
    plays = load_plays()
    assert len(plays) == 38
    assert 4_000_000 < sum(map(len, plays)) < 6_000_000
    hamlet = next(p for p in plays if "HAMLET:\n" in p)
    assert "\n\nHAMLET:\nTo be, or not to be: that is the question:\n" in hamlet
    text = "".join(plays)
    assert "**" not in text and "_Exit" not in text and "## ACT" not in text


@pytest.mark.slow
def test_tiny_shakespeare_char_split_matches_nanogpt(cache_dir):
    dm = datamodule(cache_dir, source="local", path=str(TINY_SHAKESPEARE))
    meta = dm.load_cache().meta
    assert dm.tokenizer.vocab_size == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["dtype"] == "uint16"


def test_second_run_reuses_the_cache_without_tokenizing(cache_dir, caplog):
    source = Source("local", path=str(TINY_SHAKESPEARE))
    folder = prepare_tokens(source, "gpt2", 0.1, str(cache_dir))
    mtime = (folder / "tokens.bin").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="lightning_gpt.data.cache"):
        assert prepare_tokens(source, "gpt2", 0.1, str(cache_dir)) == folder
    assert "tokenizing" not in caplog.text
    assert (folder / "tokens.bin").stat().st_mtime_ns == mtime
    assert prepare_tokens(source, "gpt2", 0.2, str(cache_dir)) != folder  # other split, other cache
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r")
    assert tokens[-1] == 50256  # documents end with end-of-text


def test_a_changed_file_is_tokenized_again(tmp_path, cache_dir):
    path = tmp_path / "a.txt"
    path.write_text("abc " * 100)
    first = prepare_tokens(Source("local", path=str(path)), "byte", 0.1, str(cache_dir))
    path.write_text("abcd " * 100)
    assert prepare_tokens(Source("local", path=str(path)), "byte", 0.1, str(cache_dir)) != first


def test_large_vocabularies_are_stored_as_uint32(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    folder = prepare_tokens(Source("local", path=str(tmp_path / "a.txt")), "cl100k_base", 0.1, str(cache_dir))
    assert json.loads((folder / "meta.json").read_text())["dtype"] == "uint32"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_files_with_a_text_column(tmp_path, cache_dir, fmt):
    import datasets

    rows = {"body": [f"document number {i} " * 20 for i in range(30)], "id": list(range(30))}
    path = tmp_path / f"docs.{fmt}"
    ds = datasets.Dataset.from_dict(rows)
    {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    dm = datamodule(cache_dir, tokenizer="byte", source="local", path=str(path), text_column="body", block_size=16)
    assert dm.load_cache().meta["num_tokens"] == sum(len(t) + 1 for t in rows["body"])
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, id\); set data.text_column"):
        datamodule(cache_dir, tokenizer="byte", source="local", path=str(path)).load_cache()


def test_folders_and_globs_and_a_separate_validation_file(tmp_path, cache_dir):
    for i in range(3):
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "train" / f"{i}.txt").write_text(f"text file {i}\n" * 40)
    (tmp_path / "val.txt").write_text("held out\n" * 20)
    val = str(tmp_path / "val.txt")
    train = str(tmp_path / "train")
    dm = datamodule(cache_dir, tokenizer="byte", source="local", path=train, val_path=val, block_size=8)
    meta = dm.load_cache().meta
    assert meta["train_tokens"] == 3 * (len("text file 0\n") * 40 + 1)
    assert meta["val_tokens"] == len("held out\n") * 20 + 1
    by_glob = datamodule(
        cache_dir, tokenizer="byte", source="local", path=str(tmp_path / "train" / "*.txt"), val_path=val, block_size=8
    )
    assert by_glob.load_cache().meta["num_tokens"] == meta["num_tokens"]


def bad(tmp_path, cache_dir, **kwargs):
    return datamodule(cache_dir, **{"source": "local", **kwargs}).load_cache()


def test_missing_path(tmp_path, cache_dir):
    with pytest.raises(UserError, match="matches no files"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "nope.txt"))


def test_empty_corpus(tmp_path, cache_dir):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="has no text"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "empty.txt"), tokenizer="byte")


def test_corpus_shorter_than_a_window(tmp_path, cache_dir):
    (tmp_path / "short.txt").write_text("to be or not to be\n")
    with pytest.raises(UserError, match="fewer than block_size \\+ 1 = 65"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "short.txt"), block_size=64)


def test_undecodable_bytes(tmp_path, cache_dir):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    with pytest.raises(UserError, match="not valid UTF-8"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "latin1.txt"))


def test_hub_dataset_offline_says_how_to_use_local_files(cache_dir):
    with pytest.raises(UserError, match="data=local data.path="):
        datamodule(cache_dir, tokenizer="gpt2", source="hub", name="Skylion007/openwebtext").prepare_data()
    assert not any(p.name.endswith(".partial") for p in cache_dir.iterdir())


def test_training_windows_are_seeded_per_process_and_resume_mid_stream(cache_dir):
    dm = datamodule(cache_dir, source="local", path=str(TINY_SHAKESPEARE), block_size=32, batch_size=4)
    split = dm.tokens("train")
    stream = RandomWindows(split, 32, 4, seed=1, rank=0)
    batches = [b for _, b in zip(range(5), stream)]
    x, y = batches[0]
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    resumed = next(iter(RandomWindows(split, 32, 4, seed=1, rank=0, start=3)))
    assert torch.equal(resumed[0], batches[3][0])
    other_rank = next(iter(RandomWindows(split, 32, 4, seed=1, rank=1)))
    assert not torch.equal(other_rank[0], x)
    workers = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert all(torch.equal(a[0], b[0]) for (a, b), _ in zip(zip(workers, batches), range(5)))


def test_validation_windows_are_fixed_and_cover_the_split(cache_dir):
    dm = datamodule(cache_dir, source="local", path=str(TINY_SHAKESPEARE))
    split = dm.tokens("val")
    a, b = FixedWindows(split, 64, 100, batch_size=8), FixedWindows(split, 64, 100, batch_size=8)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert a.starts[0] == 0 and a.starts[-1] == len(split) - 65
    assert len(a) == len(list(a)) == 13 and sum(len(x) for x, _ in a) == 100


def test_validation_windows_are_split_across_processes_without_repeats(cache_dir):
    dm = datamodule(cache_dir, source="local", path=str(TINY_SHAKESPEARE))
    split = dm.tokens("val")
    whole = torch.cat([y for _, y in FixedWindows(split, 16, 8, batch_size=3)])
    for world in (2, 3):
        parts = [list(FixedWindows(split, 16, 8, batch_size=3, rank=r, world_size=world)) for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # every process runs as many batches
        targets = torch.cat([y for p in parts for _, y in p])
        real = targets[(targets != -1).all(dim=1)]
        assert len(real) == 8 and (targets == -1).all(dim=1).sum() == world * -(-8 // world) - 8  # padding
        assert sorted(map(tuple, real.tolist())) == sorted(map(tuple, whole.tolist()))


@pytest.mark.slow
def test_only_one_process_tokenizes(tmp_path):
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from lightning_gpt.data.cache import prepare_tokens; from lightning_gpt.data.sources import Source;"
        f"print(prepare_tokens(Source('local', path={str(TINY_SHAKESPEARE)!r}), 'gpt2', 0.1, {str(tmp_path)!r}))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out.count("tokenizing the local corpus") for out in outputs) == 1
    assert len({out.strip().splitlines()[-1] for out in outputs}) == 1


def test_tokenizing_and_preparing_import_neither_lightning_nor_torch():
    """Nor do lgpt-prepare's worker processes, forked from it: each would carry torch's memory. This file's
    `from lightning_gpt.data import GPTDataModule` shows the package still offers the DataModule."""
    code = (
        "import sys; import lightning_gpt.data.cache, lightning_gpt.data.sources, lightning_gpt.apps.prepare;"
        "import lightning_gpt.data.prepare, lightning_gpt.data.shards;"
        "print(sorted(m for m in ('lightning', 'torch', 'lightning_gpt.data.module') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_fingerprints_are_those_of_caches_made_before():
    """A changed fingerprint would silently tokenize every user's corpus again, into a second cache."""
    owt = Source("hub", name="Skylion007/openwebtext", val_split="validation")
    assert fingerprint(owt, "gpt2", 0.0005) == "494d000fa7cbc8f0"
    assert fingerprint(Source("hub", name="a/b"), {"name": "char", "chars": "ab"}, 0.1) == "175b4c6a18b9fc53"
