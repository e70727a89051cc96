"""CPU threads under background load: training tokens/s with torch's default thread count against
OMP_NUM_THREADS=1 and =2, on the machine as it is and with one more busy process per core running beside it.

On a loaded machine, torch's threads (one per core by default) wait for each other at every parallel
region while the scheduler hands their cores to other processes, so a step can take many times longer.
lgpt-train's default (`lightning_gpt.apps.launch.fit_threads_to_load`) uses fewer threads when the load average
says the cores are busy; the "lgpt default" case measures that rule.

    python -m benchmarks.threads [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import child_env, read_json_line, row

TAG = "BENCH_THREADS "
CASES = {
    "torch default": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "OMP_NUM_THREADS=2": {"OMP_NUM_THREADS": "2"},
    "lgpt default": {"LGPT_BENCH_RULE": "1"},
}


def child(seconds: float) -> None:
    """Train nanoGPT's baby model on random tokens for `seconds` after warm-up; print tokens/s."""
    import torch

    from lightning_gpt.apps.console import fit_threads_to_load
    from lightning_gpt.models.gpt2.model import GPT, GPTConfig

    if os.environ.get("LGPT_BENCH_RULE"):
        fit_threads_to_load()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 65, (12, 65))

    def step() -> None:
        _, loss = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    result = {"tokens_per_s": steps * 12 * 64 / elapsed, "threads": torch.get_num_threads(), "steps": steps}
    print(TAG + json.dumps(result), flush=True)


def measure(env: dict[str, str], seconds: float) -> dict[str, Any]:
    env = {k: v for k, v in child_env(**env).items() if k != "OMP_NUM_THREADS" or "OMP_NUM_THREADS" in env}
    cmd = [sys.executable, "-m", "benchmarks.threads", "--child", str(seconds)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return read_json_line(done.stdout + done.stderr, TAG)


def run(quick: bool) -> list[dict[str, Any]]:
    seconds = 4.0 if quick else 8.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows = []
    for extra in (0, cores):  # the machine as it is, then with one more busy process per core
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(extra)]
        try:
            time.sleep(2 if busy else 0)
            results = {name: measure(env, seconds) for name, env in CASES.items()}
            load_average = os.getloadavg()[0]
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
        base = results["torch default"]["tokens_per_s"]
        for name, r in results.items():
            note = f"{r['threads']} threads, {cores} cores, load average {load_average:.1f}"
            rows.append(
                row(
                    "threads",
                    f"{name}, +{extra} busy",
                    "tokens/s",
                    round(r["tokens_per_s"]),
                    "tokens/s",
                    ratio=round(r["tokens_per_s"] / base, 2),
                    note=note,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from benchmarks.__main__ import markdown

    print(markdown(run(args.quick)))


if __name__ == "__main__":
    main()
