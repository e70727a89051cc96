"""Data: text in, batches of token windows out.

- `sources`: where the text comes from (embedded Shakespeare from `shakespeare`, local files, the hub), read
  as a stream of documents;
- `prepare`: the one tokenization pipeline (worker processes, bounded memory, resumable) into `shards`,
  the one on-disk format (token shards, document indexes, manifest);
- `cache`: the first run's token cache, a shard folder per fingerprint; `mixture`: weighted sources;
- `windows`: training batches (random or bos_aligned packing, document ids, mixtures) and fixed validation
  windows; `streaming`: a hub dataset tokenized on the fly;
- `module`: `GPTDataModule`, the only one that imports Lightning.

`from lightning_gpt.data import GPTDataModule` loads `module` on first use, so code that only tokenizes
(`lightning_gpt.data.cache`, lgpt-prepare and its workers) never pays for torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gpt.data.module import GPTDataModule

__all__ = ["GPTDataModule"]


def __getattr__(name: str) -> Any:
    if name == "GPTDataModule":
        from lightning_gpt.data.module import GPTDataModule

        return GPTDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
