"""What a run prints while it trains: one progress display and one model summary, in a terminal and in a log file.

In a terminal, tqdm bars count optimizer steps and every log line is printed above them (through `tqdm.write`),
never glued onto a bar. Redirected to a file (`> run.txt`, nohup, SLURM's output files) there is no bar and no
cursor control: a plain line at each logging step (step, loss, tokens/s, time left) and after each
validation, which reads well in `tail -f` and in a scheduler's log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar

from lightning_gpt.data.module import data_parallel

log = logging.getLogger(__name__)


class TqdmHandler(logging.Handler):
    """A console handler that prints through tqdm.write, which lifts the bar, prints the line, redraws the bar."""

    def __init__(self, replaced: logging.StreamHandler):
        super().__init__(replaced.level)
        self.replaced = replaced
        self.setFormatter(replaced.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.replaced.stream)
        except Exception:
            self.handleError(record)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimizer steps out of trainer.max_steps (a resumed run shows 300/400 and
    its own rate; Lightning's counts micro-batches, and 400/? after a resume), with log lines above it; or, when
    stdout is no terminal (plain=None) or plain=true, plain lines instead of a bar."""

    def __init__(self, refresh_rate: int, plain: bool | None):
        super().__init__(refresh_rate=refresh_rate)
        self.plain = plain if plain is not None else not sys.stdout.isatty()
        self._handlers: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        self._start, self._start_step = 0.0, 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.plain:
            self.disable()

    # ----- a terminal: bars, and log lines above them

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        if not self.plain and trainer.is_global_zero:
            self._route_logs_through_tqdm()
        self._count_steps(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar if not self.plain else None
        if bar is None or bar.disable or trainer.max_steps < 1:
            return
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = bar.last_print_n = trainer.global_step  # the rate counts this run's steps only
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def _route_logs_through_tqdm(self) -> None:
        logging.captureWarnings(True)  # warnings too: printed above the bar, not into it
        for logger in (logging.getLogger(), logging.getLogger("py.warnings")):
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                    replacement = TqdmHandler(handler)
                    logger.removeHandler(handler)
                    logger.addHandler(replacement)
                    self._handlers.append((logger, handler, replacement))

    def _restore_logs(self) -> None:
        for logger, handler, replacement in self._handlers:
            logger.removeHandler(replacement)
            logger.addHandler(handler)
        if self._handlers:
            logging.captureWarnings(False)
        self._handlers = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_logs()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_logs()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._restore_logs()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The bar's figures, with the training loss read on the host here, at a refresh, not at every step."""
        metrics = super().get_metrics(trainer, pl_module)
        if "train/loss" in trainer.callback_metrics:
            metrics["train/loss"] = f"{float(trainer.callback_metrics['train/loss']):.4f}"
        return metrics

    # ----- plain lines (and the bar's count of optimizer steps)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step_idx = trainer.global_step - 1 if trainer.max_steps > 0 else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, step_idx)
        last_micro_batch = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if self.plain and last_micro_batch and trainer.global_step % trainer.log_every_n_steps == 0:
            self._print_line(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        metrics = trainer.callback_metrics
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.plain and trainer.is_global_zero and fitting and "val/loss" in metrics:
            extra = "".join(f" | {key} {float(metrics[key]):.4f}" for key in ("val/bpb",) if key in metrics)
            print(f"step {trainer.global_step}: val/loss {float(metrics['val/loss']):.4f}{extra}", flush=True)

    def _print_line(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        done = trainer.global_step - self._start_step
        seconds = time.perf_counter() - self._start
        parts = [f"step {trainer.global_step}/{trainer.max_steps}" if trainer.max_steps > 0 else f"step {done}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.4f}")
        rate = trainer.logged_metrics.get("train/items_per_sec")  # ThroughputMonitor's, over every process
        if rate is not None:
            parts.append(f"{float(rate):,.0f} tokens/s")
        if trainer.max_steps > 0 and done > 0:
            left = seconds / done * (trainer.max_steps - trainer.global_step)
            parts.append(f"{_duration(seconds)} elapsed, {_duration(left)} left")
        print(" | ".join(parts), flush=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ModelOverview(ModelSummary):
    """The model summary every run prints at its start: what the model is, its parameters (as transformers
    counts them), its training FLOPs per token and per step, and what its weights and AdamW states weigh.
    Lightning's table would show FLOPs of 0 (it counts them only for an example input); this knows them."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self._max_depth:
            return
        model, data = pl_module.model, trainer.datamodule
        c = model.config
        total, without = model.num_params(non_embedding=False), model.num_params()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tokens = data_parallel(trainer)[1] * data.batch_size * trainer.accumulate_grad_batches * data.block_size
        flops = model.flops_per_token()
        heads = f", {c.n_head} heads" if hasattr(c, "n_head") else ""
        log.info(
            f"model: {c.family}, {c.n_layer} layers x {c.n_embd} wide{heads}, context {c.block_size}, vocabulary "
            f"{c.vocab_size:,}; {total:,} parameters ({without:,} without embeddings"
            f"{'' if trainable == total else f', {trainable:,} trainable'}); training FLOPs {_si(flops)} per "
            f"token, {_si(flops * tokens)} per step of {tokens:,} tokens; weights {_si(4 * total, 'B')} in float32, "
            f"AdamW states {_si(8 * total, 'B')}"
        )


def _si(value: float, unit: str = "") -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()
