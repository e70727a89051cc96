"""Callbacks specific to GPTs: token throughput, a text sample, attention maps and a multiple-choice task's
accuracy at each validation, and a stop at a target validation loss."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_gpt.data.module import data_parallel
from lightning_gpt.devices import compute_dtype, is_half
from lightning_gpt.errors import UserError
from lightning_gpt.generation import complete, prompt_ids
from lightning_gpt.io import append_text, temporary_name
from lightning_gpt.training.strategies import can_generate, full_parameters

if TYPE_CHECKING:
    from lightning_gpt.inspection import Trace
    from lightning_gpt.tokenizers import Tokenizer


def _sequences(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].size(0)


def _tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].numel()


def h200_peak_flops(device_name: str, precision: str) -> float | None:
    """An H200's dense peak FLOP/s, which equals an H100's of the same form (NVIDIA's datasheets). Lightning's
    table misses it: its H200 rows hold the sparse figures (twice these) under names ('h200 sxm1') that the
    card does not report ('NVIDIA H200'). None for other cards: Lightning's table then decides."""
    name = device_name.lower()
    if "h200" not in name:
        return None
    if is_half(precision):  # bf16 or fp16 tensor cores
        return 835e12 if "nvl" in name else 989.4e12
    return 60e12 if "nvl" in name else 66.9e12  # float32 without TF32


class TokenThroughputMonitor(L.Callback):
    """Tokens per second and MFU at each logging step, measured over the optimizer steps since the previous
    one (so the first logging step has a value too), validation's time left out: `train/items_per_sec` (all
    processes), `train/device/items_per_sec` and `train/device/flops_per_sec` (one), `train/device/mfu` where
    the device's peak FLOP/s is
    known (Lightning's table, the H200's dense figures, or `peak_flops`), and `train/tokens` and
    `train/samples` so far, which continue from the checkpoint's step after a resume.

    It reads the clock, not the device: a CUDA GPU is waited for once per logging step (a stream
    synchronization there), never at the other steps, so the host keeps queuing work ahead of the GPU."""

    def __init__(self, peak_flops: float | None):
        self.peak_flops = peak_flops
        self._last = 0.0  # when the current window started, in perf_counter seconds
        self._last_step = 0
        self._paused = 0.0  # validation time inside the current window
        self._validation_start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        self._peak = self.peak_flops
        if self._peak is None and device.type == "cuda":
            from lightning.fabric.utilities.throughput import get_available_flops

            name, half = torch.cuda.get_device_name(device), compute_dtype(trainer.precision)
            self._peak = h200_peak_flops(name, trainer.precision) or get_available_flops(device, half)
        self._last, self._last_step, self._paused = time.perf_counter(), trainer.global_step, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self._paused += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.global_step % trainer.log_every_n_steps:
            return  # not an optimizer step that logs
        if pl_module.device.type == "cuda":
            torch.cuda.current_stream(pl_module.device).synchronize()  # the window's work, done
        now = time.perf_counter()
        seconds = now - self._last - self._paused
        steps = trainer.global_step - self._last_step
        self._last, self._last_step, self._paused = now, trainer.global_step, 0.0
        if steps <= 0 or seconds <= 0:
            return
        readers = data_parallel(trainer)[1]  # tensor-parallel peers compute on the same batch
        sequences = _sequences(batch) * trainer.accumulate_grad_batches * readers  # per step
        tokens = _tokens(batch) * trainer.accumulate_grad_batches * readers
        metrics = {
            "train/items_per_sec": tokens * steps / seconds,
            "train/device/items_per_sec": tokens * steps / seconds / trainer.world_size,
            "train/tokens": float(tokens * trainer.global_step),
            "train/samples": float(sequences * trainer.global_step),
        }
        flops_per_second = pl_module.model.flops_per_token() * tokens * steps / trainer.world_size / seconds
        metrics["train/device/flops_per_sec"] = flops_per_second
        if self._peak:
            metrics["train/device/mfu"] = flops_per_second / self._peak
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)


class LearningRateLogger(L.Callback):
    """The learning rate as `train/lr`, beside train/loss at each logging step; with optim.name=muon,
    `train/lr/muon` and `train/lr/adamw`; one `train/lr/pg<i>` per parameter group only when rates differ
    otherwise. Lightning's LearningRateMonitor logs `lr-AdamW/pg1` and `pg2`, two identical lines."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        by_optimizer = {("muon" if g.get("muon") else "adamw", g["lr"]) for g in groups}
        if len({g["lr"] for g in groups}) == 1:
            pl_module.log("train/lr", groups[0]["lr"])
        elif len(by_optimizer) == len(dict(by_optimizer)):  # one rate per optimizer
            pl_module.log_dict({f"train/lr/{name}": rate for name, rate in by_optimizer})
        else:
            pl_module.log_dict({f"train/lr/pg{i}": g["lr"] for i, g in enumerate(groups)})


class StopAtLoss(EarlyStopping):
    """Ends the run at the first validation with `monitor` (val/loss, or val/bpb) at or below `target`
    (Lightning's EarlyStopping with stopping_threshold and unlimited patience), and reports what reaching it
    took: printed, logged as `target/seconds` and `target/tokens` (all processes, from this run's first step),
    and kept in `reached`."""

    MONITORS = ("val/loss", "val/bpb")

    def __init__(self, target: float, monitor: str):
        if monitor not in self.MONITORS:
            raise UserError(
                f"callbacks.stop_at_loss.monitor must be one of {', '.join(self.MONITORS)}, got {monitor!r}"
            )
        super().__init__(monitor=monitor, stopping_threshold=target, patience=sys.maxsize, mode="min")
        self.target = target
        self.reached: dict[str, float] | None = None
        self._start, self._tokens = 0.0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += _tokens(batch) * data_parallel(trainer)[1]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.reached is None and self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            value = float(trainer.callback_metrics[self.monitor])
            seconds = time.perf_counter() - self._start
            self.reached = dict(step=trainer.global_step, seconds=seconds, tokens=self._tokens, loss=value)
            rank_zero_info(
                f"Reached {self.monitor} {value:.4f} <= {self.target} at step {trainer.global_step}: "
                f"{seconds:.1f} s of training, {self._tokens:,} tokens"
            )
            for logger in trainer.loggers:
                logger.log_metrics({"target/seconds": seconds, "target/tokens": self._tokens}, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.reached is None:
            best = float(self.best_score)
            rank_zero_info(
                f"Did not reach {self.monitor} <= {self.target} in {trainer.global_step} steps (best {best:.4f})"
            )


class SampleText(L.Callback):
    """Generates a short sample after each validation and logs it as text, so a dashboard shows the
    model learning. Every process generates (a sharded FSDP model needs them all); rank 0 logs."""

    def __init__(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, seed: int = 0):
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def generate(self, pl_module: L.LightningModule) -> str:
        with full_parameters(pl_module.model):
            return complete(
                pl_module.model,
                pl_module.tokenizer,
                self.prompt,
                self.max_new_tokens,
                self.temperature,
                self.top_k,
                seed=self.seed,
            )[0]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not can_generate(trainer):
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
            elif isinstance(logger, MLFlowLogger):  # an artifact per validation: samples/step000250.txt
                logger.experiment.log_text(logger.run_id, text, f"samples/step{step:06d}.txt")
        if trainer.default_root_dir:
            append_text(Path(trainer.default_root_dir) / "samples.md", f"## step {step}\n\n```\n{text}\n```\n\n")


class AttentionMaps(L.Callback):
    """After each validation, a picture of how the model mixes a fixed prompt's tokens, as one PNG: for
    attention models (GPT-2, Llama) the attention weights, a row per layer and a column per head; for Mamba,
    which has no attention, its equivalent: each layer's step size dt over the prompt's tokens (averaged over
    channels) above the norm of each layer's state after each token. What a family shows comes from its
    folder's inspect.py; a family without one is refused at setup. Logged as `attention` (whatever the family,
    so dashboards keep one place) to TensorBoard, W&B and MLflow when those loggers are on, and written to
    <run>/attention/step<N>.png. A forward pass and a matplotlib figure per validation; its cost is in
    docs/benchmarks.md. Prompts longer than the context keep their first block_size tokens."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.ids: list[int] = []

    def check(self, pl_module: L.LightningModule) -> None:
        """A family or prompt it cannot draw refuses the launch before lgpt-train writes anything (training.build
        calls this), not at the first validation."""
        from lightning_gpt.inspection import inspector

        try:
            inspector(pl_module.model)
        except UserError as e:
            raise UserError(f"callbacks.attention_maps: {e}") from e
        try:
            ids = prompt_ids(pl_module.tokenizer, self.prompt)
        except UserError as e:
            raise UserError(f"callbacks.attention_maps.prompt: {e}") from e
        self.ids = ids[: pl_module.model.config.block_size]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.ids:  # a Trainer built elsewhere than training.build
            self.check(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not can_generate(trainer):
            return
        from lightning_gpt.inspection import trace

        with full_parameters(pl_module.model):
            seen = trace(pl_module.model, torch.tensor([self.ids], device=pl_module.device))
        if trainer.is_global_zero:
            self.log_image(trainer, self.draw(seen, pl_module.tokenizer, trainer.global_step), trainer.global_step)

    def draw(self, seen: Trace, tokenizer: Tokenizer, step: int):
        """The figure of a Trace (attention maps, or a state-space model's step sizes and state norms) as an
        RGB array (H, W, 3)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from lightning_gpt.inspection import attention_figure, state_space_figure, token_piece

        if seen.attention is not None:
            figure = attention_figure(seen.attention, f"attention at step {step}: {self.prompt!r}")
        elif seen.step_sizes is None or seen.state_norms is None:
            raise UserError("callbacks.attention_maps: this family's trace holds neither attention nor step sizes")
        else:
            pieces = [token_piece(tokenizer, i) for i in self.ids]
            title = f"step sizes and state norms at step {step}: {self.prompt!r}"
            figure = state_space_figure(seen.step_sizes.mean(dim=-1), seen.state_norms, pieces, title)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3]

    @staticmethod
    def log_image(trainer: L.Trainer, image, step: int) -> None:
        from matplotlib.image import imsave

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("attention", image, step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key="attention", images=[image], step=step)
            elif isinstance(logger, MLFlowLogger):  # an image artifact per validation
                logger.experiment.log_image(logger.run_id, image, f"attention/step{step:06d}.png")
        if trainer.default_root_dir:
            folder = Path(trainer.default_root_dir) / "attention"
            folder.mkdir(parents=True, exist_ok=True)
            fresh = temporary_name(folder / f"step{step:06d}.png", ".png")  # a new name: nothing planted to follow
            imsave(fresh, image)
            os.replace(fresh, folder / f"step{step:06d}.png")


class DownstreamEval(L.Callback):
    """A multiple-choice task's accuracy during training, as lm-evaluation-harness scores HellaSwag (acc: the
    choice with the highest log-likelihood; acc_norm: per character): `eval/<name>/acc` and
    `eval/<name>/acc_norm` to every logger, at each validation (every_n_steps null) or every N optimizer steps.

    The questions are the first `limit` of a JSONL file in HellaSwag's schema ({"ctx", "endings", "label"}),
    read here rather than through the harness: training needs no lm_eval, no network and no dataset cache. Each
    choice is scored as " " + ending after ctx, the harness's default; a hub task's own preprocessing (HellaSwag's
    cleanup of its ctx) is lgpt-eval's job (`tasks=hellaswag`). Each process scores its share of the questions
    and the counts are summed (`trainer.strategy.reduce`), so every process logs the same exact accuracy; under
    FSDP each runs as many forwards as the busiest, which the sharded model needs.
    """

    def __init__(
        self, path: str | None, name: str | None, limit: int | None, every_n_steps: int | None, batch_size: int
    ):
        from lightning_gpt.evaluation.multiple_choice import SHAKESPEARE_NEXT_LINE

        for key, value in (("limit", limit), ("every_n_steps", every_n_steps), ("batch_size", batch_size)):
            if value is not None and value < 1:
                raise UserError(f"callbacks.downstream.{key} must be at least 1 (or null), got {value}")
        self.path = Path(path).expanduser() if path else SHAKESPEARE_NEXT_LINE
        self.name = name or self.path.stem
        self.limit, self.every_n_steps, self.batch_size = limit, every_n_steps, batch_size
        self.questions: list = []
        self._last_step = -1

    def check(self, pl_module: L.LightningModule) -> None:
        """Read and encode the questions, so that a bad file, text the tokenizer cannot read or an ending longer
        than the model's context refuses the launch before it writes anything (training.build calls this), not at
        the first validation."""
        from lightning_gpt.evaluation.multiple_choice import encode_requests, read_questions

        try:
            self.questions = read_questions(self.path, self.limit)
            requests = [(q.context, " " + choice) for q in self.questions for choice in q.choices]
            encode_requests(pl_module.tokenizer, requests, pl_module.model.config.block_size)
        except UserError as e:
            raise UserError(f"callbacks.downstream ({self.path.name}): {e}") from e

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.questions:  # a Trainer built elsewhere than training.build
            self.check(pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """acc and acc_norm over every process's share of the questions, the same on every process."""
        from lightning_gpt.evaluation.multiple_choice import multiple_choice_counts

        rank, world_size = trainer.global_rank, trainer.world_size
        with trainer.precision_plugin.forward_context():
            counts = multiple_choice_counts(
                pl_module.model, pl_module.tokenizer, self.questions, self.batch_size, rank, world_size
            )
        correct, correct_norm, n = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        return {f"eval/{self.name}/acc": correct / n, f"eval/{self.name}/acc_norm": correct_norm / n}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps is None and not trainer.sanity_checking and trainer.state.fn == "fit":
            # Logged as val/loss is: at the validation's step, to every logger, and into callback_metrics (a
            # checkpoint or early stop may monitor it). Already the same on every process.
            pl_module.log_dict(self.evaluate(trainer, pl_module), sync_dist=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step % self.every_n_steps or step == self._last_step:
            return  # not a multiple of N, or a micro-batch of the step already scored (gradient accumulation)
        self._last_step = step
        metrics = self.evaluate(trainer, pl_module)
        if trainer.is_global_zero:  # straight to the loggers: Lightning flushes step metrics every log_every_n_steps
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step - 1)  # the completed step's index, as train/loss and val/loss
