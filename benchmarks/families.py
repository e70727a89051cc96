"""The model families side by side at nanoGPT's CPU budget: GPT-2 (`model=baby`), `llama_baby`, `mamba_baby`.

All three are about 0.8M parameters with the char vocabulary and train with `experiment=nanogpt_baby` on Tiny
Shakespeare (batch 12, block 64, AdamW, 2000 steps). Per family:

- val loss: a whole `lgpt-train` run each (its last validation, on the fixed validation windows);
- training tokens/s: the three runs side by side, taking turns one chunk of steps at a time (as the training
  benchmark does), so each sees the same background load; the median chunk;
- generation tokens/s: one sequence, 64 new tokens with the cache after a prompt of 64 and of 1024 tokens (the
  prompt's own pass, which yields the first token, is not timed; the two contexts take turns 8 tokens at a
  time, and each rate is from its median chunk), on
  random weights of the same shape with a context of 1088 (the baby presets' 64 has no room for 1024).
  Attention reads a cache that grows with the context; Mamba's recurrent state does not grow.

Three whole runs take about half an hour on 2 cores (Mamba's step is the slow one), so this is not among the
default benchmarks: `python -m benchmarks --only families` (`--quick`: 200 steps each).
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, row, run_child
from benchmarks.training import Case, _lgpt_train, _median_chunks, paired_trial

FAMILIES = {"gpt2 (baby)": "baby", "llama_baby": "llama_baby", "mamba_baby": "mamba_baby"}
CONTEXTS = (64, 1024)
NEW_TOKENS = 64
CHUNK = 8


def _overrides(model: str) -> list[str]:
    return ["experiment=nanogpt_baby", "data=local", f"data.path={TINY_SHAKESPEARE}", f"model={model}"]


def last_val_loss(run_dir: Path) -> tuple[int, float]:
    """(step, val/loss) of a run's last validation, from its csv/metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    return int(rows[-1]["step"]) + 1, float(rows[-1]["val/loss"])


def quality(name: str, model: str, steps: int, env: dict[str, str], tmp: Path) -> list[dict]:
    run_dir = tmp / model
    start = time.perf_counter()
    cmd = [*lgpt_train(), *_overrides(model), f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}"]
    run_child(cmd, env, timeout=3 * 3600)
    seconds = time.perf_counter() - start
    step, loss = last_val_loss(run_dir)
    return [row("families", name, f"val/loss at step {step}", round(loss, 4), "nats", note=f"run took {seconds:.0f} s")]


def speed(steps: tuple[int, int], env: dict[str, str]) -> list[dict]:
    first, last = steps
    cases = {name: Case(name, _overrides(model), first, last, 10, "") for name, model in FAMILIES.items()}
    commands = {name: _lgpt_train(case) for name, case in cases.items()}
    results = [paired_trial(commands, (last - first) // 10, env, timeout=1800)]
    tokens_per_chunk = 10 * results[0]["gpt2 (baby)"]["tokens_per_step"]
    rates = {name: tokens_per_chunk / _median_chunks(results, name) for name in FAMILIES}
    return [
        row(
            "families",
            name,
            "training tokens/s",
            round(rate),
            "tok/s",
            ratio=round(rate / rates["gpt2 (baby)"], 3),
            note=f"steps {first + 1}-{last}, median of chunks of 10, the three taking turns; ratio to gpt2",
        )
        for name, rate in rates.items()
    ]


def generation_rows() -> list[dict]:
    import torch
    from omegaconf import OmegaConf

    from lightning_gpt.apps.launch import CONF_DIR
    from lightning_gpt.generation import generate
    from lightning_gpt.models import build, config_from_dict

    rows = []
    for name, model in FAMILIES.items():
        shape = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / f"{model}.yaml"))
        shape["family"] = shape.pop("defaults")[0]  # the family the preset builds on
        shape.update(vocab_size=65, block_size=max(CONTEXTS) + NEW_TOKENS)
        torch.manual_seed(0)
        net = build(config_from_dict(shape)).eval()
        # Both contexts decode side by side, taking turns 8 tokens at a time: the median chunk of each.
        streams, chunks = {}, {context: [] for context in CONTEXTS}
        for context in CONTEXTS:
            prompt = torch.randint(0, 65, (1, context), generator=torch.Generator().manual_seed(0))
            streams[context] = generate(net, prompt, NEW_TOKENS + 1, generator=torch.Generator().manual_seed(0))
            next(streams[context])  # the prompt's pass (prefill) yields the first token: not timed
        for _ in range(NEW_TOKENS // CHUNK):
            for context in CONTEXTS:
                start = time.perf_counter()
                for _ in range(CHUNK):
                    next(streams[context])
                chunks[context].append(time.perf_counter() - start)
        rates = {context: CHUNK / statistics.median(chunks[context]) for context in CONTEXTS}
        for context, rate in rates.items():
            rows.append(
                row(
                    "families",
                    name,
                    f"generation tokens/s after {context}",
                    round(rate, 1),
                    "tok/s",
                    ratio=round(rate / rates[CONTEXTS[0]], 3) if context != CONTEXTS[0] else None,
                    note=f"ratio to {CONTEXTS[0]} tokens of context" if context != CONTEXTS[0] else None,
                )
            )
    return rows


def run(quick: bool) -> list[dict]:
    rows = generation_rows()
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-families-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        rows += speed((10, 50) if quick else (30, 130), env)
        for name, model in FAMILIES.items():
            rows += quality(name, model, 200 if quick else 2000, env, Path(tmp))
    return rows


if __name__ == "__main__":  # python -m benchmarks.families generation: the generation rows alone (seconds)
    import sys

    from benchmarks.__main__ import markdown

    if sys.argv[1:] != ["generation"]:
        sys.exit("usage: python -m benchmarks.families generation")
    print(markdown(generation_rows()))
