"""Memory: peak resident set size (RSS) of a short `lgpt-train` run and of `lgpt-sample`, each in its own process.

Every command runs under a small Python wrapper that reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`
after it exits, so the figure is that one process's peak (the largest of its children's, if it had any).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, read_json_line, row, run_child

TAG = "BENCH_MAXRSS "
WRAPPER = (
    "import json, resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    f"print({TAG!r} + json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)); sys.exit(code)"
)


def peak_rss(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    """Peak RSS of `cmd` in MB (ru_maxrss is in kilobytes on Linux)."""
    return read_json_line(run_child([sys.executable, "-c", WRAPPER, *cmd], env, cwd=cwd), TAG) / 1e6


def run(quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-memory-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        imports = "import torch, lightning, lightning_gpt.apps.train, lightning_gpt.training.module"
        rows.append(
            row(
                "memory",
                "imports only",
                "peak RSS",
                round(peak_rss([sys.executable, "-c", imports], env)),
                "MB",
                note="the libraries alone: a floor for both apps",
            )
        )

        steps = 20 if quick else 100
        run_dir = Path(tmp) / "baby"
        train = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
        from lightning_gpt.data.cache import prepare_tokens
        from lightning_gpt.data.sources import Source

        prepare_tokens(Source("embedded"), "char", 0.1, env["LGPT_CACHE_DIR"])  # what lgpt-train's defaults read
        fresh_cache = [f"paths.cache_dir={tmp}/fresh-cache"]
        cases = [("data cached", [f"hydra.run.dir={run_dir}"])]
        if not quick:
            cases.insert(0, ("first run: tokenizes the corpus", fresh_cache))
        for case, extra in cases:
            rows.append(
                row(
                    "memory",
                    f"lgpt-train defaults (0.8M params, char), {case}",
                    "peak RSS",
                    round(peak_rss([*lgpt_train(), *train, *extra], env)),
                    "MB",
                    note=f"{steps} steps, one validation, checkpoints, final sample",
                )
            )
        tokens = 200 if quick else 500
        sample = [sys.executable, "-m", "lightning_gpt.apps.sample", f"ckpt_path={run_dir}", f"max_new_tokens={tokens}"]
        rows.append(
            row(
                "memory",
                "lgpt-sample (the run above)",
                "peak RSS",
                round(peak_rss(sample, env, cwd=tmp)),
                "MB",
                note=f"{tokens} new tokens, KV cache",
            )
        )
        if not quick:
            data = ["data=local", f"data.path={TINY_SHAKESPEARE}"] if TINY_SHAKESPEARE.exists() else []
            gpt2 = [
                "model=gpt2_small",
                "tokenizer=gpt2",
                "model.vocab_multiple=64",
                "model.block_size=128",
                "data.batch_size=2",
                "data.val_batches=1",
                "trainer.max_steps=3",
                "trainer.val_check_interval=3",
                "callbacks=none",
                "sample.max_new_tokens=20",
                *data,
            ]
            rows.append(
                row(
                    "memory",
                    "lgpt-train GPT-2 small shape (124M params)",
                    "peak RSS",
                    round(peak_rss([*lgpt_train(), *gpt2], env)),
                    "MB",
                    note="block_size=128, batch 2, 3 steps, fp32 AdamW, callbacks=none",
                )
            )
    return rows
