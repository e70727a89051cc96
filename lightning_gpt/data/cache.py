"""The token cache: the first lgpt-train on a corpus tokenizes it once into cache_dir/<fingerprint>/, a
folder of token shards written by the same pipeline and in the same format as lgpt-prepare's out_dir
(data/prepare.py, data/shards.py); later runs with the same settings open it in milliseconds.

The fingerprint (`prepare.fingerprint`) covers format, source (with its files' sizes and times), tokenizer
with its settings, split and shard size. One process tokenizes while the others wait on
`<fingerprint>.lock` beside the folder, then read. A damaged folder is rebuilt; a complete one on a
read-only disk is used as it is; a failed or interrupted build leaves nothing half-made (an interrupted one
resumes after its last complete shard). Needs no torch and no Lightning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning_gpt.data.prepare import MEMORY_MB, SHARD_TOKENS, cores, fingerprint, prepare_folder
from lightning_gpt.data.shards import MANIFEST, PreparedFolder
from lightning_gpt.data.sources import Source, size_of
from lightning_gpt.errors import UserError
from lightning_gpt.io import is_disk_full

log = logging.getLogger(__name__)
TokenCache = PreparedFolder  # what a cache folder opens as (the name earlier code used)
_warned_old: set[Path] = set()

__all__ = ["TokenCache", "fingerprint", "prepare_tokens"]


def default_processes(source: Source) -> int:
    """One process per core and per 100 MB of text: on less, more processes cost more than they save."""
    size = size_of(source)
    return cores() if size is None else max(1, min(cores(), 1 + size // 100_000_000))


def prepare_tokens(
    source: Source,
    tokenizer_name: str | dict[str, Any],
    val_fraction: float,
    cache_dir: str,
    num_proc: int | None = None,
    *,
    max_skipped_fraction: float = 1.0,
) -> Path:
    """Tokenize the source into cache_dir/<fingerprint>/ unless it is already there, intact; return that
    folder (open it with `PreparedFolder(folder, checksums=False)`: it was just checked).

    `max_skipped_fraction` refuses a source with too many rows lacking the text column while it is read
    (the data module checks an existing folder's counts against the run's setting when it opens it)."""
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
    if not os.access(root, os.W_OK):
        if (folder / MANIFEST).exists():
            try:
                PreparedFolder(folder)  # complete and intact: reading needs no lock
                return folder
            except UserError:
                pass
        raise UserError(
            f"the data cache {root} is not writable (read-only or no permission) and holds no intact copy of this "
            "corpus; set LGPT_CACHE_DIR (or paths.cache_dir) to a writable folder"
        )
    _note_old_caches(root)
    try:
        prepare_folder(
            source,
            tokenizer_name,
            val_fraction,
            folder,
            SHARD_TOKENS,
            num_proc or default_processes(source),
            MEMORY_MB,
            max_skipped_fraction=max_skipped_fraction,
            lock=root / f"{folder.name}.lock",
            keep_on_error=False,
            what="token cache",
            owned=True,
            hub_streaming=False,
        )
    except UserError as e:
        if is_disk_full(e):
            raise UserError(
                f"no space left in the data cache {root} while tokenizing ({is_disk_full(e).strerror}); free "
                "space or set LGPT_CACHE_DIR (or paths.cache_dir) to a larger disk"
            ) from e
        raise
    return folder


def _note_old_caches(root: Path) -> None:
    """Caches of the format before shards (tokens.bin + meta.json) are never read: say so once."""
    if root in _warned_old:
        return
    _warned_old.add(root)
    old = [p for p in root.iterdir() if (p / "tokens.bin").is_file() and (p / "meta.json").is_file()]
    if old:
        size = sum((p / "tokens.bin").stat().st_size for p in old)
        log.warning(
            f"the data cache {root} holds {len(old)} token caches of an earlier format (tokens.bin, "
            f"{size / 1e6:,.0f} MB) that are no longer read: corpora are tokenized again into token shards; "
            f"delete those folders to free the space"
        )
