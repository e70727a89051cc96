"""The data pipeline: sources, the token cache (token shards, as lgpt-prepare writes), splits, windows, and
every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gpt.data import GPTDataModule
from lightning_gpt.data.cache import prepare_tokens
from lightning_gpt.data.prepare import fingerprint, prepare_folder
from lightning_gpt.data.shakespeare import load_plays
from lightning_gpt.data.shards import PreparedFolder
from lightning_gpt.data.sources import RowCounts, Source, stream
from lightning_gpt.data.windows import FixedWindows, RandomWindows
from lightning_gpt.errors import UserError
from lightning_gpt.schema import DataConfig, TrainConfig
from lightning_gpt.tokenizers import build_tokenizer

from .support.config import TINY_SHAKESPEARE


def datamodule(cache_dir, **overrides) -> GPTDataModule:
    """A data module with lgpt-train's defaults (the schema's), the char tokenizer and `overrides`."""
    data = {**asdict(DataConfig()), "block_size": 64, "seed": TrainConfig.seed}  # 64: model=baby, the default
    return GPTDataModule(**{"tokenizer": "char", **data, "cache_dir": str(cache_dir), **overrides})


def stream_tokens(folder: Path) -> np.ndarray:
    return np.asarray(PreparedFolder(folder).tokens())


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
    folder = dm.load_cache()
    assert dm.tokenizer.vocab_size == 65
    assert folder.meta["splits"] == {"train": [0, 1_003_854], "val": [1_003_854, 1_115_394]}
    assert folder.dtype == "uint16"


def test_second_run_reuses_the_cache_without_tokenizing(cache_dir, caplog):
    source = Source("local", path=str(TINY_SHAKESPEARE))
    folder = prepare_tokens(source, "gpt2", 0.1, str(cache_dir))
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    caplog.clear()
    with caplog.at_level("INFO", logger="lightning_gpt.data"):
        assert prepare_tokens(source, "gpt2", 0.1, str(cache_dir)) == folder
    assert "tokenizing" not in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert sorted(mtimes) == ["docs_00000.idx", "manifest.json", "shard_00000.bin", "tokenizer.json"]
    assert prepare_tokens(source, "gpt2", 0.2, str(cache_dir)) != folder  # other split, other cache
    tokens = stream_tokens(folder)
    assert tokens[-1] == 50256  # documents end with end-of-text
    assert tokens.tolist() == build_tokenizer("gpt2").encode(TINY_SHAKESPEARE.read_text()) + [50256]


def test_the_token_cache_is_the_folder_lgpt_prepare_writes(tmp_path, cache_dir):
    """One pipeline, one format: the first run's cache and lgpt-prepare's out_dir hold the same bytes."""
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"text": f"doc {i} " * (i % 7 + 1)}) + "\n" for i in range(200))
    )
    source = Source("local", path=str(tmp_path / "docs.jsonl"))
    cache = prepare_tokens(source, "gpt2", 0.1, str(tmp_path / "cache"))
    out, fresh = prepare_folder(source, "gpt2", 0.1, tmp_path / "out", num_proc=2)
    assert fresh and cache.name == json.loads((out / "manifest.json").read_text())["settings"]
    for name in ("shard_00000.bin", "docs_00000.idx", "tokenizer.json"):
        assert (cache / name).read_bytes() == (out / name).read_bytes()


def test_a_changed_file_is_tokenized_again(tmp_path, cache_dir):
    path = tmp_path / "a.txt"
    path.write_text("abc " * 100)
    first = prepare_tokens(Source("local", path=str(path)), "byte", 0.1, str(cache_dir))
    path.write_text("abcd " * 100)
    assert prepare_tokens(Source("local", path=str(path)), "byte", 0.1, str(cache_dir)) != first


def test_large_vocabularies_are_stored_as_uint32(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    folder = prepare_tokens(Source("local", path=str(tmp_path / "a.txt")), "cl100k_base", 0.1, str(cache_dir))
    assert PreparedFolder(folder).dtype == "uint32"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_files_with_a_text_column(tmp_path, cache_dir, fmt):
    import datasets

    rows = {"body": [f"document number {i} " * 20 for i in range(30)], "id": list(range(30))}
    path = tmp_path / f"docs.{fmt}"
    ds = datasets.Dataset.from_dict(rows)
    {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    dm = datamodule(cache_dir, tokenizer="byte", source="local", path=str(path), text_column="body", block_size=16)
    folder = dm.load_cache()
    assert folder.num_tokens == sum(len(t) + 1 for t in rows["body"])
    lengths = [len(t) + 1 for t in rows["body"]]
    assert folder.doc_starts().tolist() == np.cumsum([0, *lengths[:-1]]).tolist()  # each row a document
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
    folder = dm.load_cache()
    train_tokens = 3 * (len("text file 0\n") * 40 + 1)
    assert folder.split("train") == (0, train_tokens)
    assert folder.split("val") == (train_tokens, train_tokens + len("held out\n") * 20 + 1)
    assert folder.meta["documents"] == 4  # a file is a document
    by_glob = datamodule(
        cache_dir, tokenizer="byte", source="local", path=str(tmp_path / "train" / "*.txt"), val_path=val, block_size=8
    )
    assert by_glob.load_cache().num_tokens == folder.num_tokens


@pytest.mark.parametrize(
    ("sample_by", "documents"),
    [("document", ["a\nb\n\nc\n\n\nd\n"]), ("paragraph", ["a\nb", "c", "\nd\n"]), ("line", ["a", "b", "c", "d"])],
)
def test_what_a_document_of_a_text_file_is(tmp_path, sample_by, documents):
    (tmp_path / "a.txt").write_text("a\nb\n\nc\n\n\nd\n")
    pieces = list(stream(Source("local", path=str(tmp_path / "a.txt"), sample_by=sample_by), "train", 1000))
    assert pieces == [(d, True) for d in documents]


def test_a_long_line_streams_in_pieces_in_every_mode(tmp_path):
    """A 3 MB line is one document whose pieces are at most about chunk_chars long, in each mode."""
    line = "word " * 600_000
    (tmp_path / "a.txt").write_text(f"first\n{line}\nlast\n")
    for sample_by in ("document", "paragraph", "line"):
        pieces = list(stream(Source("local", path=str(tmp_path / "a.txt"), sample_by=sample_by), "train", 2**16))
        assert max(len(p) for p, _ in pieces) <= 2**16 + 1
        assert "".join(p for p, _ in pieces).replace("\n", "") == f"first{line}last"
    assert [last for _, last in pieces].count(True) == 3  # line: three documents


def test_a_byte_order_mark_and_windows_newlines_are_the_same_text(tmp_path, cache_dir):
    """Saved by a Windows editor (BOM, CRLF), a file gives the same tokens and vocabulary as with LF alone."""
    text = TINY_SHAKESPEARE.read_text()[:50_000]
    (tmp_path / "unix.txt").write_text(text)
    (tmp_path / "windows.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    unix, windows = (
        datamodule(cache_dir, source="local", path=str(tmp_path / f"{name}.txt")).load_cache()
        for name in ("unix", "windows")
    )
    assert unix.tokenizer.to_dict() == windows.tokenizer.to_dict() and "\ufeff" not in windows.tokenizer.chars
    assert np.array_equal(unix.tokens(), windows.tokens())
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a\\r\\nb"}\r\n{"text": "c"}\r\n')
    assert list(stream(Source("local", path=str(rows)), "train", 100)) == [("a\nb", True), ("c", True)]


def bad(tmp_path, cache_dir, **kwargs):
    return datamodule(cache_dir, **{"source": "local", **kwargs}).load_cache()


def test_missing_path(tmp_path, cache_dir):
    with pytest.raises(UserError, match="^data.path .* matches no files"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "nope.txt"))
    os.mkfifo(tmp_path / "pipe.txt")  # it exists: "matches no files" was wrong (as /dev/zero's was)
    with pytest.raises(UserError, match="^data.path '.*pipe.txt' is not a regular file .a device or a pipe."):
        bad(tmp_path, cache_dir, path=str(tmp_path / "pipe.txt"))


def test_a_missing_validation_path_is_named_as_such(tmp_path, cache_dir):
    (tmp_path / "train.txt").write_text("some text\n" * 100)
    with pytest.raises(UserError, match=r"^data.val_path '.*val.txt' matches no files"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "train.txt"), val_path=str(tmp_path / "val.txt"))


def test_empty_corpus(tmp_path, cache_dir):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="has no text"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "empty.txt"), tokenizer="byte")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n{"text": null}\n')
    with pytest.raises(UserError, match="has no text: all its 3 documents are empty; check data.path"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "blank.jsonl"), tokenizer="byte")
    assert [p.name for p in cache_dir.iterdir() if p.name.endswith((".partial", ".tmp"))] == []


def test_corpus_shorter_than_a_window(tmp_path, cache_dir):
    (tmp_path / "short.txt").write_text("to be or not to be\n")
    with pytest.raises(UserError, match="fewer than block_size \\+ 1 = 65"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "short.txt"), block_size=64)


def test_a_train_split_too_short_asks_for_more_text_not_a_larger_val_fraction(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("x" * 999 + "\n")
    message = r"the train split has 50 tokens, .* it needs more text, or a smaller data.val_fraction or model.block"
    with pytest.raises(UserError, match=message):
        bad(tmp_path, cache_dir, path=str(tmp_path / "a.txt"), val_fraction=0.95, block_size=64)
    with pytest.raises(UserError, match=r"the val split has 50 tokens, .* a larger data.val_fraction"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "a.txt"), val_fraction=0.05, block_size=64)


def test_undecodable_bytes_name_their_file_and_exact_offset(tmp_path, cache_dir):
    """In a folder, the file that holds the byte (not the folder) and the byte's offset in it, past the first
    megabyte too, from lgpt-train and lgpt-prepare alike (lgpt-prepare named no offset)."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("fine text\n" * 1000)
    (tmp_path / "corpus" / "b.txt").write_bytes(b"x" * 3_000_000 + "caf\xe9 au lait\n".encode("latin-1"))
    message = r"'.*corpus/b.txt' is not valid UTF-8 text \(invalid continuation byte at byte 3,000,003\); convert it"
    with pytest.raises(UserError, match=message):
        bad(tmp_path, cache_dir, path=str(tmp_path / "corpus"))
    with pytest.raises(UserError, match=message):
        prepare_folder(Source("local", path=str(tmp_path / "corpus")), "byte", 0.1, tmp_path / "out", num_proc=1)
    (tmp_path / "small.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    with pytest.raises(UserError, match=r"at byte 3\); convert it to UTF-8, e.g. iconv"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "small.txt"))


def test_a_malformed_jsonl_row_is_named_by_its_line(tmp_path, cache_dir):
    lines = [json.dumps({"text": f"row {i}"}) for i in range(3000)]
    lines[1233] = '{"text": "row 1233"'  # line 1,234: a missing brace
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"rows.jsonl' line 1,234 is not valid JSON \(Expecting ',' delimiter"):
        bad(tmp_path, cache_dir, path=str(tmp_path / "rows.jsonl"))


def test_rows_without_the_text_column_are_counted_and_refused_above_the_threshold(tmp_path, cache_dir, caplog):
    """2,700 of 3,000 rows lack the column: refused, naming the count and the first; allowed when the user
    raises data.max_skipped_fraction, and then the count is logged."""
    rows = [{"text": f"row {i} " * 5} if i % 10 == 0 else {"body": f"row {i}"} for i in range(3000)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = (
        r"skipped 2,700 of 3,000 rows of data.path '.*rows.jsonl' that have no 'text' \(the first: .*rows.jsonl' "
        r"line 2, columns body\): more than data.max_skipped_fraction=0.01 of them; set data.text_column"
    )
    with pytest.raises(UserError, match=message):
        bad(tmp_path, cache_dir, path=str(tmp_path / "rows.jsonl"), tokenizer="byte")
    with caplog.at_level("WARNING", logger="lightning_gpt.data"):
        folder = bad(
            tmp_path, cache_dir, path=str(tmp_path / "rows.jsonl"), tokenizer="byte", max_skipped_fraction=0.95
        )
    assert folder.meta["documents"] == 300 and "skipped 2,700 of 3,000 rows" in caplog.text
    with pytest.raises(UserError, match="skipped 2,700 of 3,000 rows"):  # the cache is kept, the setting applies
        bad(tmp_path, cache_dir, path=str(tmp_path / "rows.jsonl"), tokenizer="byte", max_skipped_fraction=0.5)


def test_hub_dataset_offline_says_how_to_use_local_files(cache_dir):
    with pytest.raises(UserError, match="data=local data.path="):
        datamodule(cache_dir, tokenizer="gpt2", source="hub", name="Skylion007/openwebtext").prepare_data()
    assert not any(p.name.endswith((".partial", ".tmp")) for p in cache_dir.rglob("*"))


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
        "import lightning_gpt.data.prepare, lightning_gpt.data.shards, lightning_gpt.data.mixture, lightning_gpt.io;"
        "print(sorted(m for m in ('lightning', 'torch', 'lightning_gpt.data.module') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_one_fingerprint_names_what_the_tokens_depend_on(tmp_path):
    """Source (and its files' sizes and times), tokenizer with its settings, split, shard size; not a
    separate validation file's val_fraction, which does not apply."""
    (tmp_path / "a.txt").write_text("text")
    local = Source("local", path=str(tmp_path / "a.txt"))
    prints = {
        fingerprint(local, "gpt2", 0.1),
        fingerprint(local, "char", 0.1),
        fingerprint(local, {"name": "bpe", "vocab_size": 500}, 0.1),
        fingerprint(local, {"name": "bpe", "vocab_size": 4000}, 0.1),
        fingerprint(local, "gpt2", 0.2),
        fingerprint(local, "gpt2", 0.1, shard_tokens=1000),
        fingerprint(Source("local", path=str(tmp_path / "a.txt"), sample_by="line"), "gpt2", 0.1),
    }
    assert len(prints) == 7 and fingerprint(local, "gpt2", 0.1) == fingerprint(local, "gpt2", 0.1)
    hub = Source("hub", name="a/b", val_split="validation")
    assert fingerprint(hub, "gpt2", 0.1) == fingerprint(hub, "gpt2", 0.3)


def test_an_old_cache_is_rebuilt_and_said_so_once(tmp_path, caplog):
    old = tmp_path / "cache" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "tokens.bin").write_bytes(bytes(1000))
    (old / "meta.json").write_text("{}")
    (tmp_path / "a.txt").write_text("some text " * 100)
    with caplog.at_level("WARNING", logger="lightning_gpt.data"):
        for tokenizer in ("byte", "gpt2"):
            prepare_tokens(Source("local", path=str(tmp_path / "a.txt")), tokenizer, 0.1, str(tmp_path / "cache"))
    assert caplog.text.count("token caches of an earlier format (tokens.bin, 0 MB) that are no longer read") == 1
    assert (old / "tokens.bin").read_bytes() == bytes(1000)  # not ours to delete


def test_row_counts_are_kept_per_split(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n{"text": null}\n{"x": 1}\n{"text": " "}\n')
    counts = RowCounts()
    assert [p for p, _ in stream(Source("local", path=str(tmp_path / "a.jsonl")), "train", 100, counts)] == ["a"]
    assert counts.to_dict() == {"documents": 4, "skipped": 1, "empty": 2}


# ---------------------------------------------------------------------------------------------------
# The cache's faults (test_reliability.py's cases, for the token shards)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _randomize(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _flip_a_token(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # past the header: only the checksum sees it
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("shard_00000.bin", _truncate),
        ("shard_00000.bin", _randomize),
        ("shard_00000.bin", _zero),
        ("shard_00000.bin", _flip_a_token),
        ("docs_00000.idx", _zero),
        ("manifest.json", _truncate),
    ],
)
def test_a_damaged_token_cache_is_detected_and_rebuilt(tmp_path, caplog, file, damage):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text()[:20_000])
    folder = prepare_tokens(Source("local", path=str(corpus)), "char", 0.1, str(tmp_path / "cache"))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    damage(folder / file)
    with caplog.at_level("WARNING", logger="lightning_gpt.data"):
        assert prepare_tokens(Source("local", path=str(corpus)), "char", 0.1, str(tmp_path / "cache")) == folder
    assert f"the token cache {folder} is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


@pytest.mark.slow
def test_tokenizing_writes_nothing_outside_the_cache_folder(tmp_path):
    """Local files are read by lightning_gpt itself: no Arrow copy in Hugging Face's cache, nothing beside."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i} of the corpus"}) + "\n" for i in range(500)))
    hf = tmp_path / "hf"
    code = (
        "from lightning_gpt.data.cache import prepare_tokens; from lightning_gpt.data.sources import Source;"
        f"prepare_tokens(Source('local', path={str(corpus)!r}), 'gpt2', 0.1, {str(tmp_path / 'cache')!r})"
    )
    env = {**os.environ, "HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p for p in hf.rglob("*") if p.is_file()] == []
    [folder] = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == [
        "docs_00000.idx",
        "manifest.json",
        "shard_00000.bin",
        "tokenizer.json",
    ]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([folder.name, folder.name + ".lock"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "corpus.jsonl"]


def test_the_char_vocabulary_holds_the_document_separator(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"row {i} has no newline"}) + "\n" for i in range(50)))
    folder = prepare_tokens(Source("local", path=str(jsonl)), "char", 0.1, str(tmp_path / "cache"))
    assert "\n" in PreparedFolder(folder).tokenizer.chars
    one_line = tmp_path / "one_line.txt"
    one_line.write_text("a single line of text without an end " * 20)
    for sample_by in ("document", "paragraph", "line"):
        prepare_tokens(Source("local", path=str(one_line), sample_by=sample_by), "char", 0.1, str(tmp_path / "c2"))


def test_null_texts_are_empty_documents_and_non_text_columns_are_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": None if i % 3 else f"text {i}\n"}) + "\n" for i in range(300)))
    folder = PreparedFolder(prepare_tokens(Source("local", path=str(rows)), "char", 0.1, str(tmp_path / "cache")))
    assert folder.num_tokens == sum(len(f"text {i}\n") for i in range(0, 300, 3))
    assert folder.meta["rows"]["train"] == {"documents": 300, "skipped": 0, "empty": 200}  # null is no missing column
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(300)))
    message = r"the column 'text' holds int64 values, not text \(.*numbers.jsonl' line 1\); set data.text_column"
    with pytest.raises(UserError, match=message):
        prepare_tokens(Source("local", path=str(numbers)), "char", 0.1, str(tmp_path / "cache"))


@pytest.mark.slow
def test_a_hub_dataset_is_read_from_hugging_faces_cache_by_the_token_cache(tmp_path):
    """data=hub (not streaming) downloads into Hugging Face's cache, which other runs reuse, as before; here a
    local JSON file through the same path (data.name=json data.data_files=...)."""
    texts = [f"row {i} " * (i % 5 + 1) for i in range(100)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code = (
        "import sys; from lightning_gpt.data.cache import prepare_tokens; from lightning_gpt.data.shards import "
        "PreparedFolder; from lightning_gpt.data.sources import Source;"
        "print(PreparedFolder(prepare_tokens(Source('hub', name='json', data_files=sys.argv[1]), 'byte', 0.1, "
        "sys.argv[2])).tokens().tolist())"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    args = [sys.executable, "-c", code, str(tmp_path / "rows.jsonl"), str(tmp_path / "cache")]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [b for t in texts for b in [*t.encode(), 256]]
    assert any(p.suffix == ".arrow" for p in (tmp_path / "hf").rglob("*"))  # the download, for other runs
