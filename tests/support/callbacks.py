"""Test-only callbacks, importable by runs in subprocesses (`+callbacks.x._target_=tests.helpers.X`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class RecordFirstBatch(L.Callback):
    """Each process writes the token ids of its first training batch, to show what data it saw."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            path = Path(trainer.default_root_dir) / f"first_batch_rank{trainer.global_rank}.txt"
            path.write_text(" ".join(map(str, batch[0][0].tolist())))


class Slow(L.Callback):
    """Sleeps after each training batch, so a test can signal or kill a run mid-training."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        import time

        time.sleep(self.seconds)


class PoisonWeights(L.Callback):
    """Sets one weight to nan after the given step, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            with __import__("torch").no_grad():
                pl_module.model.transformer.wte.weight[0, 0] = float("nan")


class RecordGradNorm(L.Callback):
    """Writes the total gradient norm as the optimizer saw it (after clipping), one line per step, and how
    the parameters are held (sharded DTensors or whole tensors), to show what clipping and FSDP did."""

    def on_before_zero_grad(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        import torch

        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads).item()  # DTensor shards: the global norm
        if trainer.is_global_zero:
            kinds = {type(p).__name__ for p in pl_module.parameters()}
            with open(Path(trainer.default_root_dir) / "grad_norms.txt", "a") as f:
                f.write(f"{trainer.global_step} {norm:.6f} {','.join(sorted(kinds))}\n")


class SignalAt(L.Callback):
    """Sends this process a signal after the given training batch, as a scheduler or Ctrl-C would."""

    def __init__(self, signum: int, batch: int):
        self.signum, self.batch = signum, batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if trainer.fit_loop.total_batch_idx == self.batch:
            import os

            os.kill(os.getpid(), self.signum)


class RecordLosses(L.Callback):
    """Appends each training batch's loss to losses.jsonl in the run folder: {step, micro_batch, loss}."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int):
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        import json

        record = {
            "step": self.step,
            "micro_batch": batch_idx % trainer.accumulate_grad_batches,
            "loss": outputs["loss"].item(),
        }
        with open(Path(trainer.default_root_dir) / "losses.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class HalveSecondGroup(L.Callback):
    """Gives the optimizer's second parameter group (no weight decay) half the first one's learning rate."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.lr_scheduler_configs[0].scheduler.base_lrs[1] /= 2
        trainer.optimizers[0].param_groups[1]["lr"] /= 2


class RecordBatches(L.Callback):
    """Each process appends every training batch's input ids to batches_rank<r>.txt: the step, then the ids."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        ids = " ".join(map(str, batch[0].flatten().tolist()))
        with open(Path(trainer.default_root_dir) / f"batches_rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {ids}\n")


class CountHostReads(L.Callback):
    """Counts, per optimizer step, the training-stage calls that read a tensor's value on the host (`.item()`,
    `float(t)`, `bool(t)`, `.tolist()`, ...): on a GPU each one waits for the device. Seen through a
    TorchFunctionMode, torch's public hook for every call on a tensor. Reads inside the DataLoader's fetch are of
    the batch before it moves to the device, and validation has its own interval: neither is counted. Writes
    {step: [names]} to <root>/host_reads.json when training ends."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import traceback

        import torch
        from torch.overrides import TorchFunctionMode

        reads = {
            torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
            torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
        }  # fmt: skip
        self.seen: dict[int, list[str]] = {}
        seen = self.seen

        class Count(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in reads and trainer.training:
                    if not any("torch/utils/data/" in frame.filename for frame in traceback.extract_stack()):
                        seen.setdefault(trainer.global_step, []).append(func.__name__)
                return func(*args, **(kwargs or {}))

        self.mode = Count()
        self.mode.__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        self.mode.__exit__(None, None, None)
        (Path(trainer.default_root_dir) / "host_reads.json").write_text(json.dumps(self.seen))
