"""lgpt-prepare and data=prepared: streamed sources, token shards, the manifest, interruptions, bounded
memory, training from a prepared folder (two processes, exact resume), and every bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gpt.data import GPTDataModule
from lightning_gpt.data.cache import TokenCache, prepare_tokens
from lightning_gpt.data.prepare import prepare_folder
from lightning_gpt.data.shards import HEADER_BYTES, PreparedFolder, damage, read_header
from lightning_gpt.data.sources import Source, stream, token_boundary
from lightning_gpt.data.windows import FixedWindows, RandomWindows
from lightning_gpt.errors import UserError
from lightning_gpt.schema import DataConfig, TrainConfig
from lightning_gpt.tokenizers import build_tokenizer

from .support.config import TINY, TINY_SHAKESPEARE
from .support.disks import small_disk
from .support.processes import run_app

SHAKESPEARE = Source("local", path=str(TINY_SHAKESPEARE))


def prepare(source: Source, out: Path, tokenizer: str = "char", **kwargs) -> Path:
    settings = {"val_fraction": 0.1, "shard_tokens": 100_000, "num_proc": 2, "memory_mb": 16, **kwargs}
    return prepare_folder(source, tokenizer, settings.pop("val_fraction"), str(out), **settings)[0]


def stream_tokens(folder: Path) -> np.ndarray:
    """The whole token stream of a prepared folder, read shard by shard past each header."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return np.concatenate(
        [np.fromfile(folder / s["file"], dtype=manifest["dtype"], offset=HEADER_BYTES) for s in manifest["shards"]]
    )


def datamodule(cache_dir: Path, **overrides) -> GPTDataModule:
    data = {**asdict(DataConfig()), "block_size": 32, "batch_size": 4, "seed": TrainConfig.seed}
    return GPTDataModule(**{"tokenizer": "char", **data, "cache_dir": str(cache_dir), **overrides})


@pytest.fixture(scope="module")
def shakespeare_char(tmp_path_factory) -> Path:
    """Tiny Shakespeare, char tokens, in 12 shards of 100,000 tokens."""
    return prepare(SHAKESPEARE, tmp_path_factory.mktemp("prepared") / "shakespeare")


@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
def test_cutting_a_long_document_into_pieces_changes_no_token(encoding):
    """Pieces are cut where no token spans the cut, so a huge file keeps every core busy at no cost."""
    tokenizer = build_tokenizer(encoding)
    pieces = list(stream(SHAKESPEARE, "train", 4096))
    assert len(pieces) > 250 and [last for _, last in pieces].count(True) == 1 and pieces[-1][1]
    text = TINY_SHAKESPEARE.read_text()
    assert "".join(p for p, _ in pieces) == text
    cut = [t for p, _ in pieces for t in tokenizer.encode(p)]
    assert cut == tokenizer.encode(text)
    assert token_boundary("x" * 100, 50) == 50  # no newline, no space between letters: cut where asked


def test_a_prepared_folder_holds_the_token_caches_stream_in_shards(shakespeare_char, cache_dir):
    manifest = json.loads((shakespeare_char / "manifest.json").read_text())
    cache = TokenCache(prepare_tokens(SHAKESPEARE, "char", 0.1, str(cache_dir)))
    assert np.array_equal(stream_tokens(shakespeare_char), cache.tokens())
    assert manifest["splits"] == {"train": [0, 1_003_854], "val": [1_003_854, 1_115_394]}  # nanoGPT's split
    assert [s["tokens"] for s in manifest["shards"]] == [100_000] * 11 + [15_394]
    assert (
        manifest["tokenizer"]
        == cache.meta["tokenizer"]
        == json.loads((shakespeare_char / "tokenizer.json").read_text())
    )
    assert manifest["dtype"] == "uint16" and manifest["documents"] == 1
    for shard in manifest["shards"]:
        assert read_header(shakespeare_char / shard["file"]) == (2, shard["tokens"])
    assert sorted(p.name for p in shakespeare_char.iterdir() if not p.name.startswith(("shard_", "docs_"))) == [
        ".lock",
        "manifest.json",
        "tokenizer.json",
    ]  # no intermediate copies left
    assert [s["documents"] for s in manifest["shards"]] == [1] + [0] * 11  # the file is one document


def test_windows_over_shards_are_the_windows_over_the_single_file(shakespeare_char, cache_dir):
    """The same seeded windows, whether the stream is one file or shards (windows cross shard ends)."""
    prepared = datamodule(cache_dir, source="prepared", path=str(shakespeare_char))
    cached = datamodule(cache_dir, source="local", path=str(TINY_SHAKESPEARE))
    for split in ("train", "val"):
        a, b = prepared.tokens(split), cached.tokens(split)
        assert len(a) == len(b)
        ends = [end - a.start - 10 for end in a.bounds if 10 < end - a.start < len(a)]  # windows across shard ends
        starts = np.array([0, *ends, len(a) - 33])
        assert len(starts) == (3 if split == "val" else 12)
        assert torch.equal(a.windows(starts, 33), b.windows(starts, 33))
    streams = [RandomWindows(dm.tokens("train"), 32, 4, seed=1, rank=0) for dm in (prepared, cached)]
    assert all(torch.equal(x[0], y[0]) for (x, y), _ in zip(zip(*streams), range(20)))
    fixed = [FixedWindows(dm.tokens("val"), 32, 10, 5) for dm in (prepared, cached)]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(*fixed))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_files_stream_without_an_arrow_copy(tmp_path, fmt):
    import datasets

    rows = {"body": [f"document number {i} " * 20 for i in range(30)] + ["  ", None], "id": list(range(32))}
    ds = datasets.Dataset.from_dict(rows)
    path = tmp_path / f"docs.{fmt}"
    {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    before = set(tmp_path.rglob("*"))
    folder = prepare(Source("local", path=str(path), text_column="body"), tmp_path / "out", "byte")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_tokens"] == sum(len(t) + 1 for t in rows["body"][:30])  # blank rows skipped
    assert manifest["documents"] == 30
    assert stream_tokens(folder)[: len(rows["body"][0]) + 1].tolist() == [*rows["body"][0].encode(), 256]
    assert {p for p in tmp_path.rglob("*") if "out" not in p.parts} == before  # nothing written beside the data
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, id\); set data.text_column"):
        prepare(Source("local", path=str(path)), tmp_path / "out2", "byte")


def test_a_separate_validation_source_is_the_validation_split(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(3):
        (tmp_path / "train" / f"{i}.txt").write_text(f"text file {i}\n" * 40)
    (tmp_path / "val.txt").write_text("held out\n" * 20)
    source = Source("local", path=str(tmp_path / "train"), val_path=str(tmp_path / "val.txt"))
    manifest = json.loads((prepare(source, tmp_path / "out", "byte") / "manifest.json").read_text())
    train = 3 * (len("text file 0\n") * 40 + 1)
    assert manifest["splits"] == {"train": [0, train], "val": [train, train + len("held out\n") * 20 + 1]}
    assert manifest["documents"] == 4


def test_uint32_shards_for_large_vocabularies(tmp_path):
    (tmp_path / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 50)
    folder = prepare(Source("local", path=str(tmp_path / "a.txt")), tmp_path / "out", "cl100k_base")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and read_header(folder / "shard_00000.bin")[0] == 4
    assert stream_tokens(folder).tolist() == [
        *build_tokenizer("cl100k_base").encode((tmp_path / "a.txt").read_text()),
        100257,
    ]


def test_bad_inputs_are_refused_and_nothing_of_the_users_is_touched(tmp_path, shakespeare_char, cache_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not empty and is not a prepared folder"):
        prepare(SHAKESPEARE, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="holds a corpus prepared with other settings"):
        prepare(SHAKESPEARE, shakespeare_char, "byte")
    with pytest.raises(UserError, match="matches no files"):
        prepare(Source("local", path=str(tmp_path / "nope.txt")), tmp_path / "out")
    with pytest.raises(UserError, match="has no text"):
        (tmp_path / "blank.txt").write_text(" \n\n ")
        prepare(Source("local", path=str(tmp_path / "blank.txt")), tmp_path / "out")
    with pytest.raises(UserError, match="data=local data.path="):  # offline: the hub says how to use local files
        prepare(Source("hub", name="Skylion007/openwebtext"), tmp_path / "hub", "gpt2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hub").exists()  # a failed prepare leaves nothing
    with pytest.raises(UserError, match="holds no manifest.json: it is no prepared folder"):
        datamodule(cache_dir, source="prepared", path=str(mine)).load_cache()
    with pytest.raises(UserError, match="does not exist"):
        datamodule(cache_dir, source="prepared", path=str(tmp_path / "nowhere")).load_cache()
    refused = (
        "holds char tokens, but the run asks for the gpt2 tokenizer; use a folder prepared with tokenizer.name=gpt2"
    )
    with pytest.raises(UserError, match=refused + ", or train with tokenizer.name=char to read this one"):
        datamodule(cache_dir, source="prepared", path=str(shakespeare_char), tokenizer="gpt2").load_cache()
    other_chars = {"name": "char", "chars": "abc"}  # a checkpoint's tokenizer with another vocabulary
    with pytest.raises(UserError, match=r"holds char tokens of another vocabulary than the model.s .* data=local"):
        datamodule(cache_dir, source="prepared", path=str(shakespeare_char), tokenizer=other_chars).load_cache()


@pytest.mark.slow
def test_the_app_gives_one_line_errors(tmp_path):
    # A fresh interpreter: lgpt-prepare imports no torch, so it starts faster than a warm start's server.
    done = run_app("lightning_gpt.apps.prepare", "data=local", f"data.path={TINY_SHAKESPEARE}")
    assert (
        done.returncode == 2 and done.stderr == "error: 'out_dir' needs a value: add out_dir=... to the command line\n"
    )
    done = run_app("lightning_gpt.apps.prepare", f"out_dir={tmp_path / 'x'}", "data=prepared", f"data.path={tmp_path}")
    assert done.returncode == 2 and "data=prepared is what lgpt-prepare makes" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_killed_prepare_resumes_after_its_last_complete_shard(tmp_path):
    """SIGKILL mid-way (shards written, no manifest), then the same command: it keeps the complete shards,
    goes on from there, and ends with exactly the folder of an uninterrupted run."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text() * 8)
    args = ["tokenizer=gpt2", "data=local", f"data.path={corpus}", "shard_tokens=50000", "memory_mb=16"]
    whole = run_app("lightning_gpt.apps.prepare", *args, f"out_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lightning_gpt.apps.prepare", *args, f"out_dir={out}"]
    killed = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    while not (out / "shard_00003.bin").exists() and killed.poll() is None:
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)  # the app and its worker processes
    killed.wait()
    assert not (out / "manifest.json").exists() and (out / ".lgpt-prepare").exists()
    with pytest.raises(UserError, match="holds no manifest.json"):
        PreparedFolder(out)  # a half-prepared folder is never read
    kept = {f"shard_0000{i}.bin": os.stat(out / f"shard_0000{i}.bin").st_mtime_ns for i in range(3)}
    again = run_app("lightning_gpt.apps.prepare", *args, f"out_dir={out}")
    assert again.returncode == 0, again.stderr
    assert "; resuming after shard " in again.stdout
    assert all(os.stat(out / name).st_mtime_ns == mtime for name, mtime in kept.items())  # not written again
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "whole", out))
    assert a["shards"] == b["shards"] and len(a["shards"]) > 4 and a["splits"] == b["splits"]
    assert a["documents"] == b["documents"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert all((out / s["file"]).read_bytes() == (tmp_path / "whole" / s["file"]).read_bytes() for s in a["shards"])


@pytest.mark.slow
def test_memory_stays_bounded_as_the_corpus_grows(tmp_path):
    """Peak memory of the app and its workers together: 8x the corpus, about the same memory."""
    from benchmarks.prepare import peak_rss_mb

    text = TINY_SHAKESPEARE.read_text()
    peaks = []
    for copies in (4, 32):
        corpus = tmp_path / f"corpus{copies}.txt"
        corpus.write_text(text * copies)  # 4.5 and 36 MB
        args = ["tokenizer=byte", "data=local", f"data.path={corpus}", f"out_dir={tmp_path / str(copies)}"]
        command = [sys.executable, "-m", "lightning_gpt.apps.prepare", *args, "memory_mb=32", "data.num_proc=2"]
        peak, returncode, _ = peak_rss_mb(command, env={**os.environ})
        assert returncode == 0
        peaks.append(peak)
        corpus.unlink()
    assert peaks[1] < peaks[0] + 40, peaks  # byte tokens: 36 M tokens would be 288 MB as one Python list
    assert peaks[1] < 400, peaks


# ---------------------------------------------------------------------------------------------------
# Training from a prepared folder


def losses(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_a_resume_with_another_number_of_processes_says_what_it_draws(shakespeare_char, cache_dir, caplog):
    import lightning as L

    dm = datamodule(cache_dir, source="prepared", path=str(shakespeare_char))
    dm.load_state_dict({"batches_seen": 4, "world_size": 2})  # saved by a run of two processes
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    with caplog.at_level("WARNING", logger="lightning_gpt.data.module"):
        x, _ = next(iter(dm.train_dataloader()))
    assert "resuming with 1 processes a run saved with 2: each process continues its own stream" in caplog.text
    assert torch.equal(x, RandomWindows(dm.tokens("train"), 32, 4, seed=TrainConfig.seed, rank=0).batch(4)[0])


@pytest.mark.slow
def test_the_ddp_preset_trains_from_a_prepared_folder_and_resumes_exactly(tmp_path, shakespeare_char, cache_dir):
    """trainer=ddp on two CPU processes, 3 steps, then a resume to 6 in the same folder: every batch of each
    process is the one its seeded stream gives at that step, as in an uninterrupted run (test_resume shows
    that weights, optimizer and RNG resume); gradients are clipped and the global batch counts both."""
    run = tmp_path / "run"
    common = [
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data=prepared",
        f"data.path={shakespeare_char}",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run}",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=3",
        "+callbacks.record._target_=tests.support.callbacks.RecordBatches",
        "+callbacks.grad_norms._target_=tests.support.callbacks.RecordGradNorm",
    ]
    for overrides in (["trainer.max_steps=3"], ["trainer.max_steps=6", f"ckpt_path={run}"]):
        done = run_app("lightning_gpt.apps.train", *common, *overrides)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "LeafSpec" not in done.stdout + done.stderr  # Lightning's _pytree deprecation, in the ranks too
    assert list(losses(run)) == list(range(6))
    norms = [float(line.split()[1]) for line in (run / "grad_norms.txt").read_text().splitlines()]
    assert norms and max(norms) <= 1.0 + 1e-6  # trainer=ddp clips at 1.0
    assert "global_batch_size: 16" in (run / "csv" / "hparams.yaml").read_text()  # 2 processes x 8 sequences
    split = datamodule(cache_dir, source="prepared", path=str(shakespeare_char)).tokens("train")
    seen = {}
    for rank in (0, 1):
        lines = (run / f"batches_rank{rank}.txt").read_text().splitlines()
        seen[rank] = {int(line.split()[0]): [int(t) for t in line.split()[1:]] for line in lines}
        assert sorted(seen[rank]) == list(range(6)) and len(lines) == 6  # each step once, resumed at step 3
        stream = RandomWindows(split, 32, 8, seed=TrainConfig.seed, rank=rank)
        assert all(seen[rank][k] == stream.batch(k)[0].flatten().tolist() for k in range(6))
    assert seen[0][0] != seen[1][0]  # each process draws its own windows
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["GPTDataModule"]
    assert state == {"batches_seen": 6, "world_size": 2}  # the sampler's position, and the processes that drew


@pytest.mark.slow
def test_the_readmes_prepare_commands_run_as_written(tmp_path, cache_dir, capsys, monkeypatch):
    from .support.config import SHARED
    from .test_readme import readme_commands, run_command, tiny

    (tmp_path / "shared").symlink_to(SHARED)  # ../shared/data/... as beside a checkout
    clone = tmp_path / "clone"
    clone.mkdir()
    commands = [c for c in readme_commands() if "lgpt-prepare " in c or "data=prepared" in c]
    assert [c.split()[0] for c in commands] == ["lgpt-prepare", "lgpt-train"]
    monkeypatch.chdir(clone)
    monkeypatch.setenv("LGPT_CACHE_DIR", str(cache_dir))
    for command in (commands[0], tiny(commands[1], 4)):
        code, _, err = run_command(command, capsys)
        assert code == 0, f"{command}\n{err[-3000:]}"
    manifest = json.loads((clone / "prepared" / "shakespeare-gpt2" / "manifest.json").read_text())
    assert manifest["num_tokens"] == 338_026 and manifest["tokenizer"] == {"name": "gpt2"}
    assert len(list((clone / "outputs" / "train" / "runs").glob("*/checkpoints/last.ckpt"))) == 1


def test_a_bpe_learned_while_preparing_is_the_folders_and_a_run_asking_for_bpe_reads_it(tmp_path, cache_dir):
    """tokenizer=bpe trains on the streamed corpus once; the folder keeps it, and a run's `tokenizer=bpe
    tokenizer.vocab_size=N` (settings, not a vocabulary) reads the folder with it."""
    text = TINY_SHAKESPEARE.read_text()[:200_000]
    (tmp_path / "a.txt").write_text(text)
    spec = {"name": "bpe", "vocab_size": 512}
    folder = prepare(Source("local", path=str(tmp_path / "a.txt")), tmp_path / "out", spec)
    manifest = json.loads((folder / "manifest.json").read_text())
    learned = build_tokenizer(manifest["tokenizer"])
    assert manifest["tokenizer"]["name"] == "bpe" and learned.vocab_size == 512
    assert stream_tokens(folder).tolist()[: len(learned.encode(text[:1000]))] == learned.encode(text[:1000])
    data = datamodule(cache_dir, tokenizer=spec, source="prepared", path=str(folder))
    assert data.tokenizer.to_dict() == manifest["tokenizer"]
    with pytest.raises(UserError, match="holds bpe tokens, but the run asks for the char tokenizer"):
        datamodule(cache_dir, tokenizer="char", source="prepared", path=str(folder)).load_cache()


# ---------------------------------------------------------------------------------------------------
# Interruptions, full disks and settings that cannot apply


def _app(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_gpt.apps.prepare", *args]


def _big_corpus(tmp_path: Path, copies: int = 8) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text() * copies)
    return corpus


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_keeps_the_complete_shards_and_the_same_command_resumes(tmp_path, caplog):
    """Ctrl-C deleted the whole out_dir; now it keeps what SIGTERM and SIGKILL keep: the complete shards."""
    corpus = _big_corpus(tmp_path)
    out = tmp_path / "out"
    command = _app("tokenizer=gpt2", "data=local", f"data.path={corpus}", "shard_tokens=50000", "memory_mb=16")
    app = subprocess.Popen([*command, f"out_dir={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "shard_00003.bin").exists(), app)
    app.send_signal(signal.SIGINT)
    _, stderr = app.communicate(timeout=60)
    assert app.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: {out} keeps its complete shards; run the same command to go on from there"
    )
    assert len(list(out.glob("shard_*.bin"))) >= 4 and not (out / "manifest.json").exists()
    # the shards progress.json records (a shard renamed just before the signal, not yet recorded, is redone)
    recorded = [s["file"] for s in json.loads((out / "progress.json").read_text())["shards"]]
    kept = {name: (out / name).stat().st_mtime_ns for name in recorded}
    assert len(kept) >= 3
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]
    source = Source("local", path=str(corpus))
    with caplog.at_level("INFO", logger="lightning_gpt.data"):
        prepare_folder(source, "gpt2", 0.1, str(out), shard_tokens=50_000, num_proc=2, memory_mb=16)
    assert f"resuming after shard {len(kept) - 1}" in caplog.text
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    whole = prepare(source, tmp_path / "whole", "gpt2", shard_tokens=50_000)
    assert np.array_equal(stream_tokens(out), stream_tokens(whole))
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, out))
    assert a["shards"] == b["shards"] and a["documents"] == b["documents"] == 1


@pytest.mark.slow
def test_ctrl_c_on_a_second_launch_waiting_for_the_folder_leaves_the_first_alone(tmp_path):
    """The second launch waits on the lock; interrupted there, it deletes nothing (it used to delete the
    first launch's shards, which then crashed)."""
    corpus = _big_corpus(tmp_path, 16)
    out = tmp_path / "out"
    command = [*_app("tokenizer=gpt2", "data=local", f"data.path={corpus}", "shard_tokens=50000"), f"out_dir={out}"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "shard_00001.bin").exists(), first)
    first.send_signal(signal.SIGSTOP)  # paused holding the lock, so the second must wait however slow it starts
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def waiting() -> bool:  # the second has opened the lock file (and blocks on it)
        fds = Path(f"/proc/{second.pid}/fd")
        return any(os.path.realpath(fd) == str(out / ".lock") for fd in fds.iterdir() if fd.is_symlink())

    _wait_for(waiting, second)
    second.send_signal(signal.SIGINT)
    second.communicate(timeout=60)
    assert second.returncode == 130
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert PreparedFolder(out).num_tokens == manifest["num_tokens"] > 16 * 300_000


def test_a_full_disk_is_one_line_and_keeps_the_complete_shards(tmp_path):
    """A real full disk (a 1.5 MB tmpfs): ENOSPC has no file name, and escaped as a traceback."""
    with small_disk(tmp_path / "disk", "1500k") as disk:
        source = Source("local", path=str(_big_corpus(tmp_path)))
        message = r"^no space left in out_dir .*/out while tokenizing \(No space left on device\); its complete shards"
        with pytest.raises(UserError, match=message):
            prepare(source, disk / "out", "gpt2", shard_tokens=100_000)
        progress = json.loads((disk / "out" / "progress.json").read_text())
        assert len(progress["shards"]) >= 3
        assert damage(disk / "out", progress, checksums=True) is None  # the complete shards are whole
        assert not [p.name for p in (disk / "out").iterdir() if p.name.endswith((".partial", ".tmp"))]


def test_an_unwritable_out_dir_names_out_dir(tmp_path, capsys):
    """lgpt-prepare has no paths.log_dir to suggest."""
    from lightning_gpt.apps.prepare import main

    (tmp_path / "a_file").write_text("")
    assert main(["data=local", f"data.path={TINY_SHAKESPEARE}", f"out_dir={tmp_path / 'a_file' / 'out'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: cannot create out_dir .*a_file/out \(Not a directory\); choose a writ", error)


def test_a_tokenizer_setting_that_cannot_apply_is_refused(tmp_path, cache_dir):
    """A folder prepared with tokenizer.vocab_size=500 trained a 500-token model under vocab_size=4000."""
    (tmp_path / "a.txt").write_text(TINY_SHAKESPEARE.read_text()[:100_000])
    folder = prepare(
        Source("local", path=str(tmp_path / "a.txt")), tmp_path / "out", {"name": "bpe", "vocab_size": 500}
    )
    asked = {"name": "bpe", "vocab_size": 4000}
    message = (
        r"holds bpe tokens learned with tokenizer.vocab_size=500, but the run asks for tokenizer.vocab_size=4000; "
        r"train with tokenizer.vocab_size=500 to read this folder"
    )
    with pytest.raises(UserError, match=message):
        datamodule(cache_dir, tokenizer=asked, source="prepared", path=str(folder)).load_cache()
    same = datamodule(cache_dir, tokenizer={"name": "bpe", "vocab_size": 500}, source="prepared", path=str(folder))
    assert same.tokenizer.vocab_size == 500


def test_documents_are_indexed_per_shard_and_may_span_shards(tmp_path):
    """Every document start is in its shard's index; a document longer than a whole shard is fine."""
    texts = ["short one", "x" * 2500, "a middle one " * 20, "y" * 1000, "end"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    folder = prepare(Source("local", path=str(tmp_path / "docs.jsonl")), tmp_path / "out", "byte", shard_tokens=1000)
    lengths = [len(t) + 1 for t in texts]  # byte tokens and end-of-text
    starts = np.cumsum([0, *lengths[:-1]])
    opened = PreparedFolder(folder)
    assert opened.doc_starts().tolist() == starts.tolist()
    tokens = stream_tokens(folder)
    assert all(tokens[s - 1] == 256 for s in starts[1:])  # each follows an end-of-text
    for i, shard in enumerate(opened.meta["shards"]):
        mine = [s for s in starts if i * 1000 <= s < (i + 1) * 1000]
        assert shard["documents"] == len(mine) and shard["docs"] == f"docs_{i:05d}.idx"
    assert [s["documents"] for s in opened.meta["shards"]] == [2, 0, 2, 1]  # 3,777 tokens in 4 shards


def test_rows_without_the_text_column_are_refused_by_lgpt_prepare_too(tmp_path):
    rows = [{"text": "kept"} if i % 10 == 0 else {"body": "lost"} for i in range(3000)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="skipped 2,700 of 3,000 rows .* more than data.max_skipped_fraction=0.01"):
        prepare(Source("local", path=str(tmp_path / "rows.jsonl")), tmp_path / "out", "byte")
    assert not (tmp_path / "out").exists()  # nothing complete: this launch's files are gone
    folder = prepare(
        Source("local", path=str(tmp_path / "rows.jsonl")), tmp_path / "out", "byte", max_skipped_fraction=1
    )
    assert json.loads((folder / "manifest.json").read_text())["rows"]["train"]["skipped"] == 2700


@pytest.mark.slow
def test_the_first_runs_tokenization_is_bounded_in_memory_on_one_long_line(tmp_path):
    """A 40 MB file without a newline, char tokenizer: lgpt-train's first run held it whole several times
    over (6.2 GB at 200 MB); now it streams as lgpt-prepare does."""
    from benchmarks.prepare import peak_rss_mb

    line = TINY_SHAKESPEARE.read_text().replace("\n", " ")
    corpus = tmp_path / "one_line.txt"
    corpus.write_text(line * 36)
    code = (
        "import sys; from lightning_gpt.data.cache import prepare_tokens; from lightning_gpt.data.sources import "
        "Source; prepare_tokens(Source('local', path=sys.argv[1]), 'char', 0.1, sys.argv[2])"
    )
    peak, returncode, _ = peak_rss_mb(
        [sys.executable, "-c", code, str(corpus), str(tmp_path / "c")], env={**os.environ}
    )
    assert returncode == 0
    assert peak < 400, peak
