"""The downstream callback's cost during training, and bits per byte where training logs it, on CPU.

A real `lgpt-train experiment=nanogpt_baby` run with `callbacks=[default,downstream]` (the default questions:
the first 100 of 200 Shakespeare next-line questions, 400 choices scored at each validation), timing each
training step and each `DownstreamEval.on_validation_epoch_end` inside the run, as benchmarks/explain.py
times the attention maps. The cost is one validation's scoring over the 250 steps between validations (the
preset's `val_check_interval`), in CPU time (the run has one thread: OMP_NUM_THREADS=1), which other
processes on a shared machine disturb far less than wall time. The same run's last val/bpb is checked against
val/loss / ln 2: a char model on ASCII text, with no end-of-text, scores one byte per target.

    python -m benchmarks.evaluation [--quick]
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile

import lightning as L

from benchmarks import TINY_SHAKESPEARE, TimesSteps, child_env, lgpt_train, read_json_line, row, run_child
from lightning_gpt.training.callbacks import DownstreamEval

TAG = "DOWNSTREAM_TIMING "


class TimedDownstream(TimesSteps, DownstreamEval):
    """DownstreamEval that times itself and the training steps around it, and prints both with the last
    validation's metrics at the end."""

    def __init__(self, **kwargs):
        super().__init__("eval", **kwargs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed("eval"):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "eval/"))}
        print(TAG + json.dumps({**self.times, "metrics": metrics, "step": trainer.global_step}), flush=True)


def run(quick: bool) -> list[dict]:
    steps, interval = (120, 60) if quick else (500, 250)
    with tempfile.TemporaryDirectory() as tmp:
        out = run_child(
            [
                *lgpt_train(),
                "experiment=nanogpt_baby",
                "data=local",
                f"data.path={TINY_SHAKESPEARE}",
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={interval}",
                "trainer.enable_progress_bar=false",
                "callbacks=[default,downstream]",
                "callbacks.downstream._target_=benchmarks.evaluation.TimedDownstream",
                f"hydra.run.dir={tmp}/run",
            ],
            env=child_env(LGPT_ROOT=tmp, OMP_NUM_THREADS="1"),
            timeout=900,
        )
    record = read_json_line(out, TAG)
    t = {
        name: statistics.median(values[10:] if name.startswith("steps") else values)
        for name, values in record.items()
        if name not in ("metrics", "step")
    }
    metrics, step = record["metrics"], record["step"]
    case = "nanogpt_baby, CPU, 100 questions (400 choices)"
    task = "eval/shakespeare_next_line"
    bpb, loss = metrics["val/bpb"], metrics["val/loss"]
    return [
        row(
            "evaluation",
            case,
            "downstream eval per validation (CPU time)",
            round(t["eval_cpu"], 3),
            "s",
            note=f"wall {t['eval']:.3f} s; median of {steps // interval}: 13 batched forwards of 32 choices",
        ),
        row(
            "evaluation",
            case,
            "training step (CPU time)",
            round(t["steps_cpu"] * 1000, 1),
            "ms",
            note=f"wall {t['steps'] * 1000:.1f} ms; median, same run",
        ),
        row(
            "evaluation",
            case,
            "downstream cost",
            round(100 * t["eval_cpu"] / (250 * t["steps_cpu"]), 1),
            "% of training time",
            note="one validation's scoring over 250 steps (val_check_interval), CPU time; off by default",
        ),
        row(
            "evaluation",
            f"nanogpt_baby at step {step}",
            "val/bpb",
            round(bpb, 4),
            "bits/byte",
            note=f"val/loss {loss:.4f} / ln 2 = {loss / math.log(2):.4f} (char model, ASCII text: one byte per "
            f"target); {task}/acc_norm {metrics[f'{task}/acc_norm']:.2f} (chance 0.25)",
        ),
    ]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(r)
