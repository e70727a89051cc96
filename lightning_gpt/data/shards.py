"""Token shards on disk: the file format of a prepared folder, written by lgpt-prepare and read by data=prepared.

A shard is a 64-byte header (magic, version, bytes per token, token count) then the tokens, uint16 (uint32
for vocabularies over 65,536). manifest.json lists the shards with their token counts and CRC-32s, the
tokenizer and the train/validation split (data/prepare.py writes it). Needs no torch and no Lightning.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import fits_on_corpus, tokenizer_from_dict

FORMAT = "lgpt-prepared"
VERSION = 1
MAGIC = b"LGPTTOKS"
HEADER_BYTES = 64  # a multiple of 4, so the tokens after it can be memory-mapped as uint32
_HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per token, tokens
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def read_header(path: Path) -> tuple[int, int]:
    """(bytes per token, tokens) of a shard; ValueError if it is not one."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ValueError(f"{path.name} is shorter than its header")
    magic, version, itemsize, count = _HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"{path.name} is not a version-{VERSION} token shard")
    return itemsize, count


class ShardWriter:
    """Appends token arrays to shards of `shard_tokens` tokens; a shard gets its final name once complete,
    then `on_shard(tokens of the current array written so far)` runs (to record where to resume)."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int, shards: list[dict[str, Any]], on_shard):
        self.folder, self.dtype, self.shard_tokens, self.on_shard = folder, dtype, shard_tokens, on_shard
        self.shards = list(shards)  # complete ones (a resumed run's)
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        written = 0
        while len(ids):
            if self._file is None:
                self._name = f"shard_{len(self.shards):05d}.bin"
                self._file = open(self.folder / f"{self._name}.partial", "wb")
                self._file.write(b"\0" * HEADER_BYTES)  # the header is written when the count is known
                self._count, self._crc = 0, 0
            part, ids = ids[: self.shard_tokens - self._count], ids[self.shard_tokens - self._count :]
            self._file.write(part.data)
            self._crc = zlib.crc32(part.data, self._crc)
            self._count += len(part)
            written += len(part)
            if self._count == self.shard_tokens:
                self._finish()
                self.on_shard(written)

    def _finish(self) -> None:
        f = self._file
        f.seek(0)
        f.write(_HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self._count))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self.folder / f"{self._name}.partial", self.folder / self._name)
        self.shards.append({"file": self._name, "tokens": self._count, "crc32": self._crc})
        self._file = None

    def close(self) -> list[dict[str, Any]]:
        if self._file is not None:
            self._finish()
        return self.shards


def damage(folder: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a prepared folder's shards (None: nothing). Checks names, sizes and headers; not
    the CRC-32s (reading every shard at each start would cost minutes on a large corpus)."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        try:
            size, (bytes_per_token, count) = path.stat().st_size, read_header(path)
        except (OSError, ValueError) as e:
            return f"{shard['file']}: {e}"
        if (bytes_per_token, count) != (itemsize, shard["tokens"]) or size != HEADER_BYTES + count * itemsize:
            return f"{shard['file']} holds {size:,} bytes, the manifest says {shard['tokens']:,} tokens"
    return None


class PreparedFolder:
    """A prepared folder opened read-only: what the data module reads in place of the token cache."""

    def __init__(self, path: str | None):
        if not path:
            raise UserError("data=prepared needs the folder: data.path=<an out_dir of lgpt-prepare>")
        self.folder = Path(path).expanduser()
        if not (self.folder / MANIFEST).is_file():
            what = "does not exist" if not self.folder.exists() else "holds no manifest.json"
            raise UserError(
                f"data.path {self.folder} {what}: it is no prepared folder (or its lgpt-prepare did not finish); "
                f"make one with lgpt-prepare <the same tokenizer= and data= settings> out_dir={self.folder}"
            )
        self.meta = json.loads((self.folder / MANIFEST).read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise UserError(f"{self.folder / MANIFEST} is not a version-{VERSION} manifest of lgpt-prepare")
        if problem := damage(self.folder, self.meta):
            raise UserError(f"the prepared folder {self.folder} is damaged ({problem}); run lgpt-prepare again")
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])

    def check_tokenizer(self, wanted: str | dict[str, Any]) -> None:
        """The run's tokenizer must be the one the folder was prepared with: a name or settings (char and bpe
        learn theirs from the corpus: the folder's), or a checkpoint's saved tokenizer."""
        have = self.meta["tokenizer"]
        if isinstance(wanted, dict) and not fits_on_corpus(wanted):  # a trained one (a checkpoint's): exactly it
            if have == wanted:
                return
        elif have["name"] == (wanted["name"] if isinstance(wanted, dict) else wanted):  # learned from this corpus
            return
        name = wanted["name"] if isinstance(wanted, dict) else wanted
        same_name = " (another vocabulary)" if name == have["name"] else ""
        raise UserError(
            f"the prepared folder {self.folder} holds {have['name']} tokens, but the run asks for the {name} "
            f"tokenizer{same_name}; use a folder prepared with tokenizer.name={name}, or train with "
            f"tokenizer.name={have['name']} to read this one"
        )

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    def shards(self) -> list[tuple[Path, int, int]]:
        """(file, byte offset of its first token, tokens) of each shard, in stream order."""
        return [(self.folder / s["file"], HEADER_BYTES, s["tokens"]) for s in self.meta["shards"]]

    def split(self, name: str) -> tuple[int, int]:
        start, end = self.meta["splits"][name]
        return start, end
