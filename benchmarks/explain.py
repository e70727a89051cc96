"""lgpt-explain and the attention-maps callback on CPU.

- page: time to compute and write the page (`explain` + `write_page`) for the nanogpt_shakespeare_char shape
  (10.7M parameters, random weights) and a 64-token prompt, and the file's size; then how the size grows with
  the prompt; then the same page for the llama_baby and mamba_baby shapes, 32 tokens of prompt and 32 new (Mamba's
  page holds step sizes and state norms instead of attention).
- callback: a real `lgpt-train experiment=nanogpt_baby` run with `callbacks=[default,attention_maps]` and
  TensorBoard on, timing each training step and each `AttentionMaps.on_validation_end` inside the run; the
  cost is one validation's maps over the 250 steps between validations (the preset's `val_check_interval`).
  The ratio uses CPU time (the run has one thread: OMP_NUM_THREADS=1), which other processes on a shared
  machine disturb far less than wall time; wall times are in the notes.

    python -m benchmarks.explain [--quick]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

from benchmarks import TINY_SHAKESPEARE, TimesSteps, child_env, lgpt_train, read_json_line, row, run_child
from lightning_gpt.training.callbacks import AttentionMaps

TAG = "ATTENTION_MAPS_TIMING "


class TimedAttentionMaps(TimesSteps, AttentionMaps):
    """AttentionMaps that times itself and the training steps around it, and prints both at the end."""

    def __init__(self, **kwargs):
        super().__init__("maps", **kwargs)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.timed("maps"):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(TAG + json.dumps(self.times), flush=True)


def page_rows() -> list[dict]:
    import torch

    from lightning_gpt.explainer import explain, write_page
    from lightning_gpt.models import build
    from lightning_gpt.models.gpt2.model import GPT, GPTConfig
    from lightning_gpt.models.llama.config import LlamaConfig
    from lightning_gpt.models.mamba.config import MambaConfig
    from lightning_gpt.tokenizers import CharTokenizer

    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_texts([text])
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=tokenizer.vocab_size, n_layer=6, n_head=6, n_embd=384)).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        explain(model, tokenizer, text[:8], max_new_tokens=2)  # warm-up
        times, sizes = [], {}
        for prompt_tokens in (64, 64, 64, 16, 128):
            start = time.perf_counter()
            path = write_page(explain(model, tokenizer, text[:prompt_tokens]), Path(tmp) / "page.html")
            if prompt_tokens == 64:
                times.append(time.perf_counter() - start)
            sizes[prompt_tokens] = path.stat().st_size / 1e6
        # The other families at their CPU presets' shapes (conf/model/llama_baby.yaml, mamba_baby.yaml): a context of
        # 64, so half of it for the prompt and half for the continuation.
        families, V = {}, tokenizer.vocab_size
        for name, config in (
            (
                "llama_baby",
                LlamaConfig(block_size=64, vocab_size=V, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, multiple_of=64),
            ),
            ("mamba_baby", MambaConfig(block_size=64, vocab_size=V, n_layer=7, n_embd=128)),
        ):
            other = build(config).eval()
            explain(other, tokenizer, text[:8], max_new_tokens=2)  # warm-up
            start = time.perf_counter()
            path = write_page(explain(other, tokenizer, text[:32], max_new_tokens=32), Path(tmp) / f"{name}.html")
            families[name] = (time.perf_counter() - start, path.stat().st_size / 1e6)
    case = "nano_char shape (10.7M), 64-token prompt, CPU"
    rows.append(
        row(
            "explain",
            case,
            "page time",
            round(statistics.median(times), 2),
            "s",
            target="< 5",
            note="explain() + write_page(), 40 new tokens; median of 3",
        )
    )
    rows.append(
        row(
            "explain",
            case,
            "page size",
            round(sizes[64], 2),
            "MB",
            target="< 5",
            note=f"16 tokens: {sizes[16]:.2f} MB, 128 tokens: {sizes[128]:.2f} MB",
        )
    )
    for name, (seconds, size) in families.items():
        rows.append(
            row(
                "explain",
                f"{name} shape (random weights), 32-token prompt, CPU",
                "page time and size",
                round(seconds, 2),
                "s",
                target="< 5",
                note=f"{size:.2f} MB; explain() + write_page(), 32 new tokens (the context is 64), one run",
            )
        )
    return rows


def callback_rows(quick: bool) -> list[dict]:
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
                "logger=[csv,tensorboard]",
                "callbacks=[default,attention_maps]",
                "callbacks.attention_maps._target_=benchmarks.explain.TimedAttentionMaps",
                f"hydra.run.dir={tmp}/run",
            ],
            env=child_env(LGPT_ROOT=tmp, OMP_NUM_THREADS="1"),
            timeout=900,
        )
    t = {
        name: statistics.median(values[10:] if name.startswith("steps") else values)
        for name, values in read_json_line(out, TAG).items()
    }
    case = "nanogpt_baby, CPU, TensorBoard + CSV"
    maps_note = "forward pass, matplotlib figure, PNG file, TensorBoard image"
    return [
        row(
            "explain",
            case,
            "attention maps per validation (CPU time)",
            round(t["maps_cpu"], 3),
            "s",
            note=f"wall {t['maps']:.3f} s; median of {steps // interval}: {maps_note}",
        ),
        row(
            "explain",
            case,
            "training step (CPU time)",
            round(t["steps_cpu"] * 1000, 1),
            "ms",
            note=f"wall {t['steps'] * 1000:.1f} ms; median, same run",
        ),
        row(
            "explain",
            case,
            "attention maps cost",
            round(100 * t["maps_cpu"] / (250 * t["steps_cpu"]), 1),
            "% of training time",
            target="<= 2",
            note="one validation's maps over 250 steps (val_check_interval), CPU time; off by default",
        ),
    ]


def run(quick: bool) -> list[dict]:
    return page_rows() + callback_rows(quick)


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(r)
