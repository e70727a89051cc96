"""Training and validation windows over one split of the token stream (one or many shards), as torch datasets.

Training batch k is a pure function of (seed, rank, k), so the stream resumes exactly from a batch count and
each process draws its own. Two packings (`data.packing`):

- `random` (nanoGPT's): rows are windows of block_size + 1 tokens starting anywhere in the stream.
- `bos_aligned` (nanochat's best-fit): every row starts at a segment start; segments are packed whole,
  largest first, into the room left in the row, and when none fits, the shortest is cropped to fill it (its
  tail is left out of that row: no padding, every target real). A document longer than a row is cut into
  pieces of block_size + 1 tokens, each packed as a segment (the document continues, rather than losing
  its tail; only its first piece starts at its beginning).

A *segment* is a document together with the separator before it: the token that ends a document (the
end-of-text token, or the char tokenizer's final newline) begins the next document's segment, as a BOS
would. So with document masking (`data.doc_masking`, batches carry `doc_ids`) nothing is lost at a boundary:
a document's last token predicts the separator (the end of the text), and the separator, attending only to
itself, predicts the next document's first token, which is what a BOS at position 0 predicts.

Validation uses a fixed, evenly spaced set of windows, sharded by rank (`FixedWindows`); with several sources,
one set per source, each batch tagged with its source (`ValidationWindows`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_gpt.errors import UserError

PACKINGS = ("random", "bos_aligned")


class Batch(NamedTuple):
    """A batch with what the model or the loggers need besides inputs and targets. Plain `(x, y)` tuples
    are yielded when there is nothing else (random windows of one source, no document masking)."""

    x: torch.Tensor  # (B, T) inputs
    y: torch.Tensor  # (B, T) targets, -1 where there is none
    doc_ids: torch.Tensor | None = None  # (B, T) int64: which segment of its row each input token is in (0, 1, ...)
    source: torch.Tensor | int | None = None  # training: (B,) source index of each row; validation: the batch's
    position: Any = None  # a streamed source: where its stream stands after this batch


def unpack(batch: Any) -> Batch:
    """Any batch the loaders yield, as a Batch."""
    if isinstance(batch, Batch):
        return batch
    x, y, *rest = batch
    return Batch(x, y, rest[0] if rest else None)


class SplitTokens:
    """One split: tokens [start, end) of a token stream stored in one file or several (shards), back to back,
    each given as (file, byte offset of its first token, tokens); `doc_starts` are the stream offsets where
    documents start (None: not indexed). The memmaps open lazily in each process, because a memmap must not
    be pickled into loader workers."""

    def __init__(
        self,
        shards: list[tuple[Path, int, int]],
        dtype: str,
        start: int,
        end: int,
        doc_starts: np.ndarray | None = None,
    ):
        self.shards, self.dtype, self.start, self.end = shards, dtype, start, end
        self.doc_starts = doc_starts
        self.bounds = np.cumsum([0] + [count for _, _, count in shards])  # where each shard starts in the stream
        self._parts: list[np.ndarray] | None = None
        self._segments: np.ndarray | None = None

    @classmethod
    def from_array(cls, tokens: np.ndarray, doc_starts: np.ndarray | None = None) -> SplitTokens:
        """A split held in memory (a streamed source's validation documents)."""
        split = cls([(Path(), 0, len(tokens))], str(tokens.dtype), 0, len(tokens), doc_starts)
        split._parts = [tokens]
        return split

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def parts(self) -> list[np.ndarray]:
        if self._parts is None:  # plain arrays over the maps: np.memmap's own indexing costs microseconds
            self._parts = [
                np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=(count,)).view(np.ndarray)
                for path, offset, count in self.shards
            ]
        return self._parts

    def __getstate__(self) -> dict:
        memory = self.shards[0][0] == Path()  # an in-memory split travels whole
        return {**self.__dict__, "_parts": self._parts if memory else None}

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, across shard boundaries if need be."""
        position = self.start + start
        i = int(np.searchsorted(self.bounds, position, side="right")) - 1
        offset = position - self.bounds[i]
        if offset + length <= len(self.parts[i]):
            return self.parts[i][offset : offset + length]
        pieces = []
        while length > 0:
            piece = self.parts[i][offset : offset + length]
            pieces.append(piece)
            length -= len(piece)
            i, offset = i + 1, 0
        return np.concatenate(pieces)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at split offsets `positions` (any shape), as int64."""
        stream = positions + self.start
        if len(self.parts) == 1:
            return self.parts[0][stream].astype(np.int64)
        out = np.empty(stream.shape, dtype=np.int64)
        shard = np.searchsorted(self.bounds, stream, side="right") - 1
        for i in np.unique(shard):
            where = shard == i
            out[where] = self.parts[i][stream[where] - self.bounds[i]]
        return out

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        out = np.empty((len(starts), length), dtype=np.int64)
        for row, start in enumerate(starts):
            out[row] = self.read(int(start), length)
        return torch.from_numpy(out)

    @property
    def segments(self) -> np.ndarray:
        """Split offsets (ascending, 0 first) where a segment starts: at the separator that ends the previous
        document (see the module's docstring), and at the split's start."""
        if self._segments is None:
            if self.doc_starts is None:
                raise UserError(
                    "data.packing=bos_aligned and data.doc_masking need the documents' starts, which this "
                    "prepared folder (manifest version 1) does not index; prepare it again with lgpt-prepare"
                )
            separators = self.doc_starts - 1 - self.start
            inside = separators[(separators > 0) & (separators < len(self))]
            self._segments = np.concatenate([[0], inside]).astype(np.int64)
        return self._segments

    def segment_ids(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) int64: for the windows starting at `starts`, which segment each token is in,
        counted from 0 at each window's first token."""
        positions = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
        first = np.searchsorted(self.segments, np.asarray(starts, dtype=np.int64), side="right")
        return np.searchsorted(self.segments, positions, side="right") - first[:, None]


# ---------------------------------------------------------------------------------------------------
# Training: samplers draw rows, TrainWindows makes batches


class WindowSampler:
    """Rows of block_size + 1 tokens starting at random positions (nanoGPT)."""

    def __init__(self, split: SplitTokens, block_size: int, doc_masking: bool = False):
        if len(split) < block_size + 1:
            raise ValueError(f"a split of {len(split)} tokens holds no window of {block_size + 1}")
        self.split, self.block_size, self.doc_masking = split, block_size, doc_masking

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        starts = rng.integers(0, len(self.split) - self.block_size, size=count)
        rows = self.split.windows(starts, self.block_size + 1).numpy()
        return rows, self.split.segment_ids(starts, self.block_size) if self.doc_masking else None


class PackedSampler:
    """Rows packed best-fit from whole segments, each row starting at a segment start (nanochat's
    BOS-aligned best-fit; see the module's docstring). Candidates are drawn in proportion to their length,
    so every token is as likely to be drawn as with random windows."""

    def __init__(self, split: SplitTokens, block_size: int, doc_masking: bool = False):
        self.split, self.block_size, self.doc_masking = split, block_size, doc_masking
        self._units: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.cropped = 0  # tokens left out of rows by the last draw (their unit's tail)

    @property
    def units(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, cumulative lengths) of the segments, long ones cut into rows' lengths."""
        if self._units is None:
            row = self.block_size + 1
            segments = self.split.segments
            ends = np.append(segments[1:], len(self.split))
            pieces = -(-(ends - segments) // row)
            first = np.repeat(segments, pieces)
            index = np.arange(len(first)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece number
            starts = first + index * row
            lengths = np.minimum(row, np.repeat(ends, pieces) - starts)
            self._units = (starts, lengths, np.cumsum(lengths))
            self._total = int(self._units[2][-1])
            # Candidates per row: enough that best-fit usually fills a row with whole segments (fewer crops),
            # few enough to stay as fast as random windows: 2 when segments are as long as rows, at most 16
            # (short documents: about 5% of the drawn tokens cropped, against 18% with 4).
            self._per_row = min(16, max(2, math.ceil(8 * row * len(lengths) / self._total)))
        return self._units

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_units": None}

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        starts, lengths, cumulative = self.units
        row = self.block_size + 1
        size = count * self._per_row

        def candidates() -> tuple[list[int], list[int]]:
            tokens = np.sort(rng.integers(0, self._total, size=size))  # sorted: searchsorted is faster
            units = np.searchsorted(cumulative, tokens, side="right")
            drawn = lengths[units]
            order = np.argsort(drawn, kind="stable")
            return drawn[order].tolist(), starts[units][order].tolist()

        pool_lengths, pool_starts = candidates()
        self.cropped = 0
        if len(pool_lengths) >= count and pool_lengths[-count] == row:  # every row is one whole segment
            chosen = np.array(pool_starts[: -count - 1 : -1] if count < len(pool_starts) else pool_starts[::-1])
            rows = self.split.gather(chosen[:, None] + np.arange(row))
            return rows, np.zeros((count, self.block_size), dtype=np.int64) if self.doc_masking else None
        taken_starts: list[int] = []
        taken_lengths: list[int] = []
        pieces: list[int] = []  # segments in each row
        take_start, take_length, cropped = taken_starts.append, taken_lengths.append, 0
        for _ in range(count):
            room, n = row, 0
            while room:
                if not pool_lengths:
                    pool_lengths, pool_starts = candidates()
                j = bisect_right(pool_lengths, room) - 1
                if j < 0:  # nothing fits: crop the shortest to the room left
                    j, take = 0, room
                    cropped += pool_lengths[0] - room
                else:
                    take = pool_lengths[j]
                take_start(pool_starts.pop(j))
                del pool_lengths[j]
                take_length(take)
                room -= take
                n += 1
            pieces.append(n)
        self.cropped = cropped
        takes = np.array(taken_lengths)
        offsets = np.cumsum(takes) - takes  # where each piece goes in the flat output
        positions = np.repeat(np.array(taken_starts) - offsets, takes) + np.arange(count * row)
        rows = self.split.gather(positions).reshape(count, row)
        doc_ids = None
        if self.doc_masking:
            per_row = np.array(pieces)
            segment = np.arange(len(takes)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
            doc_ids = np.repeat(segment, takes).reshape(count, row)[:, :-1]
        return rows, doc_ids


def sampler(split: SplitTokens, block_size: int, packing: str, doc_masking: bool) -> WindowSampler | PackedSampler:
    if packing not in PACKINGS:
        raise UserError(f"data.packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    cls = WindowSampler if packing == "random" else PackedSampler
    return cls(split, block_size, doc_masking)


class TrainWindows(IterableDataset):
    """Endless training batches from one sampler, or from several drawn by weight (a mixture: each row's
    source is drawn first, from the same seeded stream). Batch k is a pure function of (seed, rank, k)."""

    def __init__(
        self,
        samplers: list[WindowSampler | PackedSampler],
        batch_size: int,
        seed: int,
        rank: int,
        start: int = 0,
        weights: list[float] | None = None,
    ):
        self.samplers, self.batch_size, self.seed, self.rank, self.start = samplers, batch_size, seed, rank, start
        self.doc_masking = samplers[0].doc_masking
        self.cumulative = None if weights is None else np.cumsum(weights) / np.sum(weights)

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | Batch:
        rng = np.random.default_rng([self.seed, self.rank, k])
        source = None
        if self.cumulative is None:
            rows, ids = self.samplers[0].draw(rng, self.batch_size)
        else:
            choice = np.minimum(
                np.searchsorted(self.cumulative, rng.random(self.batch_size), side="right"), len(self.samplers) - 1
            )
            rows = np.empty((self.batch_size, self.samplers[0].block_size + 1), dtype=np.int64)
            ids = np.zeros((self.batch_size, self.samplers[0].block_size), dtype=np.int64) if self.doc_masking else None
            for i, s in enumerate(self.samplers):
                chosen = np.flatnonzero(choice == i)
                if len(chosen):
                    rows[chosen], drawn_ids = s.draw(rng, len(chosen))
                    if ids is not None:
                        ids[chosen] = drawn_ids
            source = torch.from_numpy(choice.astype(np.int64))
        xy = torch.from_numpy(rows)
        if ids is None and source is None:
            return xy[:, :-1], xy[:, 1:]
        return Batch(xy[:, :-1], xy[:, 1:], None if ids is None else torch.from_numpy(ids), source)

    def __iter__(self):
        worker = get_worker_info()
        k, step = (self.start + worker.id, worker.num_workers) if worker else (self.start, 1)
        while True:  # DataLoader reads workers round-robin, so batches still arrive in order k, k+1, ...
            yield self.batch(k)
            k += step


class RandomWindows(TrainWindows):
    """Endless batches of random windows of one split (nanoGPT's scheme): batch k is a pure function of
    (seed, rank, k), so the stream resumes exactly from a batch count and each process draws its own."""

    def __init__(
        self,
        split: SplitTokens,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int,
        start: int = 0,
        doc_masking: bool = False,
    ):
        super().__init__([WindowSampler(split, block_size, doc_masking)], batch_size, seed, rank, start)
        self.split, self.block_size = split, block_size


# ---------------------------------------------------------------------------------------------------
# Validation


class FixedWindows(IterableDataset):
    """Evenly spaced windows over the validation split, in batches: the same every evaluation and every run.

    Process `rank` of `world_size` (by default, of the initialized process group) takes windows rank,
    rank + world_size, ...; every process runs as many batches (a sharded model needs all of them in each
    forward), the short ones padded with windows whose targets are -1, which the loss ignores. So the mean
    over all processes is exactly the mean over the windows, whatever the number of processes (a
    DistributedSampler would repeat windows instead). With `doc_masking` batches carry `doc_ids`; with a
    `tag` (a mixture's source index) every batch says which source it is from.
    """

    def __init__(
        self,
        split: SplitTokens,
        block_size: int,
        count: int,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        doc_masking: bool = False,
        tag: int | None = None,
    ):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.doc_masking, self.tag = doc_masking, tag
        self.starts = np.linspace(0, len(split) - block_size - 1, num=count).astype(np.int64)

    def _process(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size or 1
        dist = torch.distributed
        return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)

    def _per_process(self) -> int:
        return -(-len(self.starts) // self._process()[1])  # windows per process, padding included

    def __len__(self) -> int:
        return -(-self._per_process() // self.batch_size)

    def __iter__(self):
        rank, world = self._process()
        mine, per_process = self.starts[rank::world], self._per_process()
        worker = get_worker_info()  # loader workers take turns, batch by batch, as the loader reads them
        turn, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for first in range(turn * self.batch_size, per_process, workers * self.batch_size):
            starts = mine[first : first + self.batch_size]
            rows = min(self.batch_size, per_process - first)
            xy = torch.full((rows, self.block_size + 1), -1, dtype=torch.int64)
            if len(starts):
                xy[: len(starts)] = self.split.windows(starts, self.block_size + 1)
            x, y = xy[:, :-1].clamp(min=0), xy[:, 1:]
            if not self.doc_masking and self.tag is None:
                yield x, y
                continue
            ids = None
            if self.doc_masking:
                ids = torch.zeros((rows, self.block_size), dtype=torch.int64)
                if len(starts):
                    ids[: len(starts)] = torch.from_numpy(self.split.segment_ids(starts, self.block_size))
            yield Batch(x, y, ids, self.tag)


class ValidationWindows(IterableDataset):
    """Each source's fixed windows one after the other, every batch tagged with its source's index, so the
    LightningModule can log a loss per source and the overall one (see GPTDataModule.val_sources)."""

    def __init__(self, parts: list[FixedWindows]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self):
        for part in self.parts:
            yield from part
