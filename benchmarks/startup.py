"""Time to first step: from launching `lgpt-train` to the end of its first optimizer step, data already cached.

The end-to-end figure is measured on the real console script (one warm-up launch fills the data cache
and the OS file cache first). The breakdown runs the same stages one by one in a fresh process, in the
order the app runs them, each stage paying for the imports it is first to need:

    python -m benchmarks.startup breakdown <overrides>   # the breakdown child alone

The short-run row compares a whole 2-step `lgpt-train experiment=nanogpt_baby` process with a hand-written
loop doing the same work in plain torch, as nanoGPT's train.py would (nanoGPT is not a dependency):

    python -m benchmarks.startup hand_loop               # that loop alone
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, read_json_line, row, run_child

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


def hand_loop() -> None:
    """What a 2-step `lgpt-train experiment=nanogpt_baby` run does, written by hand in plain torch: the same
    model, data, batch, optimizer and clipping; a validation pass of the same size, a checkpoint and a
    200-character sample at the end."""
    import torch

    from lightning_gpt.models import build
    from lightning_gpt.models.gpt2.config import GPTConfig

    torch.manual_seed(1337)
    text = TINY_SHAKESPEARE.read_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    block, batch = 64, 12

    def get_batch(split: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(split) - block - 1, (batch,))
        x = torch.stack([split[i : i + block] for i in ix])
        return x, torch.stack([split[i + 1 : i + 1 + block] for i in ix])

    config = GPTConfig(vocab_size=len(chars), block_size=block, n_layer=4, n_head=4, n_embd=128, activation="gelu")
    model = build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(2):
        _, loss = model(*get_batch(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = sum(model(*get_batch(val))[1].item() for _ in range(20)) / 20
        idx = torch.zeros((1, 1), dtype=torch.long)
        for _ in range(200):
            logits, _ = model(idx[:, -block:])
            probs = torch.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1)), dim=1)
    with tempfile.TemporaryDirectory() as out:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f"{out}/ckpt.pt")
    print(f"step 2: val/loss {val_loss:.4f}")
    print("".join(chars[i] for i in idx[0].tolist()))


def _launch(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if TAG not in proc.stdout:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... never reached a first step:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return start, proc.stdout


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run_child(cmd, env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def short_run(launches: int, root: str, env: dict[str, str]) -> list[dict]:
    """A whole 2-step nanogpt_baby run against the hand-written loop, taking turns, one torch thread each
    (so the ratio does not depend on how busy the machine's cores are)."""
    env = {**env, "OMP_NUM_THREADS": "1"}
    ours_cmd = [*lgpt_train(), "experiment=nanogpt_baby", "trainer.max_steps=2", f"paths.root_dir={root}"]
    hand_cmd = [sys.executable, "-m", __name__, "hand_loop"]
    _timed(ours_cmd, env), _timed(hand_cmd, env)  # warm-up: the token cache, the OS file cache
    ours, hand = [], []
    for _ in range(launches):
        ours.append(_timed(ours_cmd, env))
        hand.append(_timed(hand_cmd, env))
    rows = []
    for i, measure in ((0, "wall"), (1, "CPU")):
        a, b = statistics.median(t[i] for t in ours), statistics.median(t[i] for t in hand)
        rows.append(
            row(
                "startup",
                "2-step run: experiment=nanogpt_baby vs a hand-written torch loop",
                f"{measure} seconds, whole process",
                round(a, 2),
                "s",
                ratio=round(a / b, 2),
                target="<= 1.2",
                note=f"hand loop {b:.2f} s; median of {launches} launches each, taking turns, OMP_NUM_THREADS=1",
            )
        )
    return rows


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
        rows = short_run(launches, tmp, env)

    total = statistics.median(times)
    parts = {
        "start the Python interpreter": statistics.median(interpreter),
        **stages["stages"],
        "fit: until the end of step 1": read_json_line(stdout, TAG) - stages["fit_start"],
    }
    rows[:0] = [
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
    if sys.argv[1:2] == ["hand_loop"]:
        hand_loop()
    elif sys.argv[1:2] == ["breakdown"]:
        breakdown(sys.argv[2:])
    else:
        sys.exit("usage: python -m benchmarks.startup breakdown [overrides ...] | hand_loop")
