"""Weighted mixtures (`data=mixture`): named sources, each a prepared folder, local files or a hub dataset,
with a weight; and the one tokenizer they share.

    lgpt-train tokenizer=gpt2 data=mixture \\
      'data.sources={web: {path: web.jsonl, weight: 0.8}, code: {path: code.jsonl, weight: 0.2}}'

A source takes the keys data=local, hub and prepared take (`source` for its kind, `path`, `val_path`, `name`,
`config_name`, `split`, `val_split`, `revision`, `text_column`, `sample_by`, `data_files`) and `weight`; a
source without `source` is `hub` when it names a dataset (`name`), `prepared` when its path is a prepared
folder, else `local`. Each source is tokenized into its own cache folder (or read where it was prepared).

A tokenizer learned from the corpus (char, bpe) is learned once from all sources together (a prepared
source brings its own, which every other source then uses), and kept in the cache as
`tokenizer-<fingerprint>.json`. Needs no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lightning_gpt.data.prepare import fingerprint
from lightning_gpt.data.shards import MANIFEST
from lightning_gpt.data.sources import Source, has_val_source, source_from_config, stream
from lightning_gpt.errors import UserError
from lightning_gpt.io import atomic_write, folder_lock
from lightning_gpt.tokenizers import build_tokenizer, fits_on_corpus

log = logging.getLogger(__name__)
KINDS = ("local", "hub", "prepared", "embedded")
KEYS = {f.name for f in fields(Source) if f.name != "kind"} | {"source", "weight"}


@dataclass(frozen=True)
class Part:
    """One source of the data: its name (a mixture's key; the kind for a single source), weight and where."""

    name: str
    weight: float
    source: Source  # kind "prepared": path is the folder

    @property
    def prepared(self) -> bool:
        return self.source.kind == "prepared"


def parse_sources(sources: Any) -> list[Part]:
    """`data.sources` as Parts, every mistake one line naming the source and key."""
    if not isinstance(sources, Mapping) or not sources:
        raise UserError(
            "data=mixture needs named sources with weights, e.g. "
            "'data.sources={web: {path: web.jsonl, weight: 0.8}, code: {path: code.jsonl, weight: 0.2}}'"
        )
    parts = []
    for name, spec in sources.items():
        key = f"data.sources.{name}"
        if not isinstance(spec, Mapping):
            raise UserError(f"{key} must be a mapping such as {{path: corpus.jsonl, weight: 0.5}}, got {spec!r}")
        unknown = sorted(set(spec) - KEYS)
        if unknown:
            raise UserError(f"{key}.{unknown[0]} is not a key of a source; use {', '.join(sorted(KEYS))}")
        weight = spec.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise UserError(f"{key}.weight must be a positive number (the source's share of the rows), got {weight!r}")
        kind = spec.get("source") or _kind(spec)
        if kind not in KINDS:
            raise UserError(f"{key}.source must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind in ("local", "prepared") and not spec.get("path"):
            raise UserError(f"{key} needs a path (a file, folder or glob; or a prepared folder)")
        if kind == "hub" and not spec.get("name"):
            raise UserError(f"{key} needs a dataset name: {key}.name=owner/dataset")
        parts.append(Part(str(name), float(weight), source_from_config(spec, kind)))
    return parts


def _kind(spec: Mapping[str, Any]) -> str:
    if spec.get("name"):
        return "hub"
    if spec.get("path") and (Path(spec["path"]).expanduser() / MANIFEST).is_file():
        return "prepared"
    return "local"


@contextlib.contextmanager
def naming(part: Part) -> Iterator[None]:
    """Errors about one source of a mixture say which one."""
    try:
        yield
    except UserError as e:
        raise UserError(f"data.sources.{part.name}: {e}") from e


def _texts(parts: list[Part]) -> Iterator[str]:
    for part in parts:
        splits = ["train", "val"] if has_val_source(part.source) else ["train"]
        with naming(part):
            for split in splits:
                for text, _ in stream(part.source, split, 1 << 20, hub_streaming=False):
                    yield text


def shared_tokenizer(
    parts: list[Part], spec: str | dict[str, Any], cache_dir: str, prepared: dict[str, dict[str, Any]]
) -> str | dict[str, Any]:
    """The tokenizer every source of a mixture is tokenized with: `spec` itself unless it is learned from the
    corpus; then a prepared source's (`prepared`: name -> its saved tokenizer; they must agree) or one
    learned from all sources together, cached under cache_dir."""
    if not fits_on_corpus(spec):
        return spec
    if prepared:
        saved = list(prepared.values())
        if any(s != saved[0] for s in saved):
            raise UserError(
                f"the prepared sources {', '.join(prepared)} hold different {saved[0]['name']} vocabularies; a "
                "mixture needs one tokenizer: prepare them with one, or use a fixed encoding (tokenizer=gpt2)"
            )
        return saved[0]
    prints = []
    for part in parts:
        with naming(part):
            prints.append(fingerprint(part.source, spec, 0.5))
    key = json.dumps([*prints, spec], sort_keys=True, default=str)
    root = Path(cache_dir).expanduser()
    path = root / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with folder_lock(root / f"{path.name}.lock"):
        if path.is_file():
            return json.loads(path.read_text())
        name = spec if isinstance(spec, str) else spec["name"]
        log.info(f"learning the {name} tokenizer from the {len(parts)} sources of the mixture")
        learned = build_tokenizer(spec, _texts(parts)).to_dict()
        atomic_write(path, json.dumps(learned))
    return learned


def describe(parts: list[Part]) -> str:
    return ", ".join(f"{p.name} ({p.weight:g})" for p in parts)


def as_dict(part: Part) -> dict[str, Any]:
    return {"name": part.name, "weight": part.weight, **asdict(part.source)}
