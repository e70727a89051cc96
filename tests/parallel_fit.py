"""One lightning.Trainer fit of our GPTLightningModule under lightning_gpt.parallel's FSDPStrategy (with
conf/trainer/fsdp.yaml's settings), for tests/test_parallel*.py: `python -m tests.parallel_fit <settings.json>`.
With devices > 1 Lightning itself starts the other processes (it re-runs this command), as `lgpt-train` does.

Each process writes <out>/rank<r>.pt: the loss of every step averaged over all processes, and the full weights
and optimizer state at the end (gathered from the shards).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_gpt.parallel.strategy import FSDPStrategy
from lightning_gpt.training.module import GPTLightningModule

from .support.config import ROOT


def strategy(**changes: Any) -> FSDPStrategy:
    """conf/trainer/fsdp.yaml's strategy (its settings' only copy) with changes."""
    import yaml

    settings = yaml.safe_load((ROOT / "conf" / "trainer" / "fsdp.yaml").read_text())["strategy"]
    settings.pop("_target_")
    return FSDPStrategy(**{**settings, **changes})


class Tokens(Dataset):
    """Fixed random sequences (inputs, targets): the same in every process and every run."""

    def __init__(self, vocab_size: int, block_size: int, count: int):
        g = torch.Generator().manual_seed(1234)
        self.tokens = torch.randint(0, vocab_size, (count, block_size + 1), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i, :-1], self.tokens[i, 1:]


class Data(L.LightningDataModule):
    def __init__(self, vocab_size: int, block_size: int, batch_size: int):
        super().__init__()
        self.block_size, self.batch_size = block_size, batch_size
        self.dataset = Tokens(vocab_size, block_size, 64)

    def train_dataloader(self) -> DataLoader:
        """Batch k of data-parallel process r of n: sequences (k n + r) b ... (k n + r + 1) b - 1, so the n processes
        of a step together see the one-process run's batch k of n b sequences. The split comes from the
        strategy's distributed_sampler_kwargs (tensor-parallel peers must read the same batches)."""
        split = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
        n, r, b = split["num_replicas"], split["rank"], self.batch_size
        start = self.trainer.global_step  # a resumed run continues with the next batch
        steps = range(start, len(self.dataset) // (n * b))
        mine = [i for k in steps for i in range((k * n + r) * b, (k * n + r + 1) * b)]
        return DataLoader(Subset(self.dataset, mine), batch_size=b, shuffle=False)


def full_state(module: L.LightningModule, optimizer: Any) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class Record(L.Callback):
    def __init__(self, out: Path, record_start: bool = False):
        self.out, self.losses, self.record_start, self.start = out, [], record_start, None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """With record_start (a resumed run): the state the checkpoint restored. Not in a fresh run, where
        `get_state_dict` would create the optimizer's state by a step (of lr 0, but it counts)."""
        if self.record_start:
            self.start = copy.deepcopy(full_state(module, trainer.optimizers[0]))  # `step` is the live tensor

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"].detach().clone()
        if torch.distributed.is_initialized():  # tensor-parallel peers hold the same loss: the mean is the data's
            torch.distributed.all_reduce(loss)
            loss /= torch.distributed.get_world_size()
        self.losses.append(loss.item())

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        weights, optim = full_state(module, trainer.optimizers[0])
        result = {"losses": self.losses, "weights": weights, "optimizer": optim, "world": trainer.world_size}
        result["start"] = self.start
        torch.save(result, self.out / f"rank{trainer.global_rank}.pt")


def main(settings: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # several processes on 2 cores
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    model = settings["model"]
    devices = settings.get("devices", 1)
    L.seed_everything(0)
    module = GPTLightningModule(
        model, {"name": "byte"}, optim=settings.get("optim", dict(lr=3e-3, warmup_steps=0, decay_steps=100))
    )
    callbacks: list[L.Callback] = [Record(out, settings.get("record_start", False))]
    if settings.get("checkpoints"):
        every = settings["checkpoints"]
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                out / "checkpoints",
                "step{step:03d}",
                save_last=True,
                every_n_train_steps=every,
                auto_insert_metric_name=False,
                save_top_k=-1,
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy(**settings["strategy"]) if "strategy" in settings else "auto",
        precision="32-true",
        max_steps=settings["max_steps"],
        gradient_clip_val=settings.get("clip", 0.5),
        limit_val_batches=0,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=bool(settings.get("checkpoints")),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=out,
    )
    data = Data(model["vocab_size"], model["block_size"], settings["batch_size"])
    trainer.fit(module, data, ckpt_path=settings.get("ckpt_path"))


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
