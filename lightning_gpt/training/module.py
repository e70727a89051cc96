"""The LightningModule around a model of any family: loss, optimizer and LR schedule. Everything else is Lightning's.

Batches come as the data module yields them (`lightning_gpt.data.windows.unpack`): inputs, targets, and with
document masking each token's document in its row (`doc_ids`, passed to the model); a mixture's validation
batches also say which source they are from, for a loss per source beside the overall one.
"""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric

from lightning_gpt.data.module import data_parallel
from lightning_gpt.data.windows import unpack
from lightning_gpt.devices import is_float16
from lightning_gpt.errors import UserError
from lightning_gpt.evaluation.bpb import token_bytes, token_losses_and_bytes
from lightning_gpt.models import build
from lightning_gpt.optim import build_optimizer, check_optim, param_groups, schedule
from lightning_gpt.schema import OptimConfig
from lightning_gpt.tokenizers import Tokenizer, tokenizer_from_dict


class SumRatio(Metric):
    """sum(values) / sum(weights) over every update of every process, for each of `parts` parts (a mixture's
    sources) and over all of them: exact means of unevenly sized parts, whatever the number of processes."""

    def __init__(self, parts: int = 1) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(parts, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(parts, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor, part: int = 0) -> None:
        self.total[part] += value.double()
        self.count[part] += weight

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ratio over all parts, (parts,) each part's ratio)"""
        return (self.total.sum() / self.count.sum()).float(), (self.total / self.count).float()


class GPTLightningModule(L.LightningModule):
    """Holds a model and everything a checkpoint needs to rebuild it: model config, tokenizer, optimizer."""

    def __init__(
        self,
        model: dict[str, Any],
        tokenizer: dict[str, Any],
        optim: dict[str, Any] | None = None,  # None: a module that only evaluates
        compile: bool = False,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        # Model config, tokenizer and the whole run config travel inside every checkpoint; the loggers get
        # them in on_train_start, without a learned vocabulary (a trained BPE's is megabytes of JSON).
        self.save_hyperparameters(logger=False)
        self.optim = OptimConfig(**optim) if optim is not None else None
        if self.optim is not None:
            try:
                check_optim(self.optim)
            except ValueError as e:
                raise UserError(f"optim.{e}") from None
        self.model = build(model)
        self.tokenizer_spec = tokenizer
        self.compile_model = compile
        # Bits per byte beside the loss: each token's UTF-8 length, a buffer so it follows the module's device;
        # not persistent, so checkpoints hold the same tensors as before (the tokenizer rebuilds it).
        self.register_buffer("token_bytes", token_bytes(self.tokenizer), persistent=False)
        # What validation sums, as quantity -> SumRatio, each per source (`validation_sums` says how): val/loss,
        # nats per target token; val/bpb, bits per byte of the targets that hold text (end-of-text holds none).
        # A mixture's source names come from the data module in setup.
        self.sources: list[str] = []
        self.val_metrics = torch.nn.ModuleDict({"loss": SumRatio(), "bpb": SumRatio()})

    @property
    def tokenizer(self) -> Tokenizer:
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = tokenizer_from_dict(self.tokenizer_spec)
        return self._tokenizer

    @property
    def flops_per_batch(self) -> int | None:
        """Training FLOPs of one batch, for Lightning's ThroughputMonitor (MFU)."""
        return getattr(self, "_flops_per_batch", None)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "mixture", False):
            self.name_sources(datamodule.val_sources)

    def name_sources(self, names: list[str]) -> None:
        """Validation batches tagged with a source index (a mixture's) count towards that source, named here:
        val/<quantity>/<name> is logged beside the overall value, and training logs train/tokens/<name>."""
        self.sources = list(names)
        self.val_metrics = torch.nn.ModuleDict({name: SumRatio(len(names)) for name in self.val_metrics})

    def configure_model(self) -> None:
        """Lightning calls this once the processes run: FSDPStrategy's tensor parallelism and sharding go here."""
        from lightning_gpt.parallel.strategy import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.parallelize(self.model, self.trainer.precision)
        if self.compile_model:
            self.model.compile()  # in place: parameter names (and checkpoints) stay free of _orig_mod.

    def on_train_start(self) -> None:
        """Log the hyperparameters and the global batch: what a step means depends on devices, nodes and
        accumulation."""
        data = self.trainer.datamodule
        readers = data_parallel(self.trainer)[1]  # tensor-parallel peers read the same batch
        sequences = readers * data.batch_size * self.trainer.accumulate_grad_batches
        batch = {"global_batch_size": sequences, "tokens_per_step": sequences * data.block_size}
        tokenizer = {"name": self.tokenizer.name, "vocab_size": self.tokenizer.vocab_size}
        for logger in self.loggers:
            logger.log_hyperparams({**self.hparams, "tokenizer": tokenizer, **batch})
        processes = "processes" if readers == self.trainer.world_size else "data-parallel groups"
        rank_zero_info(
            f"global batch: {readers} {processes} x {data.batch_size} sequences x "
            f"{self.trainer.accumulate_grad_batches} accumulation = {sequences} sequences "
            f"({batch['tokens_per_step']:,} tokens) per step"
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, doc_ids = unpack(batch)[:3]
        if self.flops_per_batch is None:
            self._flops_per_batch = self.model.flops_per_token() * x.numel()
        _, loss = self.model(x, y, doc_ids=doc_ids)
        self.log("train/loss", loss)  # not prog_bar: Lightning reads those on the host at every step
        if self.sources:  # a mixture: the tokens drawn from each source so far, by every process (CPU numbers)
            drawn = self.trainer.datamodule.tokens_drawn
            # float64: exact counts (Lightning keeps a step-only value as given); loggers write them at logging steps
            self.log_dict({f"train/tokens/{n}": torch.tensor(drawn[n], dtype=torch.float64) for n in self.sources})
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        last_micro_batch = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        if last_micro_batch and self.global_step % self.trainer.log_every_n_steps == 0:
            self._stop_if_not_finite(outputs["loss"])  # read after the step, with the loggers' reads: one wait
        if self.global_step >= self.trainer.max_steps > 0:  # the last step: validate even off the interval
            self.trainer.should_stop = True

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip here rather than in Lightning's precision plugins, which refuse a fused optimizer under
        bf16-mixed (no scaler is involved, Lightning #21435) and norm clipping under FSDP. By now, under
        16-mixed, the scaler has unscaled the gradients (the optimizer is not fused then, see
        configure_optimizers). clip_grad_norm_ computes the global norm of FSDP2's sharded gradients too."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def _stop_if_not_finite(self, loss: torch.Tensor) -> None:
        """A nan/inf loss has poisoned the weights: stop (on_save_checkpoint refuses to save them), keeping the
        last good checkpoint."""
        if not torch.isfinite(loss):
            every = self.trainer.log_every_n_steps
            raise UserError(
                f"the training loss is {loss.item()} at step {self.global_step} (checked every {every} steps); "
                f"stopped, the last good checkpoint is kept: lower optim.lr or use gradient clipping, then resume"
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, doc_ids, source = unpack(batch)[:4]
        logits, _ = self.model(x, doc_ids=doc_ids)
        for name, (total, count) in self.validation_sums(logits, y).items():
            self.val_metrics[name].update(total, count, part=source or 0)

    def validation_sums(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each validation quantity as (its sum over the batch, what that sum is divided by). Sums over real
        targets: padding windows (targets -1, so every process runs as many batches) add nothing, and the
        means over all processes, and over a mixture's sources, are exact whatever their number. val/loss
        counts every target, end-of-text included; val/bpb only those that hold bytes of text."""
        losses, nbytes = token_losses_and_bytes(logits, y, self.token_bytes)
        return {
            "loss": (losses.sum(), (y != -1).sum()),
            "bpb": ((losses * (nbytes > 0)).sum().double() / math.log(2), nbytes.sum()),  # bits, per byte
        }

    def on_validation_epoch_end(self) -> None:
        overall, per_source = {}, {}
        for name, metric in self.val_metrics.items():
            value, parts = metric.compute()  # sums over every process, and over every source for `value`
            metric.reset()
            overall[f"val/{name}"] = value
            # parts.view(-1): torchmetrics hands one part back as a scalar
            per_source.update({f"val/{name}/{source}": v for source, v in zip(self.sources, parts.view(-1))})
        overall["val/ppl"] = torch.exp(overall["val/loss"])
        # Already global means; sync_dist only tells Lightning so (every process logs the same values).
        self.log_dict(overall, prog_bar=True, sync_dist=True)
        if per_source:
            self.log_dict(per_source, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise UserError(
                f"not saving a checkpoint at step {self.global_step}: the weights hold nan/inf; the last good "
                "checkpoint is kept: lower optim.lr or use gradient clipping, then resume from it"
            )
        # Random state, so dropout draws the same masks after a resume as in an uninterrupted run.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        # The new run's optimizer settings win: a resumed run may lower the learning rate, for instance. Lightning
        # restores the optimizers from the checkpoint after this hook; FSDPStrategy has restored them already.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in param_groups(self.model, self.optim)]
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is not None and not strategy.lightning_restore_optimizer:
            restored = [optimizer.param_groups for optimizer in self.trainer.optimizers]
        else:
            restored = [state["param_groups"] for state in checkpoint.get("optimizer_states", [])]
        factor = schedule(self.optim)(checkpoint.get("global_step", 0))  # as the LR scheduler would set it
        for groups in restored:
            if len(groups) != len(fresh):
                raise UserError(
                    f"the checkpoint's optimizer has {len(groups)} parameter groups and optim.name="
                    f"{self.optim.name} makes {len(fresh)}: resume with the optimizer it was trained with"
                )
            for group, settings in zip(groups, fresh):
                group.update({**settings, "lr": settings["lr"] * factor})
        for state in checkpoint.get("lr_schedulers", []):
            state["base_lrs"] = [g["lr"] for g in fresh]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        # Fused kernels wherever torch has them: on CPUs too, where steps ran 1.03-1.14x faster (benchmarks/).
        # fp16's scaler unscales a fused AdamW's gradients only inside its step: after clipping would.
        fp16_clipped = is_float16(self.trainer.precision) and bool(self.trainer.gradient_clip_val)
        fused = o.fused
        if fused is None:
            fused = self.device.type in ("cuda", "cpu") and not fp16_clipped
        elif fused and fp16_clipped:
            raise UserError(
                "optim.fused=true with trainer.precision=16-mixed cannot clip gradients (the fused step unscales "
                "them after clipping); use optim.fused=null, trainer.precision=bf16-mixed or no clipping"
            )
        optimizer = build_optimizer(self.model, o, fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(o))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
