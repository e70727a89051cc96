"""Token shards on disk: the one format of tokenized text, written by lgpt-prepare and by the first
lgpt-train on a corpus (its token cache), read by data=prepared and by the cache alike.

A folder (manifest version 2) holds:

- `shard_00000.bin`, ...: a 64-byte header (magic `LGPTTOKS`, version 1, bytes per token, token count),
  then the tokens, uint16 (uint32 for vocabularies over 65,536). Documents follow one another, each ended
  by the tokenizer's end-of-text token (the char tokenizer, which has none: by a newline);
- `docs_00000.idx`, one per shard: a 64-byte header (magic `LGPTDOCS`, version 1, 8, count), then uint64
  stream offsets (counted from the first token of shard 0) of the documents that start in that shard, so
  finding documents never scans the tokens;
- `tokenizer.json`: the tokenizer, as checkpoints store it;
- `manifest.json`, written last: the tokenizer and the settings it was asked with, each shard's token count
  and CRC-32 (and its index's), documents and rows per split, the train/validation split as token ranges.

Version-1 folders (lgpt-prepare before documents were indexed) are read too, for random windows only.
Needs no torch and no Lightning.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gpt.errors import UserError
from lightning_gpt.io import create_new, fsync_folder, temporary_name
from lightning_gpt.tokenizers import fits_on_corpus, tokenizer_from_dict

FORMAT = "lgpt-prepared"
VERSION = 2  # the manifest's: 2 indexes documents; 1 is read for random windows
MAGIC = b"LGPTTOKS"
DOCS_MAGIC = b"LGPTDOCS"
SHARD_VERSION = 1  # the shard file's own header, unchanged since version 1 of the manifest
HEADER_BYTES = 64  # a multiple of 8, so the tokens (or offsets) after it can be memory-mapped
_HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per item, items
MANIFEST = "manifest.json"
CHECKSUM_BYTES = 1 << 30  # folders up to 1 GiB are checksummed at every start (about half a second)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def read_header(path: Path, magic: bytes = MAGIC) -> tuple[int, int]:
    """(bytes per item, items) of a shard (or, with DOCS_MAGIC, of a document index); ValueError if it is none."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ValueError(f"{path.name} is shorter than its header")
    found, version, itemsize, count = _HEADER.unpack_from(raw)
    if found != magic or version != SHARD_VERSION:
        raise ValueError(f"{path.name} is not a version-{SHARD_VERSION} {'token shard' if magic == MAGIC else 'index'}")
    return itemsize, count


class _Part:
    """One file being written under a temporary name: header space first, the items, then the header."""

    def __init__(self, path: Path, magic: bytes, itemsize: int, created: list[Path]):
        self.path, self.magic, self.itemsize = path, magic, itemsize
        self.tmp = temporary_name(path, ".partial")
        created.append(self.tmp)  # noted first: an interruption between the two leaves nothing behind
        self.file = create_new(self.tmp)
        self.file.write(b"\0" * HEADER_BYTES)  # the header is written when the count is known
        self.count, self.crc = 0, 0

    def write(self, items: np.ndarray) -> None:
        data = items.data if items.flags.c_contiguous else np.ascontiguousarray(items).data
        self.file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.count += len(items)

    def close(self) -> None:
        f = self.file
        f.seek(0)
        f.write(_HEADER.pack(self.magic, SHARD_VERSION, self.itemsize, self.count))
        f.flush()
        os.fsync(f.fileno())
        f.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.path)  # replaces a name, never writes through a link at it

    def abandon(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Appends token arrays to shards of `shard_tokens` tokens, with the index of the documents that start
    in each. A shard gets its final name once complete (its index first), then `on_shard(tokens of the
    current array written so far)` runs (to record where to resume). Every file it creates is appended to
    `created`, so that a failed launch removes exactly its own files."""

    def __init__(
        self,
        folder: Path,
        dtype: np.dtype,
        shard_tokens: int,
        shards: list[dict[str, Any]],
        on_shard: Callable[[int], None],
        created: list[Path],
    ):
        self.folder, self.dtype, self.shard_tokens, self.on_shard = folder, dtype, shard_tokens, on_shard
        self.shards = list(shards)  # complete ones (a resumed run's)
        self.position = sum(s["tokens"] for s in self.shards)  # stream offset of the next token written
        self.created = created
        self._tokens: _Part | None = None
        self._docs: _Part | None = None

    def write(self, ids: np.ndarray, starts: np.ndarray) -> None:
        """Append ids; `starts` are the offsets in ids (ascending) where a document starts."""
        written = 0
        starts = np.asarray(starts, dtype=np.uint64)
        while len(ids):
            if self._tokens is None:
                n = len(self.shards)
                self._tokens = _Part(self.folder / f"shard_{n:05d}.bin", MAGIC, self.dtype.itemsize, self.created)
                self._docs = _Part(self.folder / f"docs_{n:05d}.idx", DOCS_MAGIC, 8, self.created)
            room = self.shard_tokens - self._tokens.count
            part, ids = ids[:room], ids[room:]
            mine = starts[(starts >= written) & (starts < written + len(part))]
            self._docs.write(mine - np.uint64(written) + np.uint64(self.position))
            self._tokens.write(part)
            self.position += len(part)
            written += len(part)
            if self._tokens.count == self.shard_tokens:
                self._finish()
                self.on_shard(written)

    def _finish(self) -> None:
        tokens, docs = self._tokens, self._docs
        tokens.close()
        docs.close()
        docs.commit()
        tokens.commit()
        fsync_folder(self.folder)
        self.created += [docs.path, tokens.path]
        self.shards.append(
            {
                "file": tokens.path.name,
                "tokens": tokens.count,
                "crc32": tokens.crc,
                "docs": docs.path.name,
                "documents": docs.count,
                "docs_crc32": docs.crc,
            }
        )
        self._tokens = self._docs = None

    def close(self) -> list[dict[str, Any]]:
        if self._tokens is not None:
            self._finish()
        return self.shards

    def abandon(self) -> None:
        """Remove the shard being written (a failed or interrupted launch keeps only complete ones)."""
        for part in (self._tokens, self._docs):
            if part is not None:
                part.abandon()
        self._tokens = self._docs = None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def damage(folder: Path, manifest: dict[str, Any], checksums: bool = False) -> str | None:
    """What is wrong with a folder's shards and indexes (None: nothing): names, sizes and headers always;
    the CRC-32s with `checksums` (about 2 GB/s: every start for a small folder, not for a large one)."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for shard in manifest["shards"]:
        files = [(shard["file"], MAGIC, itemsize, shard["tokens"], shard.get("crc32"))]
        if "docs" in shard:
            files.append((shard["docs"], DOCS_MAGIC, 8, shard["documents"], shard.get("docs_crc32")))
        for name, magic, size_each, count, crc in files:
            path = folder / name
            try:
                size, (found_size, found_count) = path.stat().st_size, read_header(path, magic)
            except (OSError, ValueError) as e:
                return f"{name}: {e.strerror if isinstance(e, OSError) else e}"
            if (found_size, found_count) != (size_each, count) or size != HEADER_BYTES + count * size_each:
                return f"{name} holds {size:,} bytes, the manifest says {count:,} items of {size_each}"
            if checksums and crc is not None and _crc32(path) != crc:
                return f"{name} does not match its checksum"
    return None


class PreparedFolder:
    """A folder of token shards opened read-only: an lgpt-prepare out_dir (data=prepared) or a token cache."""

    def __init__(self, path: str | Path | None, checksums: bool | None = None, what: str = "prepared folder"):
        if not path:
            raise UserError("data=prepared needs the folder: data.path=<an out_dir of lgpt-prepare>")
        self.folder = Path(path).expanduser()
        if not (self.folder / MANIFEST).is_file():
            state = "does not exist" if not self.folder.exists() else "holds no manifest.json"
            raise UserError(
                f"data.path {self.folder} {state}: it is no prepared folder (or its lgpt-prepare did not finish); "
                f"make one with lgpt-prepare <the same tokenizer= and data= settings> out_dir={self.folder}"
            )
        try:
            meta = json.loads((self.folder / MANIFEST).read_bytes())
        except (OSError, ValueError):  # not UTF-8 (a UnicodeDecodeError is a ValueError), not JSON
            meta = {}
        self.meta: dict[str, Any] = meta if isinstance(meta, dict) else {}
        if self.meta.get("format") != FORMAT or self.meta.get("version") not in (1, VERSION):
            raise UserError(f"{self.folder / MANIFEST} is not a manifest of lgpt-prepare (version 1 or {VERSION})")
        try:  # a manifest of ours, read as possibly damaged: a key missing or of another type is one line
            if checksums is None:
                checksums = self.num_tokens * np.dtype(self.dtype).itemsize <= CHECKSUM_BYTES
            problem = damage(self.folder, self.meta, checksums)
            self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        except (KeyError, TypeError, ValueError) as e:
            problem = f"its manifest.json is damaged: {type(e).__name__} {e}"
        if problem:
            raise UserError(f"the {what} {self.folder} is damaged ({problem}); run lgpt-prepare again")
        self._doc_starts: np.ndarray | None = None

    def check_tokenizer(self, wanted: str | dict[str, Any]) -> None:
        """The run's tokenizer must be the one the folder was prepared with: a name and settings (char and bpe
        learn theirs from the corpus: the folder's, if it was learned with the same settings), or a
        checkpoint's saved tokenizer (exactly it). A setting that cannot apply is refused, never ignored."""
        have = self.meta["tokenizer"]
        name = wanted["name"] if isinstance(wanted, dict) else wanted
        if isinstance(wanted, dict) and not fits_on_corpus(wanted):  # a trained one (a checkpoint's)
            if have == wanted:
                return
        elif have["name"] == name:  # learned from this corpus, or a fixed encoding
            asked = {"name": wanted} if isinstance(wanted, str) else dict(wanted)
            request = self.meta.get("tokenizer_request")
            prepared = {"name": request} if isinstance(request, str) else request
            if prepared is None:  # version 1: the request was not recorded, compare what was learned
                learned = self.tokenizer.vocab_size
                if asked.get("vocab_size") in (None, learned):
                    return
                prepared = {"name": name, "vocab_size": learned}
            if prepared == asked:
                return
            differ = sorted(k for k in set(asked) | set(prepared) if asked.get(k) != prepared.get(k))
            given = " ".join(f"tokenizer.{k}={prepared.get(k)}" for k in differ)
            raise UserError(
                f"the prepared folder {self.folder} holds {name} tokens learned with {given}, but the run asks for "
                f"{' '.join(f'tokenizer.{k}={asked.get(k)}' for k in differ)}; train with {given} to read this "
                "folder, or prepare it again with the settings you want"
            )
        if name == have["name"]:  # a checkpoint's learned vocabulary (char, bpe), not the folder's
            raise UserError(
                f"the prepared folder {self.folder} holds {name} tokens of another vocabulary than the model's (its "
                f"{name} tokenizer was learned from another corpus), so the ids would mean other text; use a folder "
                "prepared from the model's training corpus, or give the text itself: data=local data.path=..."
            )
        if isinstance(wanted, dict) and not fits_on_corpus(wanted):  # a checkpoint's: its tokenizer cannot change
            raise UserError(
                f"the prepared folder {self.folder} holds {have['name']} tokens, but the model reads {name} tokens "
                f"(the tokenizer saved in its checkpoint); use a folder prepared from the model's training corpus "
                "with that tokenizer, or give the text itself: data=local data.path=..."
            )
        raise UserError(
            f"the prepared folder {self.folder} holds {have['name']} tokens, but the run asks for the {name} "
            f"tokenizer; use a folder prepared with tokenizer.name={name}, or train with "
            f"tokenizer.name={have['name']} to read this one"
        )

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def num_tokens(self) -> int:
        return self.meta["num_tokens"]

    @property
    def version(self) -> int:
        return self.meta["version"]

    def shards(self) -> list[tuple[Path, int, int]]:
        """(file, byte offset of its first token, tokens) of each shard, in stream order."""
        return [(self.folder / s["file"], HEADER_BYTES, s["tokens"]) for s in self.meta["shards"]]

    def split(self, name: str) -> tuple[int, int]:
        start, end = self.meta["splits"][name]
        return start, end

    def doc_starts(self) -> np.ndarray | None:
        """Stream offsets (int64, ascending) where documents start; None for a version-1 folder."""
        if self.version < 2:
            return None
        if self._doc_starts is None:
            parts = [
                np.fromfile(self.folder / s["docs"], dtype="<u8", offset=HEADER_BYTES) for s in self.meta["shards"]
            ]
            self._doc_starts = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._doc_starts

    def tokens(self) -> np.ndarray:
        """The whole token stream (a memory map when it is one shard)."""
        parts = [np.memmap(p, dtype=self.dtype, mode="r", offset=o, shape=(n,)) for p, o, n in self.shards()]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
