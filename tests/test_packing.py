"""Packing (random, bos_aligned), document ids, weighted mixtures with per-source validation and token counts,
and hub datasets streamed at training time: each exact on resume."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_gpt.data import GPTDataModule
from lightning_gpt.data.windows import Batch, FixedWindows, PackedSampler, TrainWindows, WindowSampler
from lightning_gpt.errors import UserError
from lightning_gpt.schema import DataConfig, TrainConfig

from .support.config import TINY, TINY_SHAKESPEARE, compose
from .support.processes import run_app
from .support.runs import read_metrics

EOT = 256  # the byte tokenizer's end-of-text


def datamodule(cache_dir: Path, **overrides) -> GPTDataModule:
    data = {**asdict(DataConfig()), "block_size": 64, "batch_size": 12, "seed": TrainConfig.seed}
    return GPTDataModule(**{"tokenizer": "byte", **data, "cache_dir": str(cache_dir), **overrides})


def documents(n: int, seed: int, low: int = 3, high: int = 150) -> list[str]:
    """Documents of random lengths that say where they begin and end: '<', letters, '>'."""
    rng = np.random.default_rng(seed)
    return [
        "<" + "".join(chr(97 + c) for c in rng.integers(0, 26, size=rng.integers(low, high))) + ">" for _ in range(n)
    ]


def jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def batches(dm: GPTDataModule, count: int) -> list:
    loader = iter(dm.train_dataloader())
    return [next(loader) for _ in range(count)]


def test_random_packing_keeps_todays_batches(cache_dir):
    """data.packing=random (the default) draws exactly what RandomWindows drew: the same numbers, the
    same (x, y) tuples."""
    dm = datamodule(cache_dir, tokenizer="char", source="local", path=str(TINY_SHAKESPEARE))
    split = dm.tokens("train")
    for k, (x, y) in enumerate(batches(dm, 5)):
        rng = np.random.default_rng([TrainConfig.seed, 0, k])  # the previous code, inlined
        starts = rng.integers(0, len(split) - 64, size=12)
        xy = torch.from_numpy(np.stack([np.asarray(split.read(int(s), 65), dtype=np.int64) for s in starts]))
        assert torch.equal(x, xy[:, :-1]) and torch.equal(y, xy[:, 1:])


def test_bos_aligned_rows_start_at_a_document_and_pack_whole_ones_best_fit(tmp_path, cache_dir):
    texts = documents(2000, seed=0, high=60)  # every document fits in a row
    dm = datamodule(cache_dir, source="local", path=str(jsonl(tmp_path / "docs.jsonl", texts)), packing="bos_aligned")
    dm.setup()
    first = [EOT, ord("<")]  # a segment: the end-of-text before a document, then the document
    cropped = 0
    for batch in batches(dm, 20):
        x, y = batch
        assert not isinstance(batch, Batch) and x.shape == y.shape == (12, 64)  # plain (x, y)
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1).tolist()
        for row in rows:
            assert row[:2] == first or row[0] == ord("<")  # the corpus's first document has nothing before it
            cuts = [i for i, t in enumerate(row) if t == EOT and i > 0]
            for a, b in zip([0, *cuts], cuts):  # every segment but the last is whole: it ends with '>'
                assert row[b - 1] == ord(">") and row[a + (row[a] == EOT)] == ord("<")
            cropped += row[-1] != ord(">")
    assert cropped <= 20 * 12  # at most the last segment of each row is cropped


def test_bos_aligned_batches_are_a_pure_function_of_seed_rank_and_step(tmp_path, cache_dir):
    texts = documents(500, seed=1)
    path = str(jsonl(tmp_path / "docs.jsonl", texts))
    dm = datamodule(cache_dir, source="local", path=path, packing="bos_aligned", doc_masking=True)
    split = dm.tokens("train")
    stream = TrainWindows([PackedSampler(split, 64, True)], 12, seed=5, rank=0)
    first = [stream.batch(k) for k in range(6)]
    assert all(isinstance(b, Batch) and b.doc_ids.shape == (12, 64) for b in first)
    again = TrainWindows([PackedSampler(split, 64, True)], 12, seed=5, rank=0, start=3)
    assert torch.equal(next(iter(again)).x, first[3].x)  # resumes at batch 3
    assert not torch.equal(TrainWindows([PackedSampler(split, 64, True)], 12, seed=5, rank=1).batch(0).x, first[0].x)
    workers = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.doc_ids, b.doc_ids) for a, b in zip(workers, first))


def test_bos_aligned_draws_every_part_of_the_corpus_about_as_often_as_random_windows(tmp_path, cache_dir):
    """Pieces are drawn in proportion to their length and every one drawn is packed (only a cropped one's tail
    is left out), so no stretch of the corpus and no length of document is left out: the token's chance of
    being in a row is about the same everywhere (a sampler once drew its rows from the last fifth of the
    corpus only, and never a document shorter than a row)."""
    path = str(jsonl(tmp_path / "docs.jsonl", documents(3000, seed=6, high=200)))  # 4 to 201 bytes, rows of 65
    split = datamodule(cache_dir, source="local", path=path).tokens("train")
    sampler = PackedSampler(split, 64, doc_masking=True)
    hits, several = np.zeros(len(split)), 0
    for k in range(400):
        positions, doc_ids = sampler.layout(np.random.default_rng([0, 0, k]), 12)
        np.add.at(hits, positions, 1)
        several += int((doc_ids[:, -1] > 0).sum())
    rate = hits / hits.mean()
    assert all(0.85 < part.mean() < 1.15 for part in np.array_split(rate, 10)), "a stretch of the corpus left out"
    ends = np.append(split.segments[1:], len(split))
    length = np.repeat(ends - split.segments, ends - split.segments)  # each token's document length
    for low, high in [(0, 65), (65, 130), (130, 300)]:
        assert 0.6 < rate[(length >= low) & (length < high)].mean() < 1.4, (low, high)
    assert several > 0.25 * 400 * 12  # short documents share rows


def test_a_document_longer_than_a_row_continues_in_row_sized_pieces(cache_dir):
    """Tiny Shakespeare is one document: every row is a piece of it starting at a multiple of block + 1."""
    dm = datamodule(cache_dir, tokenizer="char", source="local", path=str(TINY_SHAKESPEARE), packing="bos_aligned")
    split = dm.tokens("train")
    pieces = np.asarray(split.read(0, len(split) // 65 * 65), dtype=np.int64).reshape(-1, 65)
    for x, y in batches(dm, 3):
        for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
            assert (pieces == row).all(axis=1).any(), "a row that is no piece of the document"


def test_document_ids_count_segments_from_each_rows_start(tmp_path, cache_dir):
    """With doc_masking, doc_ids[t] counts the separators (end-of-text) in x[1..t]: the separator starts the
    next document's segment, so the last token of a document predicts the separator, and the separator
    (alone in its segment) predicts the next document's first token. bos_aligned rows also start a new id
    where a piece of a document longer than a row follows another segment (a piece after the first starts
    mid-document, with no separator: it must not see the segment before it either)."""
    path = str(jsonl(tmp_path / "docs.jsonl", documents(300, seed=2)))
    for packing in ("random", "bos_aligned"):
        dm = datamodule(cache_dir, source="local", path=path, packing=packing, doc_masking=True)
        for batch in batches(dm, 5):
            assert isinstance(batch, Batch)
            separators = (batch.x == EOT).long()
            separators[:, 0] = 0
            steps = batch.doc_ids.diff(dim=1, prepend=torch.zeros_like(batch.doc_ids[:, :1]))
            if packing == "random":
                assert torch.equal(steps, separators)
            else:  # every separator starts a segment; any other start is a piece's, after a whole document
                assert ((steps == 0) | (steps == 1)).all() and (steps >= separators).all()
                pieces = (steps == 1) & (separators == 0)
                assert (batch.x[:, :-1][pieces[:, 1:]] == ord(">")).all()  # ... the document before it ended
            boundary = (batch.x == EOT) & (batch.doc_ids > 0)
            assert (batch.y[boundary] == ord("<")).all()  # the separator predicts the next document's start
    fixed = FixedWindows(dm.tokens("val"), 64, 30, 12, doc_masking=True)
    for batch in fixed:
        separators = (batch.x == EOT).long()
        separators[:, 0] = 0
        assert torch.equal(batch.doc_ids, separators.cumsum(dim=1))


def test_packing_and_masking_refuse_a_folder_without_a_document_index(tmp_path, cache_dir):
    from lightning_gpt.data.prepare import prepare_folder
    from lightning_gpt.data.sources import Source

    folder, _ = prepare_folder(Source("local", path=str(TINY_SHAKESPEARE)), "char", 0.1, tmp_path / "v1", 10**6)
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:  # as lgpt-prepare wrote before documents were indexed
        for key in ("docs", "documents", "docs_crc32"):
            shard.pop(key)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    assert len(batches(datamodule(cache_dir, tokenizer="char", source="prepared", path=str(folder)), 1)) == 1
    with pytest.raises(UserError, match=r"manifest version 1\) does not index; prepare it again with lgpt-prepare"):
        datamodule(cache_dir, tokenizer="char", source="prepared", path=str(folder), packing="bos_aligned").setup()


# ---------------------------------------------------------------------------------------------------
# Mixtures


@pytest.fixture
def two_sources(tmp_path) -> dict:
    web = jsonl(tmp_path / "web.jsonl", documents(600, seed=3))  # lower case
    code = jsonl(tmp_path / "code.jsonl", [t.upper() for t in documents(300, seed=4)])  # upper case
    return {"web": {"path": str(web), "weight": 0.8}, "code": {"path": str(code), "weight": 0.2}}


def test_a_mixture_draws_sources_by_weight_and_counts_the_tokens_drawn(cache_dir, two_sources):
    dm = datamodule(cache_dir, source="mixture", sources=two_sources)
    rows = {"web": 0, "code": 0}
    for batch in batches(dm, 400):
        assert isinstance(batch.source, torch.Tensor) and batch.source.shape == (12,)
        for i, name in enumerate(dm.val_sources):
            picked = batch.x[batch.source == i]
            rows[name] += len(picked)
            upper = (picked >= ord("A")) & (picked <= ord("Z"))
            assert not upper.any() if name == "web" else not ((picked >= ord("a")) & (picked <= ord("z"))).any()
        assert dm.on_before_batch_transfer(batch, 0) == (batch.x, batch.y)  # counted, then plain (x, y)
    share = rows["web"] / 4800
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 4800), share  # within sampling error
    assert dm.tokens_drawn == {name: count * 64 for name, count in rows.items()}
    assert dm.state_dict()["tokens_drawn"] == dm.tokens_drawn


def test_validation_is_tagged_per_source_and_the_same_for_any_number_of_processes(cache_dir, two_sources):
    dm = datamodule(cache_dir, source="mixture", sources=two_sources, val_batches=2, batch_size=5)
    whole = {}
    for world in (1, 2, 3):
        seen = {0: [], 1: []}
        for rank in range(world):
            loader = dm.val_dataloader()
            for part in loader.dataset.parts:
                part.rank, part.world_size = rank, world
            for batch in loader:
                assert isinstance(batch, Batch) and batch.source in (0, 1)
                seen[batch.source] += [tuple(r) for r in batch.y.tolist() if r[0] != -1]
        assert all(len(rows) == 10 for rows in seen.values())  # val_batches x batch_size windows per source
        whole.setdefault("rows", {s: sorted(rows) for s, rows in seen.items()})
        assert {s: sorted(rows) for s, rows in seen.items()} == whole["rows"]


def test_a_mixture_with_a_learned_tokenizer_learns_it_from_all_sources(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("abc\n" * 500)
    (tmp_path / "b.txt").write_text("xyz\n" * 500)
    sources = {"a": {"path": str(tmp_path / "a.txt"), "weight": 1}, "b": {"path": str(tmp_path / "b.txt"), "weight": 3}}
    dm = datamodule(tmp_path / "cache", tokenizer="char", source="mixture", sources=sources, block_size=16)
    assert dm.tokenizer.chars == ["\n", "a", "b", "c", "x", "y", "z"]
    assert [f.tokenizer.to_dict() for f in dm.folders] == [dm.tokenizer.to_dict()] * 2
    assert len(list((tmp_path / "cache").glob("tokenizer-*.json"))) == 1


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({}, "data=mixture needs named sources with weights"),
        ({"web": {"path": "a.jsonl", "weight": 0}}, r"data.sources.web.weight must be a positive number .* got 0"),
        ({"web": {"path": "a.jsonl", "weight": -1}}, "data.sources.web.weight must be a positive number"),
        ({"web": {"path": "a.jsonl", "weight": "x"}}, "data.sources.web.weight must be a positive number"),
        ({"web": {"path": "a.jsonl"}}, r"data.sources.web.weight must be a positive number .* got None"),
        ({"web": {"pth": "a.jsonl", "weight": 1}}, "data.sources.web.pth is not a key of a source"),
        ({"web": {"weight": 1}}, "data.sources.web needs a path"),
        ({"web": "a.jsonl"}, "data.sources.web must be a mapping"),
        ({"web": {"path": "nowhere.jsonl", "weight": 1}}, "data.sources.web: data.path 'nowhere.jsonl' matches no"),
    ],
)
def test_a_bad_mixture_is_one_line_and_touches_no_earlier_cache(tmp_path, cache_dir, sources, message):
    cache = tmp_path / "cache"
    good = datamodule(cache, tokenizer="char", source="local", path=str(TINY_SHAKESPEARE))
    good.setup()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(UserError, match=message):
        datamodule(cache, tokenizer="char", source="mixture", sources=sources).setup()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written, nothing lost


def test_a_source_whose_documents_are_all_empty_is_refused(tmp_path, cache_dir, two_sources):
    empty = jsonl(tmp_path / "empty.jsonl", ["", " ", "\n"])
    sources = {**two_sources, "empty": {"path": str(empty), "weight": 0.1}}
    with pytest.raises(UserError, match=r"^data.sources.empty: the local corpus .* has no text: all its 3 documents"):
        datamodule(cache_dir, source="mixture", sources=sources).setup()


def test_a_source_used_up_stops_training_when_the_config_says_so(cache_dir, two_sources, caplog):
    """Half the rows from each: code (half web's size) is drawn as many tokens as it holds first."""
    sources = {name: {**spec, "weight": 1} for name, spec in two_sources.items()}
    dm = datamodule(cache_dir, source="mixture", sources=sources, on_exhausted="stop")
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    dm.setup()
    code_tokens = np.subtract(*reversed(dm.folders[1].split("train")))
    with caplog.at_level("WARNING", logger="lightning_gpt.data"):
        for batch in batches(dm, 1000):
            dm.on_before_batch_transfer(batch, 0)
            if dm.trainer.should_stop:
                break
    assert dm.tokens_drawn["code"] >= code_tokens > dm.tokens_drawn["code"] - 12 * 64
    assert "data.sources.code is used up" in caplog.text and "as data.on_exhausted=stop says" in caplog.text


@pytest.mark.slow
def test_a_mixture_resumes_exactly_from_a_checkpoint(tmp_path, cache_dir, two_sources):
    """Train 6 steps; train 3, save, resume to 6: the same batches, the same tokens counted per source."""
    from lightning_gpt.training.module import GPTLightningModule

    model = {"family": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32, "vocab_size": 257}

    class Record(L.Callback):
        def __init__(self):
            self.x = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.x.append(batch[0].clone())

    def fit(steps: int, ckpt: Path | None = None, save: Path | None = None):
        dm = datamodule(cache_dir, source="mixture", sources=two_sources, block_size=32, batch_size=4)
        optim = {"lr": 1e-3, "warmup_steps": 0, "decay_steps": 6}
        torch.manual_seed(0)
        module = GPTLightningModule(model=model, tokenizer={"name": "byte"}, optim=optim)
        record = Record()
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[record],
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return record.x, dm

    whole, dm_whole = fit(6)
    first, _ = fit(3, save=tmp_path / "three.ckpt")
    rest, dm_rest = fit(6, ckpt=tmp_path / "three.ckpt")
    assert len(whole) == 6 and len(rest) == 3
    assert all(torch.equal(a, b) for a, b in zip(whole, first + rest))
    assert dm_rest.tokens_drawn == dm_whole.tokens_drawn and sum(dm_whole.tokens_drawn.values()) == 6 * 4 * 32
    state = torch.load(tmp_path / "three.ckpt", weights_only=True)["GPTDataModule"]
    assert state["batches_seen"] == 3 and sum(state["tokens_drawn"].values()) == 3 * 4 * 32


# ---------------------------------------------------------------------------------------------------
# Streaming at training time


@pytest.fixture
def streamed(tmp_path) -> tuple[Path, list[str]]:
    texts = [f"document {i}: " + "word " * (i % 17) for i in range(400)]
    return jsonl(tmp_path / "stream.jsonl", texts), texts


def streaming_dm(cache_dir, path: Path, **overrides) -> GPTDataModule:
    """A local JSON file read through the hub path: datasets.load_dataset('json', data_files=..., streaming=True)."""
    settings = {"source": "hub", "name": "json", "data_files": str(path), "streaming": True, "block_size": 16}
    return datamodule(cache_dir, **{**settings, "batch_size": 4, "val_batches": 1, **overrides})


def test_streaming_tokenizes_on_the_fly_and_holds_out_the_first_documents(cache_dir, streamed):
    path, texts = streamed
    dm = streaming_dm(cache_dir, path)
    val = dm.tokens("val")
    encoded = [list(t.encode()) + [EOT] for t in texts]
    held = next(n for n in range(1, len(texts)) if sum(map(len, encoded[:n])) >= 4 * 17)
    assert val.read(0, len(val)).tolist() == sum(encoded[:held], [])
    stream = torch.tensor(sum(encoded[held:], []))
    for k, batch in enumerate(batches(dm, 5)):
        assert isinstance(batch, Batch) and batch.position["role"] == 0
        assert torch.equal(batch.x.flatten(), stream[k * 64 : (k + 1) * 64])
        assert torch.equal(batch.y.flatten(), stream[k * 64 + 1 : (k + 1) * 64 + 1])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumes_exactly_from_its_saved_position(cache_dir, streamed, workers):
    path, _ = streamed
    whole = batches(streaming_dm(cache_dir, path, num_workers=workers), 9)
    dm = streaming_dm(cache_dir, path, num_workers=workers)
    for batch in batches(dm, 5):
        dm.on_before_batch_transfer(batch, 0)  # the training process records each share's position
    state = {**dm.state_dict(), "batches_seen": 5}
    resumed = streaming_dm(cache_dir, path, num_workers=workers)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint stores it (keys as strings)
    assert all(torch.equal(a.x, b.x) for a, b in zip(whole[5:], batches(resumed, 4)))


def test_a_stream_that_ends_stops_training_when_the_config_says_so(cache_dir, tmp_path, caplog):
    path = jsonl(tmp_path / "small.jsonl", ["a few words " * 5] * 30)
    dm = streaming_dm(cache_dir, path, on_exhausted="stop")
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    with caplog.at_level("WARNING", logger="lightning_gpt.data"):
        got = list(dm.train_dataloader())
    assert 0 < len(got) < 30 and dm.trainer.should_stop
    assert "ended (epoch 0, process 0): stopping, as data.on_exhausted=stop says" in caplog.text
    assert list(dm.train_dataloader()) == []  # a new epoch reads nothing more
    repeat = streaming_dm(cache_dir, path)
    assert len(batches(repeat, 3 * len(got))) == 3 * len(got)  # on_exhausted=repeat goes round again


def test_streaming_bad_settings_are_one_line(cache_dir, streamed):
    path, _ = streamed
    with pytest.raises(UserError, match="data.streaming=true cannot learn the char tokenizer"):
        streaming_dm(cache_dir, path, tokenizer="char")
    with pytest.raises(UserError, match="data.packing=bos_aligned draws documents at random, which a stream cannot"):
        streaming_dm(cache_dir, path, packing="bos_aligned")
    with pytest.raises(UserError, match="data.streaming=true streams a hub dataset: use it with data=hub"):
        datamodule(cache_dir, source="local", path=str(path), streaming=True)
    offline = datamodule(cache_dir, tokenizer="gpt2", source="hub", name="Skylion007/openwebtext", streaming=True)
    with pytest.raises(UserError, match=r"^could not load hub dataset 'Skylion007/openwebtext' .* data=local data"):
        offline.val_dataloader()


def test_samplers_refuse_a_split_too_short_for_a_window(cache_dir):
    dm = datamodule(cache_dir, tokenizer="char", source="local", path=str(TINY_SHAKESPEARE))
    with pytest.raises(ValueError, match="holds no window"):
        WindowSampler(dm.tokens("val"), 200_000)


# ---------------------------------------------------------------------------------------------------
# Training on packed rows and mixtures: lgpt-train, lgpt-eval, resumes


def sources_override(sources: dict) -> str:
    """data.sources as a command line spells it: data.sources={web: {path: ..., weight: 0.8}, ...}."""
    inner = ", ".join(f"{name}: {{path: {spec['path']}, weight: {spec['weight']}}}" for name, spec in sources.items())
    return f"data.sources={{{inner}}}"


def snapshot(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_mixture_trains_logging_tokens_and_a_loss_per_source_that_lgpt_eval_reproduces(
    lgpt_train, tmp_path, cache_dir, two_sources, capsys
):
    from lightning_gpt.apps.evaluate import evaluate

    settings = ["data=mixture", sources_override(two_sources), "data.packing=bos_aligned", "data.doc_masking=true"]
    steps = ["trainer.max_steps=40", "trainer.val_check_interval=40", "trainer.log_every_n_steps=10"]
    run = lgpt_train(*TINY, *settings, *steps)
    rows = read_metrics(run)
    drawn = [
        (int(r["step"]), float(r["train/tokens/web"]), float(r["train/tokens/code"]))
        for r in rows
        if r.get("train/tokens/web")
    ]
    assert [step for step, _, _ in drawn] == [9, 19, 29, 39]  # at logging steps
    assert all(web + code == (step + 1) * 8 * 32 for step, web, code in drawn)  # every token of every row, exactly
    share = drawn[-1][1] / (40 * 8 * 32)
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / (40 * 8)), share  # rows drawn by weight: sampling error
    [val] = [r for r in rows if r.get("val/loss")]
    web, code, overall = (float(val[f"val/loss{k}"]) for k in ("/web", "/code", ""))
    assert overall == pytest.approx((web + code) / 2, abs=1e-6)  # as many windows of each: token-weighted = mean

    # lgpt-eval on the same fixed windows (val_batches x batch_size per source), masked as in training
    paths = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'eval'}", f"paths.cache_dir={cache_dir}"]
    args = [f"ckpt_path={run}", *paths, *settings[:2], "data.doc_masking=true", "trainer.accelerator=cpu"]
    result = evaluate(compose("eval", *args, "windows=16", "data.batch_size=8", "trainer.enable_progress_bar=false"))
    assert result["sources"]["web"]["loss"] == pytest.approx(web, abs=1e-5)
    assert result["sources"]["code"]["loss"] == pytest.approx(code, abs=1e-5)
    assert result["loss"] == pytest.approx(overall, abs=1e-5) and result["windows"] == 32
    assert re.search(rf"\nloss \(code\) +{code:.4f}\n", capsys.readouterr().out)
    assert result["sources"]["code"]["bpb"] > 0 and result["bpb"] > 0
    # ... the same per source in two processes: 17 windows a source, the odd one padded there, never repeated
    one = evaluate(compose("eval", *args, "windows=17", "data.batch_size=4", "trainer.enable_progress_bar=false"))
    out = tmp_path / "two.json"
    done = run_app(
        "lightning_gpt.apps.evaluate", *args, "windows=17", "data.batch_size=4", "trainer=ddp_cpu", f"out_file={out}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["devices"] == 2 and two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert all(two["sources"][n]["loss"] == pytest.approx(one["sources"][n]["loss"], abs=1e-6) for n in two_sources)

    # A resume keeps the data settings its batches depend on: another value is one line, and nothing is written
    before = snapshot(tmp_path)
    reweighted = {**two_sources, "web": {**two_sources["web"], "weight": 0.5}}
    for override, message in [
        (sources_override(reweighted), "data.sources.web.weight=0.8, this run has data.sources.web.weight=0.5"),
        ("data.packing=random", "data.packing=bos_aligned, this run has data.packing=random"),
        ("data.doc_masking=false", "data.doc_masking=True, this run has data.doc_masking=False"),
    ]:
        lgpt_train(f"ckpt_path={run}", "trainer.max_steps=50", override, code=2)
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: cannot resume from {run / 'checkpoints'}") and message in err[-1], err
    assert snapshot(tmp_path) == before


def test_document_masking_with_mamba_is_refused_before_anything_is_written(lgpt_train, tmp_path, capsys):
    lgpt_train("model=mamba", "data.doc_masking=true", code=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: data.doc_masking=true keeps documents apart in attention, which the mamba")
    assert not (tmp_path / "run").exists()


KILLED = [
    "model.dropout=0.1",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "callbacks.model_checkpoint.every_n_train_steps=5",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(["data.packing=bos_aligned"], id="bos_aligned"),
        pytest.param(["data.doc_masking=true"], id="random-masked"),
        pytest.param(
            ["data=mixture", "data.packing=bos_aligned", "data.doc_masking=true", "trainer=ddp_cpu"],
            id="mixture-bos_aligned-masked-2-processes",
        ),
    ],
)
def test_a_packed_masked_or_mixed_run_killed_and_resumed_logs_what_an_uninterrupted_one_does(
    tmp_path, cache_dir, two_sources, case
):
    """SIGKILL mid-run, resume from the run folder: every loss, token count and validation loss logged from the
    checkpoint's step on is the uninterrupted run's, bit for bit (weights, optimizer, RNG, the data's position)."""
    from lightning_gpt.apps.train import main

    from .support.processes import kill_group, start_app, wait_for_step
    from .support.runs import saved_step

    if "data=mixture" in case:
        data = [sources_override(two_sources)]
    else:
        data = ["data=local", f"data.path={jsonl(tmp_path / 'docs.jsonl', documents(1500, seed=5))}"]
    processes = "trainer=ddp_cpu" in case  # Lightning starts the second process by running the command again

    def args(run: str, *extra: str) -> list[str]:
        paths = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / run}"]
        return [*TINY, *case, *data, *KILLED, *paths, *extra]

    def train(run: str, *extra: str) -> None:
        if processes:
            done = run_app("lightning_gpt.apps.train", *args(run, *extra))
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            assert main(args(run, *extra)) == 0

    def logged(run: str, since: int) -> dict[tuple[int, str], str]:
        keys = ("train/loss", "train/tokens/", "val/")
        return {
            (int(row["step"]), key): value
            for row in read_metrics(tmp_path / run)
            for key, value in row.items()
            if value and key.startswith(keys) and int(row["step"]) >= since
        }

    train("whole")
    slow = "+callbacks.slow._target_=tests.support.callbacks.Slow"
    proc = start_app("lightning_gpt.apps.train", *args("killed", slow))
    wait_for_step(tmp_path / "killed" / "checkpoints" / "last.ckpt", 5, proc)
    kill_group(proc)
    resumed_from = saved_step(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert 5 <= resumed_from < 20
    train("resumed", f"ckpt_path={tmp_path / 'killed'}")
    expected, got = logged("whole", resumed_from), logged("resumed", resumed_from)
    assert {step for step, _ in got} == set(range(resumed_from, 20))
    assert any(key.startswith("val/") for _, key in got)
    assert got == expected
    if processes:  # tokens drawn by both processes, counted the same in each
        assert float(got[(19, "train/tokens/web")]) + float(got[(19, "train/tokens/code")]) == 20 * 2 * 8 * 32
