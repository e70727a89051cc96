"""Training from a source read as a stream (`data=hub data.streaming=true`): documents are tokenized on the
fly in the loader's workers, nothing is written to disk, and the stream's position is checkpointed.

Each process (rank) and each of its loader workers reads its share of the documents: document i (counted
from the stream's start, after the documents held out for validation) goes to share i mod (processes x
workers). A share's tokens are cut into batches of batch_size rows of block_size tokens, consecutive in the
stream: the inputs of batch k are tokens [k BT, (k+1) BT) of the share and its targets the same shifted by
one, so every token is a target once (nanoGPT's loader over one long stream, or nanochat's). Every batch
carries where its share stands after it (epoch, document, token offset); GPTDataModule keeps the position
of the last batch consumed from each share, and a resumed run continues every share there exactly, with the
same number of processes and loader workers (batch k comes from share k mod workers, whichever worker
starts it).

Validation: the first documents of the validation split (data.val_split), or of the training stream (held
out: training skips them), enough for the fixed validation windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_gpt.data.sources import Source, stream
from lightning_gpt.data.windows import Batch, SplitTokens
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, fits_on_corpus

log = logging.getLogger(__name__)
CHUNK_CHARS = 1 << 18


def check_streamable(tokenizer_spec: str | dict[str, Any], packing: str) -> None:
    if fits_on_corpus(tokenizer_spec):
        name = tokenizer_spec if isinstance(tokenizer_spec, str) else tokenizer_spec["name"]
        raise UserError(
            f"data.streaming=true cannot learn the {name} tokenizer from a corpus it has not read yet; use a fixed "
            "encoding (tokenizer=gpt2, byte, ...), or prepare the data: lgpt-prepare, then data=prepared"
        )
    if packing != "random":
        raise UserError(
            f"data.packing={packing} draws documents at random, which a stream cannot: use data.packing=random "
            "(consecutive windows) with data.streaming=true, or prepare the data (lgpt-prepare, data=prepared)"
        )


def _documents(source: Source, split: str) -> Iterator[list[tuple[str, bool]]]:
    """Each document of a split as its list of pieces."""
    pieces: list[tuple[str, bool]] = []
    for piece in stream(source, split, CHUNK_CHARS, hub_streaming=True):
        pieces.append(piece)
        if piece[1]:
            yield pieces
            pieces = []


def _encode(tokenizer: Tokenizer, pieces: list[tuple[str, bool]]) -> np.ndarray:
    """A document's tokens, ended as `encode_documents` ends it."""
    parts = [tokenizer.encode_array(text, np.dtype(np.int64)) for text, _ in pieces[:-1]]
    parts.append(np.asarray(tokenizer.encode_documents([pieces[-1][0]])[0], dtype=np.int64))
    return np.concatenate(parts)


def held_out(
    source: Source, tokenizer_spec: str | dict[str, Any], tokens_needed: int, from_val_split: bool
) -> tuple[SplitTokens, int]:
    """The validation tokens of a streamed source (the first documents of its validation split, or of its
    training stream) and the number of training documents they take (0 with a validation split)."""
    tokenizer = build_tokenizer(tokenizer_spec)
    parts, starts, count, documents = [], [], 0, 0
    for pieces in _documents(source, "val" if from_val_split else "train"):
        ids = _encode(tokenizer, pieces)
        starts.append(count)
        parts.append(ids)
        count += len(ids)
        documents += 1
        if count >= tokens_needed:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return SplitTokens.from_array(tokens, np.array(starts, dtype=np.int64)), 0 if from_val_split else documents


class StreamingWindows(IterableDataset):
    """Endless (or, with on_exhausted=stop, finite) training batches from a streamed source; see the module."""

    def __init__(
        self,
        source: Source,
        tokenizer_spec: str | dict[str, Any],
        block_size: int,
        batch_size: int,
        rank: int,
        world_size: int,
        doc_masking: bool,
        on_exhausted: str,
        holdout: int = 0,
        batches_seen: int = 0,
        positions: dict[int, dict[str, int]] | None = None,
    ):
        self.source, self.tokenizer_spec = source, tokenizer_spec
        self.block_size, self.batch_size, self.rank, self.world_size = block_size, batch_size, rank, world_size
        self.doc_masking, self.on_exhausted, self.holdout = doc_masking, on_exhausted, holdout
        self.batches_seen, self.positions = batches_seen, dict(positions or {})

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        role = (worker_id + self.batches_seen) % workers  # batch k comes from share k mod workers
        share, shares = self.rank * workers + role, self.world_size * workers
        position = self.positions.get(role, {"epoch": 0, "doc": 0, "offset": 0})
        yield from self._batches(role, share, shares, position)

    def _batches(self, role: int, share: int, shares: int, position: dict[str, int]) -> Iterator[Batch]:
        tokenizer = build_tokenizer(self.tokenizer_spec)
        need = self.batch_size * self.block_size + 1
        # the tokens not yet used: arrays with, for each, (epoch, document, offset of its first token)
        held: list[tuple[np.ndarray, np.ndarray, int, int, int]] = []  # (tokens, separators, epoch, doc, offset)
        available = 0
        epoch = position["epoch"]
        while True:
            n = -1  # this share's documents in this epoch
            for i, pieces in enumerate(_documents(self.source, "train")):
                if i < self.holdout or (i - self.holdout) % shares != share:
                    continue
                n += 1
                if (epoch, n) < (position["epoch"], position["doc"]):
                    continue
                ids = _encode(tokenizer, pieces)
                separators = np.zeros(len(ids), dtype=bool)
                separators[-1] = True  # the token that ends a document begins the next one's segment
                offset = position["offset"] if (epoch, n) == (position["epoch"], position["doc"]) else 0
                held.append((ids[offset:], separators[offset:], epoch, n, offset))
                available += len(ids) - offset
                while available >= need:
                    yield self._batch(held, need, role)
                    available -= need - 1
            if n < 0 and epoch == position["epoch"]:
                raise UserError(
                    f"the stream of {self.source.name or self.source.path!r} has no documents for process "
                    f"{self.rank} (loader worker {role}): it holds fewer documents than processes x data.num_workers"
                )
            if self.on_exhausted == "stop":
                log.warning(
                    f"the stream of {self.source.name or self.source.path!r} ended (epoch {epoch}, process "
                    f"{self.rank}): stopping, as data.on_exhausted=stop says"
                )
                return
            epoch += 1

    def _batch(self, held: list, need: int, role: int) -> Batch:
        """The next batch from the held tokens; keeps its last token as the next batch's first."""
        tokens, separators, used = [], [], 0
        while used < need:
            ids, seps, epoch, doc, offset = held[0]
            take = min(len(ids), need - used)
            tokens.append(ids[:take])
            separators.append(seps[:take])
            used += take
            if take == len(ids) and used < need:
                held.pop(0)
            else:  # the last token used stays, as the next batch's first input
                held[0] = (ids[take - 1 :], seps[take - 1 :], epoch, doc, offset + take - 1)
        flat = torch.from_numpy(np.concatenate(tokens))
        B, T = self.batch_size, self.block_size
        x, y = flat[:-1].view(B, T), flat[1:].view(B, T)
        ids = None
        if self.doc_masking:
            starts = torch.from_numpy(np.concatenate(separators)[:-1].reshape(B, T).astype(np.int64))
            ids = starts.cumsum(dim=1) - starts[:, :1]
        _, _, epoch, doc, offset = held[0]
        return Batch(x, y, ids, None, {"role": role, "epoch": epoch, "doc": doc, "offset": offset})
