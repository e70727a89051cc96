"""Callbacks specific to GPTs: token throughput and a text sample at each validation."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


class TokenThroughputMonitor(L.Callback):
    """Tokens/s (`train/device/items_per_sec`: sequences are samples, tokens are items) and, on GPUs whose peak
    Lightning knows, MFU, averaged over about the last `window_size` batches, with Lightning's `Throughput`.

    Lightning's ThroughputMonitor waits for the GPU after every batch; this one only when the trainer logs
    (every log_every_n_steps), so the CPU keeps queueing work ahead of the GPU in between.
    """

    def __init__(self, window_size: int = 50):
        self.window_size = window_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.utilities.throughput import Throughput, get_available_flops

        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(trainer.precision).split("-")[0], torch.float32)
        updates = max(2, self.window_size // max(1, trainer.log_every_n_steps) + 1)  # one update per logging step
        peak = get_available_flops(trainer.strategy.root_device, dtype)
        self.throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=updates)
        self.batches = self.samples = self.tokens = self.batches_at_update = 0
        self.start, self.paused = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.paused += time.perf_counter() - self.validation_start  # validation is not training time

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self.batches += 1
        self.samples += batch[0].size(0)
        self.tokens += batch[0].numel()
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not stepped or trainer.global_step % trainer.log_every_n_steps:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the GPU's work, not just its queue
        flops_per_batch = getattr(pl_module, "flops_per_batch", None)
        flops = None if flops_per_batch is None else flops_per_batch * (self.batches - self.batches_at_update)
        elapsed = time.perf_counter() - self.start - self.paused
        self.throughput.update(time=elapsed, batches=self.batches, samples=self.samples, lengths=self.tokens,
                               flops=flops)  # fmt: skip
        self.batches_at_update = self.batches
        metrics = {f"train/{name}": value for name, value in self.throughput.compute().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def _full_parameters(pl_module: L.LightningModule):
    """Under FSDP each process holds a shard: gather the whole model for generation (read-only)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = pl_module.trainer.strategy.model if pl_module._trainer is not None else None
    if isinstance(wrapped, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(wrapped, writeback=False)
    return nullcontext()


class SampleText(L.Callback):
    """Generates a short sample after each validation and logs it as text, so a dashboard shows the
    model learning. Every process generates (a sharded FSDP model needs them all); rank 0 logs."""

    def __init__(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = 200, seed: int = 0):  # fmt: skip
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def generate(self, pl_module: L.LightningModule) -> str:
        with _full_parameters(pl_module):
            return self._generate(pl_module)

    def _generate(self, pl_module: L.LightningModule) -> str:
        tokenizer = pl_module.tokenizer
        idx = torch.tensor([tokenizer.encode_prompt(self.prompt)], device=pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        tokens = [
            t.item()
            for t in pl_module.model.generate(
                idx, self.max_new_tokens, self.temperature, self.top_k, stop_token=tokenizer.eot_id, generator=generator
            )  # fmt: skip
        ]
        pl_module.train(was_training)
        return self.prompt + tokenizer.decode(t for t in tokens if t != tokenizer.eot_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        text = self.generate(pl_module)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", f"```\n{text}\n```", step)
            elif isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "text"], data=[[step, text]])
        if trainer.default_root_dir:
            with open(Path(trainer.default_root_dir) / "samples.md", "a", encoding="utf-8") as f:
                f.write(f"## step {step}\n\n```\n{text}\n```\n\n")
