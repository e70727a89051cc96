"""The LightningDataModule: the token cache (prepared once, by one process) or a prepared folder
(lgpt-prepare's shards, data=prepared) served as window loaders."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_gpt.data.cache import TokenCache, prepare_tokens
from lightning_gpt.data.shards import PreparedFolder
from lightning_gpt.data.sources import Source
from lightning_gpt.data.windows import FixedWindows, RandomWindows, SplitTokens
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer

log = logging.getLogger(__name__)


class GPTDataModule(L.LightningDataModule):
    """The parameters are `DataConfig`'s fields (train.py passes `cfg.data` whole) plus the tokenizer: they
    have no defaults here, so that the schema's stay the only ones."""

    def __init__(
        self,
        *,
        tokenizer: str | dict[str, Any],  # a name, tokenizer_spec's dict, or a saved tokenizer's to_dict()
        source: str,
        path: str | None,
        val_path: str | None,
        name: str | None,
        config_name: str | None,
        split: str,
        val_split: str | None,
        revision: str | None,
        text_column: str,
        sample_by: str,
        val_fraction: float,
        block_size: int,
        batch_size: int,
        val_batches: int,
        num_workers: int,
        num_proc: int | None,
        cache_dir: str,
        seed: int,
    ):
        super().__init__()
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("val_batches", val_batches)):
            if value < 1:
                raise UserError(f"data.{key} must be a positive integer, got {value}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be 0 (load in the training process) or more, got {num_workers}")
        self.source = Source(
            source, path, val_path, name, config_name, split, val_split, revision, text_column, sample_by
        )
        self.tokenizer_name = tokenizer
        self.val_fraction = val_fraction
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.num_workers, self.num_proc, self.cache_dir, self.seed = num_workers, num_proc, cache_dir, seed
        self.batches_seen = 0  # training batches consumed: the sampler's position, saved in checkpoints
        self.saved_world_size: int | None = None  # the number of processes of the run that saved it
        self.cache: TokenCache | PreparedFolder | None = None

    def prepare_data(self) -> None:
        if self.source.kind != "prepared":
            prepare_tokens(self.source, self.tokenizer_name, self.val_fraction, self.cache_dir, self.num_proc)

    def load_cache(self) -> TokenCache | PreparedFolder:
        """Prepare (or find) the tokens and open them; the model's vocabulary comes from here."""
        if self.cache is None:
            if self.source.kind == "prepared":  # lgpt-prepare's folder, read where it is
                cache: TokenCache | PreparedFolder = PreparedFolder(self.source.path)
                cache.check_tokenizer(self.tokenizer_name)
            else:
                cache = TokenCache(
                    prepare_tokens(self.source, self.tokenizer_name, self.val_fraction, self.cache_dir, self.num_proc)
                )
            for split in ("train", "val"):
                start, end = cache.split(split)
                if end - start < self.block_size + 1:
                    raise UserError(
                        f"the {split} split has {end - start} tokens, fewer than "
                        f"block_size + 1 = {self.block_size + 1}; "
                        "use more text, a smaller model.block_size or a larger data.val_fraction"
                    )
            self.cache = cache
        return self.cache

    @property
    def tokenizer(self) -> Tokenizer:
        return self.load_cache().tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load_cache()

    def tokens(self, name: str) -> SplitTokens:
        cache = self.load_cache()
        return SplitTokens(cache.shards(), cache.dtype, *cache.split(name))

    def _loader(self, dataset: Dataset, batch_size: int | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Its own generator: starting a loader must not consume the global random state that dropout
            # uses, or a resumed run would draw other dropout masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.saved_world_size not in (None, world) and rank == 0:
            log.warning(
                f"resuming with {world} processes a run saved with {self.saved_world_size}: each process continues "
                f"its own stream of windows at batch {self.batches_seen} (new ones start theirs there), so the "
                "data differs from what an uninterrupted run would have drawn; resume with the same number of "
                "processes for an exact continuation"
            )
        windows = RandomWindows(
            self.tokens("train"), self.block_size, self.batch_size, self.seed, rank, start=self.batches_seen
        )
        return self._loader(windows, batch_size=None)  # the dataset yields whole batches

    def val_dataloader(self) -> DataLoader:
        windows = FixedWindows(self.tokens("val"), self.block_size, self.val_batches * self.batch_size, self.batch_size)
        return self._loader(windows, batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: checkpoints are taken between optimizer steps, each of
        accumulate_grad_batches batches, so the step count tells how many batches were drawn."""
        if self.trainer is None:
            return {"batches_seen": self.batches_seen}
        return {
            "batches_seen": self.trainer.global_step * self.trainer.accumulate_grad_batches,
            "world_size": self.trainer.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = state["batches_seen"]
        self.saved_world_size = state.get("world_size")  # absent from checkpoints saved before it was recorded
