"""lgpt-prepare: tokenize a corpus once into a prepared folder (token shards + manifest) for data=prepared.

lgpt-prepare tokenizer=gpt2 data=local data.path=corpus.txt out_dir=data/corpus-gpt2
lgpt-train tokenizer=gpt2 data=prepared data.path=data/corpus-gpt2

Reads the source as a stream, tokenizes with data.num_proc processes in about memory_mb of text and tokens,
and writes shards of shard_tokens tokens (see lightning_gpt/data/prepare.py for the folder's layout).
Running it again with the same settings finds the folder done, or resumes an interrupted run after its last
complete shard: Ctrl-C, SIGTERM and SIGKILL all keep the complete shards.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from lightning_gpt.apps.launch import launch
from lightning_gpt.errors import UserError


def task(cfg: DictConfig) -> dict[str, Any]:
    import json

    from omegaconf import OmegaConf

    from lightning_gpt.data.prepare import prepare_folder
    from lightning_gpt.data.shards import MANIFEST
    from lightning_gpt.data.sources import source_from_config
    from lightning_gpt.tokenizers import tokenizer_spec

    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data["source"] == "prepared":
        raise UserError("data=prepared is what lgpt-prepare makes; give it a source: data=local, hub or shakespeare")
    if data["source"] == "mixture":
        raise UserError("lgpt-prepare prepares one source: prepare each source of a mixture on its own")
    source = source_from_config(data)
    tokenizer = tokenizer_spec(OmegaConf.to_container(cfg.tokenizer, resolve=True))
    try:
        folder, fresh = prepare_folder(
            source,
            tokenizer,
            cfg.data.val_fraction,
            cfg.out_dir,
            cfg.shard_tokens,
            cfg.data.num_proc,
            cfg.memory_mb,
            max_skipped_fraction=data.get("max_skipped_fraction", 0.01),
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: {cfg.out_dir} keeps its complete shards; run the same command to go on from there",
            file=sys.stderr,
        )
        sys.exit(130)
    manifest = json.loads((folder / MANIFEST).read_text())
    (start, end), total = manifest["splits"]["train"], manifest["num_tokens"]
    status = "prepared" if fresh else "already prepared (same settings)"
    settings = " ".join(
        f"tokenizer.{k}={v}" for k, v in ({"name": tokenizer} if isinstance(tokenizer, str) else tokenizer).items()
    )
    print(
        f"{folder}: {status}: {total:,} {manifest['tokenizer']['name']} tokens in {len(manifest['shards'])} shards "
        f"({end - start:,} train, {total - end:,} val); train with: lgpt-train {settings} data=prepared "
        f"data.path={folder}"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    return launch(task, "prepare", argv, "lgpt-prepare")


if __name__ == "__main__":
    raise SystemExit(main())
