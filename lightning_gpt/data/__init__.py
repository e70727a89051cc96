"""Data: text in, batches of token windows out.

- `sources`: where the text comes from (embedded Shakespeare from `shakespeare`, local files, the hub);
- `cache`: tokenize once into a token file per fingerprint, check it, open it;
- `windows`: the torch datasets drawing training and validation windows from a split;
- `module`: `GPTDataModule`, the only one that imports Lightning.

`from lightning_gpt.data import GPTDataModule` loads `module` on first use, so code that only tokenizes
(`lightning_gpt.data.cache`) never pays for Lightning.
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
