"""Training and validation windows over one split of the token stream (one file or shards), as torch datasets.

Training draws random windows of block_size + 1 tokens (nanoGPT's scheme) from a seeded stream whose
position is saved in checkpoints; validation uses a fixed, evenly spaced set of windows, sharded by rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class SplitTokens:
    """One split: tokens [start, end) of a token stream stored in one file or several (shards), back to back,
    each given as (file, byte offset of its first token, tokens). The memmaps open lazily in each process,
    because a memmap must not be pickled into loader workers."""

    def __init__(self, shards: list[tuple[Path, int, int]], dtype: str, start: int, end: int):
        self.shards, self.dtype, self.start, self.end = shards, dtype, start, end
        self.bounds = np.cumsum([0] + [count for _, _, count in shards])  # where each shard starts in the stream
        self._parts: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def parts(self) -> list[np.ndarray]:
        if self._parts is None:
            self._parts = [
                np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=(count,))
                for path, offset, count in self.shards
            ]
        return self._parts

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_parts": None}

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

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        out = np.empty((len(starts), length), dtype=np.int64)
        for row, start in enumerate(starts):
            out[row] = self.read(int(start), length)
        return torch.from_numpy(out)


class RandomWindows(IterableDataset):
    """Endless batches of random windows. Batch k is a pure function of (seed, rank, k), so the stream
    resumes exactly from a batch count and each process of a multi-device run draws its own windows."""

    def __init__(self, split: SplitTokens, block_size: int, batch_size: int, seed: int, rank: int, start: int = 0):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.seed, self.rank, self.start = seed, rank, start

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, k])
        starts = rng.integers(0, len(self.split) - self.block_size, size=self.batch_size)
        xy = self.split.windows(starts, self.block_size + 1)
        return xy[:, :-1], xy[:, 1:]

    def __iter__(self):
        worker = get_worker_info()
        k, step = (self.start + worker.id, worker.num_workers) if worker else (self.start, 1)
        while True:  # DataLoader reads workers round-robin, so batches still arrive in order k, k+1, ...
            yield self.batch(k)
            k += step


class FixedWindows(IterableDataset):
    """Evenly spaced windows over the validation split, in batches: the same every evaluation and every run.

    Process `rank` of `world_size` (by default, of the initialized process group) takes windows rank,
    rank + world_size, ...; every process runs as many batches (a sharded model needs all of them in each
    forward), the short ones padded with windows whose targets are -1, which the loss ignores. So the mean
    over all processes is exactly the mean over the windows, whatever the number of processes (a
    DistributedSampler would repeat windows instead).
    """

    def __init__(
        self,
        split: SplitTokens,
        block_size: int,
        count: int,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.rank, self.world_size = rank, world_size
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
            xy = torch.full((min(self.batch_size, per_process - first), self.block_size + 1), -1, dtype=torch.int64)
            if len(starts):
                xy[: len(starts)] = self.split.windows(starts, self.block_size + 1)
            yield xy[:, :-1].clamp(min=0), xy[:, 1:]
