"""Time to first step: from launching `lgpt-train` to the end of its first optimizer step, data already cached.

The end-to-end figure is measured on the real console script (one warm-up launch fills the data cache
and the OS file cache first). The breakdown runs the same stages one by one in a fresh process, in the
order the app runs them, each stage paying for the imports it is first to need:

    python -m benchmarks.startup breakdown <overrides>   # the breakdown child alone
"""

from __future__ import annotations

import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import child_env, lgpt_train, read_json_line, row, run_child

TAG = "BENCH_FIRST_STEP "
STAGES_TAG = "BENCH_STAGES "
MARKER = [f"+callbacks.bench_first_step._target_={__name__}.first_step_marker"]
# The packages whose import cost we list (first import, with what they pull in that was not loaded yet).
PACKAGES = (
    "hydra",
    "torch",
    "lightning",
    "torchmetrics",
    "transformers",
    "matplotlib",
    "torch._dynamo",
    "datasets",
    "tiktoken",
    "tensorboard",
    "wandb",
)
ENTRY_IMPORTS = (
    "import lightning_gpt.apps.train, lightning_gpt.data.module, lightning_gpt.training.module, "
    "lightning_gpt.training.callbacks"
)


def first_step_marker():
    """A Lightning callback printing the wall-clock time at the end of the first optimizer step, then exiting."""
    import lightning as L

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 1:
                print(TAG + json.dumps(time.time()), flush=True)
                os._exit(0)

    return FirstStep()


def breakdown(overrides: list[str]) -> None:
    """Run lgpt-train's stages one by one, printing how long each took (child process)."""
    stages = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    from lightning_gpt.training.build import build_datamodule, build_model_config, build_trainer

    stage("import lightning_gpt.apps.train (the entry point)")
    from benchmarks.training import compose

    cfg = compose([*overrides, *MARKER, f"paths.output_dir={os.environ.get('LGPT_ROOT', '.')}/breakdown"])
    stage("compose the config (Hydra)")
    import lightning as L
    from omegaconf import OmegaConf

    stage("import torch + lightning")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    tokenizer = datamodule.tokenizer
    stage("data: open the cached tokens")
    from lightning_gpt.training.module import GPTLightningModule

    run_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # what task() passes on
    module = GPTLightningModule(
        model=build_model_config(cfg, tokenizer),
        tokenizer=tokenizer.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        compile=cfg.model.compile,
        config=OmegaConf.to_container(run_config, resolve=True),
    )
    stage("model: build the GPT")
    trainer = build_trainer(cfg)
    stage("Trainer, loggers and callbacks")
    print(STAGES_TAG + json.dumps({"stages": stages, "fit_start": time.time()}), flush=True)
    trainer.fit(module, datamodule=datamodule)


def _launch(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if TAG not in proc.stdout:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... never reached a first step:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return start, proc.stdout


def import_costs(env: dict[str, str]) -> dict[str, float]:
    """Seconds of import per top-level package (python -X importtime self times, summed), largest first."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", ENTRY_IMPORTS], env=env, capture_output=True, text=True, check=True
    )
    costs: dict[str, float] = collections.Counter()
    for match in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)$", proc.stderr, re.M):
        costs[match[2].split(".")[0]] += int(match[1]) / 1e6
    return dict(sorted(costs.items(), key=lambda kv: -kv[1]))


def run(quick: bool) -> list[dict]:
    launches = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-startup-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        cmd = [*lgpt_train(), *MARKER]
        _launch(cmd, env)  # warm-up: tokenizes the corpus into the cache, warms the OS file cache
        times = []
        for _ in range(launches):
            start, stdout = _launch(cmd, env)
            times.append(read_json_line(stdout, TAG) - start)
        interpreter = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            interpreter.append(time.perf_counter() - start)
        stdout = run_child([sys.executable, "-m", __name__, "breakdown"], env)
        stages = read_json_line(stdout, STAGES_TAG)
        costs = import_costs(env)

    total = statistics.median(times)
    parts = {
        "start the Python interpreter": statistics.median(interpreter),
        **stages["stages"],
        "fit: until the end of step 1": read_json_line(stdout, TAG) - stages["fit_start"],
    }
    rows = [
        row(
            "startup",
            "lgpt-train (defaults)",
            "time to first step",
            round(total, 2),
            "s",
            target="<= 10",
            note=f"median of {launches} launches {[round(t, 2) for t in times]}; data cached; "
            f"the breakdown below ran in one more process and sums to {sum(parts.values()):.2f} s",
        )
    ]
    rows += [row("startup", "breakdown", name, round(seconds, 2), "s") for name, seconds in parts.items()]
    rows.append(
        row(
            "startup",
            "imports",
            "all imports of our modules",
            round(sum(costs.values()), 2),
            "s",
            note=f"python -X importtime -c '{ENTRY_IMPORTS}'",
        )
    )
    shown = [name for name in costs if costs[name] >= 0.05 or name == "lightning_gpt"]
    for name in shown:
        rows.append(
            row(
                "startup",
                "imports",
                f"import {name}",
                round(costs[name], 2),
                "s",
                note="self time of its modules, summed" if name == shown[0] else None,
            )
        )
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] != ["breakdown"]:
        sys.exit("usage: python -m benchmarks.startup breakdown [overrides ...]")
    breakdown(sys.argv[2:])
