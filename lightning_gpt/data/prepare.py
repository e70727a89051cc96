"""Prepared folders: a corpus tokenized once, by worker processes and in bounded memory, into token shards.

A prepared folder (lgpt-prepare's out_dir) holds the token shards (data/shards.py: their format, and how
data=prepared reads them), tokenizer.json (the tokenizer as checkpoints store it) and manifest.json, written
last: the tokenizer and its fingerprint, the shards with their token counts and CRC-32s, the number of
documents, and the train/validation split as token ranges of the stream.

The source is read as a stream of pieces (`sources.stream`): a long document is cut where no token spans
the cut, so its tokens are those of the whole text and one huge file keeps every core busy. A pool of
processes encodes batches of pieces; at most 2 batches per process are in flight, each sized from
`memory_mb` (at most 1 M characters), so memory does not grow with the corpus. Shards are written under
`.partial` names and renamed when complete. Needs no torch and no Lightning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gpt.data.cache import fingerprint
from lightning_gpt.data.shards import FORMAT, HEADER_BYTES, MANIFEST, VERSION, ShardWriter, damage, token_dtype
from lightning_gpt.data.sources import Source, has_val_source, stream
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, fits_on_corpus, tokenizer_from_dict

log = logging.getLogger(__name__)

MARKER = ".lgpt-prepare"  # present while a prepare runs: a folder with it and no manifest was interrupted
PROGRESS = "progress.json"  # where an interrupted run resumes: rewritten as each shard is completed
_OURS = re.compile(r"shard_\d{5}\.bin(\.partial)?|(tokenizer|manifest|progress)\.json(\.tmp)?|\.lgpt-prepare|\.lock")


def tokenizer_fingerprint(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Encoding in worker processes

_worker_tokenizer: Tokenizer | None = None


def _start_worker(spec: dict[str, Any]) -> None:
    """Forked workers inherit the parent's tokenizer; spawned ones rebuild it from its dict."""
    global _worker_tokenizer
    if _worker_tokenizer is None or _worker_tokenizer.to_dict() != spec:
        _worker_tokenizer = tokenizer_from_dict(spec)


def _encode(batch: list[tuple[str, bool]], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """A batch of pieces as one token array (documents ended as `encode_documents` ends them), and the number
    of documents it ends. Arrays cross process boundaries at 2 or 4 bytes a token, lists of ints at 36."""
    tokenizer = _worker_tokenizer
    ends = [i for i, (_, last) in enumerate(batch) if last]
    ids: list[Any] = [None] * len(batch)
    for i, doc in zip(ends, tokenizer.encode_documents([batch[i][0] for i in ends])):
        ids[i] = np.asarray(doc, dtype=dtype)
    for i, (text, last) in enumerate(batch):
        if not last:  # a piece of a long document
            ids[i] = tokenizer.encode_array(text, dtype)
    return (np.concatenate(ids) if ids else np.empty(0, dtype)), len(ends)


def _batches(pieces: Iterable[tuple[str, bool]], batch_chars: int) -> Iterator[list[tuple[str, bool]]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_stream(
    batches: Iterable[list[tuple[str, bool]]], tokenizer: Tokenizer, dtype: np.dtype, num_proc: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Each batch's tokens, in order, encoded by num_proc processes with at most 2 batches per process in
    flight (Pool.imap would read the whole source ahead into its queue)."""
    global _worker_tokenizer
    _worker_tokenizer = tokenizer
    if num_proc <= 1:
        yield from (_encode(batch, dtype) for batch in batches)
        return
    with multiprocessing.Pool(num_proc, initializer=_start_worker, initargs=(tokenizer.to_dict(),)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode, (batch, dtype)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------------------------------------------
# lgpt-prepare


def settings(source: Source, tokenizer: str | dict[str, Any], val_fraction: float, shard_tokens: int) -> str:
    """What the folder's tokens depend on (source files with sizes and times, tokenizer, split, shard size)."""
    spec = {"format": VERSION, "tokens": fingerprint(source, tokenizer, val_fraction), "shard_tokens": shard_tokens}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _state(out: Path, wanted: str) -> str:
    """'new' (absent or empty), 'done' (prepared with these settings, intact), 'ours' (interrupted, or
    damaged: ours to clean up); a user's folder or one prepared with other settings is refused."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir {out} is a file; give a folder (new, empty, or one lgpt-prepare wrote)")
    if not out.exists() or all(p.name == ".lock" for p in out.iterdir()):
        return "new"
    if (out / MANIFEST).is_file():
        try:
            manifest = json.loads((out / MANIFEST).read_text())
            if manifest.get("format") != FORMAT:
                raise ValueError
        except ValueError:
            raise UserError(
                f"out_dir {out} holds a manifest.json that lgpt-prepare did not write; choose another out_dir"
            ) from None
        if manifest.get("settings") != wanted:
            raise UserError(
                f"out_dir {out} holds a corpus prepared with other settings ({manifest['tokenizer']['name']} "
                f"tokens of {describe_source(manifest['source'])}); choose another out_dir, or delete that one "
                "to prepare it again"
            )
        return "done" if damage(out, manifest) is None else "ours"
    if (out / MARKER).is_file():
        return "ours"
    raise UserError(
        f"out_dir {out} is not empty and is not a prepared folder; choose a new or empty folder "
        "(lgpt-prepare never writes into a folder of yours)"
    )


def describe_source(source: dict[str, Any]) -> str:
    return {"local": source.get("path"), "hub": source.get("name")}.get(source["kind"]) or source["kind"]


def prepare_folder(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    out_dir: str,
    shard_tokens: int,
    num_proc: int | None,
    memory_mb: int,
) -> tuple[Path, bool]:
    """Tokenize the source into out_dir; return (the folder, whether it was prepared now). A folder already
    prepared with the same settings is left as it is; an interrupted one (ours) resumes after its last complete
    shard, or is cleaned and redone if it cannot (other settings, damaged shards)."""
    from filelock import FileLock

    if shard_tokens < 1 or memory_mb < 16:
        raise UserError(f"shard_tokens must be >= 1 and memory_mb >= 16, got {shard_tokens} and {memory_mb}")
    if not has_val_source(source) and not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out_dir).expanduser().resolve()
    wanted = settings(source, tokenizer_name, val_fraction, shard_tokens)
    if _state(out, wanted) == "done":
        return out, False
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out / ".lock")):  # two launches into one folder: the second finds the first's result
            if _state(out, wanted) == "done":
                return out, False
            progress = _progress(out, wanted)  # an interrupted run with these settings: resume it
            keep = [".lock", MARKER] + ([PROGRESS, *(s["file"] for s in progress["shards"])] if progress else [])
            _remove_ours(out, keep=tuple(keep))  # its unfinished files, or all of an unresumable one's
            (out / MARKER).write_text(wanted)
            manifest = _build(source, tokenizer_name, val_fraction, out, shard_tokens, num_proc, memory_mb, progress)
            _write_json(out / MANIFEST, {**manifest, "settings": wanted})  # last: points at complete shards only
            (out / MARKER).unlink()
            (out / PROGRESS).unlink(missing_ok=True)
    except BaseException:  # a bad input, Ctrl-C: leave nothing behind (a killed run is cleaned by the next)
        if not (out / MANIFEST).exists():
            _remove_ours(out)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
    return out, True


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """All or nothing: a reader finds the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _progress(out: Path, wanted: str) -> dict[str, Any] | None:
    """An interrupted run's progress, if it had these settings and its shards are intact."""
    try:
        progress = json.loads((out / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    if progress.get("settings") != wanted or damage(out, progress) is not None:
        return None
    return progress


def _remove_ours(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete the files lgpt-prepare writes (by name), nothing else."""
    for path in folder.iterdir():
        if _OURS.fullmatch(path.name) and path.name not in keep:
            path.unlink()


def _build(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    out: Path,
    shard_tokens: int,
    num_proc: int | None,
    memory_mb: int,
    progress: dict[str, Any] | None,
) -> dict[str, Any]:
    """Tokenize into out; `progress` (an interrupted run's) says which shards are done and where to go on."""
    if not num_proc:  # one per core this process may use
        num_proc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # In flight: 2 batches per process, each worth up to 12x its text while being encoded (a list of Python
    # ints) and less in the queues; so batches of memory / (24 x processes) characters, from 64 K to 1 M
    # (larger ones only leave cores idle longer at the end).
    batch_chars = min(max(memory_mb * 2**20 // (24 * num_proc), 2**16), 2**20)
    splits = ["train", "val"] if has_val_source(source) else ["train"]
    done: dict[str, Any] = progress or {"split": splits[0], "batch": 0, "skip": 0, "shards": [], "tokens": {}}
    if progress:  # its batches, so that its position means the same
        batch_chars = progress["batch_chars"]
        tokenizer = tokenizer_from_dict(progress["tokenizer"])
    else:  # a name, settings, or a saved tokenizer (a checkpoint's: encode as it was trained)
        texts = (text for split in splits for text, _ in stream(source, split, batch_chars))
        tokenizer = build_tokenizer(tokenizer_name, texts if fits_on_corpus(tokenizer_name) else None)
    dtype = token_dtype(tokenizer.vocab_size)
    spec = tokenizer.to_dict()
    (out / "tokenizer.json").write_text(json.dumps(spec))
    log.info(
        f"preparing the {source.kind} corpus {describe_source(asdict(source))} with {tokenizer.name} into {out} "
        f"({num_proc} processes, batches of {batch_chars / 2**20:.1f} M characters)"
        + (f"; resuming after shard {len(done['shards']) - 1}" if progress else "")
    )
    tokens: dict[str, int] = dict(done["tokens"])  # of each split, before the batch being written
    documents: dict[str, int] = dict(done.get("documents", {}))
    position: dict[str, Any] = {}

    def save(written: int) -> None:  # a shard is complete: resume after the tokens in it
        _write_json(
            out / PROGRESS,
            {
                "settings": (out / MARKER).read_text(),
                "batch_chars": batch_chars,
                "tokenizer": spec,
                "dtype": dtype.name,
                "shards": writer.shards,
                "split": position["split"],
                "batch": position["batch"],
                "skip": position["skip"] + written,
                "tokens": tokens,
                "documents": documents,
            },
        )

    writer = ShardWriter(out, dtype, shard_tokens, done["shards"], save)
    chars = 0
    start, last_report = time.perf_counter(), time.perf_counter()

    def counted(pieces: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
        nonlocal chars
        for piece in pieces:
            chars += len(piece[0])
            yield piece

    for split in splits[splits.index(done["split"]) :]:
        first, skip = (done["batch"], done["skip"]) if split == done["split"] else (0, 0)
        if first == 0 and skip == 0:
            tokens[split], documents[split] = 0, 0
        batches = _batches(counted(stream(source, split, batch_chars)), batch_chars)
        todo = (batch for i, batch in enumerate(batches) if i >= first)  # done ones are read, not encoded
        for i, (ids, ends) in enumerate(encode_stream(todo, tokenizer, dtype, num_proc), start=first):
            position.update(split=split, batch=i, skip=skip if i == first else 0)
            writer.write(ids[position["skip"] :])
            tokens[split] += len(ids)
            documents[split] += ends
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                seconds = last_report - start
                log.info(f"{chars / 1e6:,.0f} M characters, {sum(tokens.values()):,} tokens, {seconds:.0f} s")
    shards = writer.close()
    total = sum(tokens.values())
    if total == 0:
        raise UserError(f"the {source.kind} corpus {describe_source(asdict(source))} has no text; check data.path")
    split_at = tokens["train"] if len(splits) > 1 else int(total * (1 - val_fraction))
    seconds = time.perf_counter() - start
    log.info(f"{total:,} tokens in {len(shards)} shards, {chars / 1e6:,.1f} M characters in {seconds:.1f} s")
    return {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": spec,
        "tokenizer_fingerprint": tokenizer_fingerprint(spec),
        "dtype": dtype.name,
        "header_bytes": HEADER_BYTES,
        "num_tokens": total,
        "splits": {"train": [0, split_at], "val": [split_at, total]},
        "documents": sum(documents.values()),
        "shard_tokens": shard_tokens,
        "shards": shards,
        "source": asdict(source),
        "val_fraction": val_fraction,
    }
