"""The LightningDataModule: token folders (the token cache, prepared once by one process, or lgpt-prepare's
out_dir with data=prepared), a weighted mixture of them (data=mixture), or a hub dataset streamed at training
time (data.streaming=true), served as window loaders."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_gpt.data.cache import prepare_tokens
from lightning_gpt.data.mixture import Part, describe, naming, parse_sources, shared_tokenizer
from lightning_gpt.data.shards import PreparedFolder
from lightning_gpt.data.sources import Source, check_skipped, describe_source, source_from_config
from lightning_gpt.data.windows import (
    PACKINGS,
    Batch,
    FixedWindows,
    SplitTokens,
    TrainWindows,
    ValidationWindows,
    sampler,
)
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import Tokenizer, build_tokenizer, fits_on_corpus

log = logging.getLogger(__name__)
ON_EXHAUSTED = ("repeat", "stop")


def data_parallel(trainer: L.Trainer | None) -> tuple[int, int]:
    """(rank, size) among the processes that read different batches: every process under DDP and FSDP, one per
    tensor-parallel group under tensor parallelism (its peers compute on the same batch), as the strategy's
    sampler settings say."""
    if trainer is None:
        return 0, 1
    split = getattr(trainer.strategy, "distributed_sampler_kwargs", None)  # single-device strategies have none
    return (split["rank"], split["num_replicas"]) if split else (trainer.global_rank, trainer.world_size)


class GPTDataModule(L.LightningDataModule):
    """The parameters are `DataConfig`'s fields (build.py passes `cfg.data` whole) plus the tokenizer: they
    have no defaults here, so that the schema's stay the only ones. The keys after `seed` are new and not
    yet in the schema: their defaults here are the schema's to be, and move there."""

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
        max_skipped_fraction: float,
        packing: str,
        doc_masking: bool,
        sources: dict[str, dict[str, Any]] | None,
        on_exhausted: str,
        streaming: bool,
        data_files: Any,
    ):
        super().__init__()
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("val_batches", val_batches)):
            if value < 1:
                raise UserError(f"data.{key} must be a positive integer, got {value}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be 0 (load in the training process) or more, got {num_workers}")
        if packing not in PACKINGS:
            raise UserError(f"data.packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
        if on_exhausted not in ON_EXHAUSTED:
            raise UserError(f"data.on_exhausted must be one of {', '.join(ON_EXHAUSTED)}, got {on_exhausted!r}")
        if not (isinstance(max_skipped_fraction, (int, float)) and 0.0 <= max_skipped_fraction <= 1.0):
            raise UserError(f"data.max_skipped_fraction must be in [0, 1], got {max_skipped_fraction!r}")
        config = {
            "path": path,
            "val_path": val_path,
            "name": name,
            "config_name": config_name,
            "split": split,
            "val_split": val_split,
            "revision": revision,
            "text_column": text_column,
            "sample_by": sample_by,
            "data_files": data_files,
        }
        self.mixture = source == "mixture"
        if self.mixture:
            self.parts = parse_sources(sources)
        else:
            if sources:
                raise UserError(f"data.sources is for data=mixture; with data.source={source} remove it")
            self.parts = [Part(source, 1.0, source_from_config(config, source))]
        self.source: Source = self.parts[0].source
        if streaming and (self.mixture or self.source.kind != "hub"):
            raise UserError("data.streaming=true streams a hub dataset: use it with data=hub (one source)")
        self.tokenizer_name = tokenizer
        self.val_fraction = val_fraction
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.num_workers, self.num_proc, self.cache_dir, self.seed = num_workers, num_proc, cache_dir, seed
        self.packing, self.doc_masking, self.on_exhausted = packing, bool(doc_masking), on_exhausted
        self.max_skipped_fraction, self.streaming = max_skipped_fraction, bool(streaming)
        if self.streaming:
            from lightning_gpt.data.streaming import check_streamable

            check_streamable(tokenizer, packing)
        self.batches_seen = 0  # training batches consumed: the sampler's position, saved in checkpoints
        self.saved_world_size: int | None = None  # the number of processes of the run that saved it
        self.tokens_drawn = {p.name: 0 for p in self.parts}  # training tokens drawn from each source, all processes
        self._windows: TrainWindows | None = None  # the training batches being drawn, and the next one's index
        self._next_batch = 0
        self.stream_positions: dict[int, dict[str, int]] = {}  # streaming: each share's position
        self.stream_workers: int | None = None
        self.stream_ended = False
        self._warned: set[str] = set()
        self.folders: list[PreparedFolder] = []
        self._tokenizer: Tokenizer | None = None
        self._stream_val: tuple[SplitTokens, int] | None = None

    # -----------------------------------------------------------------------------------------------
    # Tokens

    def prepare_data(self) -> None:
        if not self.streaming:
            self.load_cache()

    def load_cache(self) -> PreparedFolder | None:
        """Prepare (or find) every source's tokens and open them; the model's vocabulary comes from here.
        Returns the first source's folder (None when streaming)."""
        if self._tokenizer is not None:
            return self.folders[0] if self.folders else None
        if self.streaming:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
            return None
        spec = self.tokenizer_name
        opened: dict[str, PreparedFolder] = {}
        for part in self.parts:
            if part.prepared:  # lgpt-prepare's folder, read where it is
                with self._naming(part):
                    opened[part.name] = PreparedFolder(part.source.path)
                    opened[part.name].check_tokenizer(spec)
        if self.mixture and fits_on_corpus(spec):
            prepared = {name: folder.meta["tokenizer"] for name, folder in opened.items()}
            spec = shared_tokenizer(self.parts, spec, self.cache_dir, prepared)
        folders = []
        for part in self.parts:
            with self._naming(part):
                if part.name in opened:
                    folder = opened[part.name]
                    if self.mixture:
                        folder.check_tokenizer(spec)
                else:
                    path = prepare_tokens(
                        part.source,
                        spec,
                        self.val_fraction,
                        self.cache_dir,
                        self.num_proc,
                        max_skipped_fraction=self.max_skipped_fraction,
                    )
                    folder = PreparedFolder(path, checksums=False, what="token cache")
                self._check(part, folder)
            folders.append(folder)
        self.folders = folders
        self._tokenizer = folders[0].tokenizer
        return folders[0]

    def _naming(self, part: Part):
        """A mixture's errors say which source they are about."""
        return naming(part) if self.mixture else contextlib.nullcontext()

    def _check(self, part: Part, folder: PreparedFolder) -> None:
        """The settings of this run that a folder must meet: enough tokens in each split, rows skipped within
        data.max_skipped_fraction, documents indexed when packing or masking needs them."""
        for split, rows in folder.meta.get("rows", {}).items():
            key = "data.path" if split == "train" else "data.val_path"
            what = f"{key} {describe_source(part.source)!r}" if part.source.kind == "local" else f"the {split} split"
            line = check_skipped(
                rows, self.max_skipped_fraction, what, part.source.text_column, rows.get("first_skipped")
            )
            if line and line not in self._warned:
                self._warned.add(line)
                log.warning(line)
        separate = part.source.val_path or part.source.val_split
        for split in ("train", "val"):
            start, end = folder.split(split)
            if end - start >= self.block_size + 1:
                continue
            if split == "train":
                fix = "it needs more text, or a smaller data.val_fraction or model.block_size"
                if separate:
                    fix = "it needs more text or a smaller model.block_size"
            else:
                fix = "use more text, a smaller model.block_size or a larger data.val_fraction"
                if separate:
                    fix = f"use more validation text ({'data.val_path' if part.source.val_path else 'data.val_split'})"
                    fix += " or a smaller model.block_size"
            raise UserError(
                f"the {split} split has {end - start} tokens, fewer than block_size + 1 = {self.block_size + 1}; {fix}"
            )
        if (self.packing == "bos_aligned" or self.doc_masking) and folder.version < 2:
            raise UserError(
                f"data.packing={self.packing} data.doc_masking={self.doc_masking} need the documents' starts, which "
                f"the prepared folder {folder.folder} (manifest version 1) does not index; prepare it again with "
                "lgpt-prepare, or train with data.packing=random data.doc_masking=false"
            )

    @property
    def tokenizer(self) -> Tokenizer:
        self.load_cache()
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        self.load_cache()

    def tokens(self, name: str, part: int = 0) -> SplitTokens:
        """A split of a source (the first, or only, one)."""
        self.load_cache()
        if self.streaming:
            if name != "val":
                raise UserError("a streamed source has no train split to read at random; it streams")
            return self._streamed_validation()[0]
        folder = self.folders[part]
        return SplitTokens(folder.shards(), folder.dtype, *folder.split(name), folder.doc_starts())

    @property
    def val_sources(self) -> list[str]:
        """The names the validation batches' `source` index refers to (a mixture's sources, in order)."""
        return [p.name for p in self.parts]

    @property
    def weights(self) -> dict[str, float]:
        total = sum(p.weight for p in self.parts)
        return {p.name: p.weight / total for p in self.parts}

    # -----------------------------------------------------------------------------------------------
    # Loaders

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

    def _speaks(self) -> bool:
        """Process 0 alone logs (tensor-parallel peers share their data-parallel rank)."""
        return self.trainer is None or self.trainer.is_global_zero

    def train_dataloader(self):
        rank, world = data_parallel(self.trainer)
        if self.saved_world_size not in (None, world) and self._speaks():
            log.warning(
                f"resuming with {world} processes a run saved with {self.saved_world_size}: each process continues "
                f"its own stream of windows at batch {self.batches_seen} (new ones start theirs there), so the "
                "data differs from what an uninterrupted run would have drawn; resume with the same number of "
                "processes for an exact continuation"
            )
        if self.streaming:
            return self._streaming_loader(rank, world)
        samplers = [
            sampler(self.tokens("train", i), self.block_size, self.packing, self.doc_masking)
            for i in range(len(self.parts))
        ]
        weights = [p.weight for p in self.parts] if self.mixture else None
        windows = TrainWindows(samplers, self.batch_size, self.seed, rank, start=self.batches_seen, weights=weights)
        self._windows, self._next_batch = windows, self.batches_seen
        if self.mixture and self._speaks():
            log.info(f"training on a mixture of {describe(self.parts)}")
        return self._loader(windows, batch_size=None)  # the dataset yields whole batches

    def val_dataloader(self) -> DataLoader:
        count = self.val_batches * self.batch_size
        rank, world = data_parallel(self.trainer) if self.trainer is not None else (None, None)
        if self.mixture:
            parts = [
                FixedWindows(
                    self.tokens("val", i), self.block_size, count, self.batch_size, rank, world, self.doc_masking, i
                )
                for i in range(len(self.parts))
            ]
            return self._loader(ValidationWindows(parts), batch_size=None)
        windows = FixedWindows(
            self.tokens("val"), self.block_size, count, self.batch_size, rank, world, self.doc_masking
        )
        return self._loader(windows, batch_size=None)

    # -----------------------------------------------------------------------------------------------
    # Streaming

    def _streamed_validation(self) -> tuple[SplitTokens, int]:
        if self._stream_val is None:
            from lightning_gpt.data.streaming import held_out

            needed = self.val_batches * self.batch_size * (self.block_size + 1)
            self._stream_val = held_out(self.source, self.tokenizer_name, needed, bool(self.source.val_split))
            split = self._stream_val[0]
            if len(split) < self.block_size + 1:
                raise UserError(
                    f"the validation documents of {self.source.name!r} hold {len(split)} tokens, fewer than "
                    f"block_size + 1 = {self.block_size + 1}; use a longer data.val_split or a smaller block_size"
                )
        return self._stream_val

    def _streaming_loader(self, rank: int, world: int):
        from lightning_gpt.data.streaming import StreamingWindows

        workers = max(1, self.num_workers)
        if self.stream_workers not in (None, workers) and self._speaks():
            log.warning(
                f"resuming a stream read by {self.stream_workers} loader workers with {workers}: each share of "
                "the stream starts again from its beginning; resume with the same data.num_workers to continue it"
            )
            self.stream_positions = {}
        _, holdout = self._streamed_validation()
        dataset = StreamingWindows(
            self.source,
            self.tokenizer_name,
            self.block_size,
            self.batch_size,
            rank,
            world,
            self.doc_masking,
            self.on_exhausted,
            holdout=holdout,
            batches_seen=self.batches_seen,
            positions=self.stream_positions,
        )
        self.stream_workers = workers
        return _StopAtEnd(self._loader(dataset, batch_size=None), self)

    # -----------------------------------------------------------------------------------------------
    # What the batches say: tokens per source, the stream's position

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of a mixture say which source each row came from, streamed ones where the stream
        stands: recorded here (in the training process, as each batch is used), then left off the batch."""
        if not isinstance(batch, Batch) or (batch.position is None and not isinstance(batch.source, torch.Tensor)):
            return batch
        if batch.position is not None:
            position = dict(batch.position)
            self.stream_positions[position.pop("role")] = position
            self.tokens_drawn[self.parts[0].name] += batch.x.numel()
        if isinstance(batch.source, torch.Tensor):
            # Every process's rows of this batch, their sources drawn again from their seeds: the counts are of
            # all processes and the same in each, so any rank's checkpoint holds them and all stop together.
            k, world = self._next_batch, data_parallel(self.trainer)[1]
            self._next_batch += 1
            rows = sum(np.bincount(self._windows.sources(r, k), minlength=len(self.parts)) for r in range(world))
            for part, count in zip(self.parts, rows.tolist()):
                self.tokens_drawn[part.name] += count * batch.x.size(1)
            self._exhausted()
        return (batch.x, batch.y) if batch.doc_ids is None else (batch.x, batch.y, batch.doc_ids)

    def _exhausted(self) -> None:
        """A source drawn as many tokens as its training split holds has been seen once over (in expectation:
        windows are drawn at random): repeat it, saying so once per pass, or stop, as data.on_exhausted says."""
        for part, folder in zip(self.parts, self.folders):
            start, end = folder.split("train")
            passes = self.tokens_drawn[part.name] // max(1, end - start)
            note = f"{part.name}:{passes}"
            if passes < 1 or note in self._warned:
                continue
            self._warned.add(note)
            if self.on_exhausted == "stop":
                log.warning(
                    f"data.sources.{part.name} is used up: {self.tokens_drawn[part.name]:,} tokens drawn, as many as "
                    f"it holds ({end - start:,}); stopping, as data.on_exhausted=stop says"
                )
                if self.trainer is not None:
                    self.trainer.should_stop = True
            else:
                log.info(f"data.sources.{part.name}: {passes} passes over its {end - start:,} tokens drawn; repeating")

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: checkpoints are taken between optimizer steps, each of
        accumulate_grad_batches batches, so the step count tells how many batches were drawn. A mixture adds
        the tokens drawn per source; a stream, where each share of it stands."""
        if self.trainer is None:
            state: dict[str, Any] = {"batches_seen": self.batches_seen}
        else:
            state = {
                "batches_seen": self.trainer.global_step * self.trainer.accumulate_grad_batches,
                "world_size": data_parallel(self.trainer)[1],  # the number of streams of batches
            }
        if self.mixture:
            state["tokens_drawn"] = dict(self.tokens_drawn)
        if self.streaming:
            state["stream"] = {"workers": self.stream_workers, "positions": dict(self.stream_positions)}
            state["tokens_drawn"] = dict(self.tokens_drawn)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = state["batches_seen"]
        self.saved_world_size = state.get("world_size")  # absent from checkpoints saved before it was recorded
        self.tokens_drawn.update(state.get("tokens_drawn", {}))
        if "stream" in state:
            self.stream_workers = state["stream"]["workers"]
            self.stream_positions = {int(k): dict(v) for k, v in state["stream"]["positions"].items()}


class _StopAtEnd:
    """A streamed loader that ends training when its stream ends (data.on_exhausted=stop): the epoch ends
    there and the trainer does not start another (which would read the stream again)."""

    def __init__(self, loader: DataLoader, datamodule: GPTDataModule):
        self.loader, self.datamodule = loader, datamodule

    def __iter__(self):
        if self.datamodule.stream_ended:
            return
        yield from self.loader
        if self.datamodule.on_exhausted == "stop":
            self.datamodule.stream_ended = True
            if self.datamodule.trainer is not None:
                self.datamodule.trainer.should_stop = True
