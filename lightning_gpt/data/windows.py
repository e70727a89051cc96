"""Training and validation windows over one split of the token file, as torch datasets.

Training draws random windows of block_size + 1 tokens (nanoGPT's scheme) from a seeded stream whose
position is saved in checkpoints; validation uses a fixed, evenly spaced set of windows, sharded by rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class SplitTokens:
    """One split: tokens [start, end) of the token file. The memmap opens lazily in each process, because
    a memmap must not be pickled into loader workers."""

    def __init__(self, path: Path, dtype: str, start: int, end: int):
        self.path, self.dtype, self.start, self.end = path, dtype, start, end
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")[self.start : self.end]
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.tokens[s : s + length] for s in starts]).astype(np.int64))


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
