"""`experiment=speedrun_baby` against `experiment=nanogpt_baby`: wall-clock and tokens to val loss 1.8857.

A race is two whole `lgpt-train` runs of one seed, started together, that take turns CHUNK optimizer steps at
a time (a validation counts in the turn of the step it follows), so both see the same background load. A
run's time is the sum of its own turns from its first step: waiting for the other is not counted, nor is the
start-up before the first step (imports, tokenizing), the same for both. Both validate on the same 240 fixed
windows (the speedrun preset keeps val_batches x batch_size at nanoGPT's 20 x 12) and stop at the first
validation at or below the target (`callbacks=[default,stop_at_loss]`).

- `python -m benchmarks speedrun`: three seeds of the race, then the ablations: speedrun_baby with one
  ingredient removed at a time, raced against the whole recipe (seed 1337); then the loss-vs-time plot of
  the first race, docs/img/speedrun_loss.png.
- `--quick`: one seed, no ablations.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import ROOT, TINY_SHAKESPEARE, Baton, child_env, lgpt_train, open_baton, row

TARGET = 1.8857  # nanoGPT's val loss after the 2000 steps of its CPU recipe
CHUNK = 10
SEEDS = (1337, 1338, 1339)
BATON = "LGPT_BENCH_RACE"  # "<str(Baton)>,<file for the validations>"
ABLATIONS = {  # each ingredient removed, as overrides on top of experiment=speedrun_baby
    "AdamW instead of Muon": ["optim.name=adamw"],
    "cosine schedule instead of WSD": ["optim.schedule=cosine"],
    "no QK-norm": ["model.qk_norm=false"],
    "SwiGLU (llama_baby's, width 384) instead of ReLU²": ["model.mlp=swiglu", "model.intermediate_size=null"],
    "GPT-2-style init instead of zero-init": ["model.zero_init_out=false"],
    "tied head": ["model.tie_embeddings=true"],
    "Muon momentum 0.95 (the default) instead of 0.85": ["optim.muon_momentum=0.95"],
}


def race_timer():
    """The Lightning callback each raced run gets: `+callbacks.race._target_=benchmarks.speedrun.race_timer`."""
    import lightning as L

    baton, log = os.environ[BATON].rsplit(",", 1)
    go, done = open_baton(baton)

    class RaceTimer(L.Callback):
        own = 0.0  # seconds of this run's own turns
        started = 0.0
        tokens = 0

        def _turn(self) -> None:
            if os.read(go, 1) != b"g":
                os._exit(1)  # the benchmark is gone
            self.started = time.perf_counter()

        def _hand_over(self, signal: bytes) -> None:
            self.own += time.perf_counter() - self.started
            os.write(done, signal)

        def on_train_start(self, trainer, pl_module) -> None:
            self._turn()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if (
                trainer.global_step
                and trainer.global_step % CHUNK == 0
                and batch_idx % trainer.accumulate_grad_batches == 0
            ):
                self._hand_over(b"d")  # after the previous step's validation, if it had one
                self._turn()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.tokens += batch[0].numel()

        def on_validation_end(self, trainer, pl_module) -> None:
            seconds = self.own + time.perf_counter() - self.started
            loss = float(trainer.callback_metrics["val/loss"])
            record = dict(step=trainer.global_step, seconds=seconds, tokens=self.tokens, val_loss=loss)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")

        def on_train_end(self, trainer, pl_module) -> None:
            self._hand_over(b"e")
            self._turn()  # the final checkpoint and sample take a turn too, not the other run's time

    return RaceTimer()


def race(commands: dict[str, list[str]], env: dict[str, str], timeout: float = 1800) -> dict[str, list[dict]]:
    """Run the commands taking turns; each one's validations as {step, seconds, tokens, val_loss}."""
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-race-") as tmp:
        procs, batons, logs, outputs = {}, {}, {}, {}
        for i, (name, cmd) in enumerate(commands.items()):
            batons[name] = Baton(Path(tmp), str(i))
            logs[name], outputs[name] = Path(tmp) / f"{i}.jsonl", Path(tmp) / f"{i}.log"
            with open(outputs[name], "w") as out:
                run_env = {**env, BATON: f"{batons[name]},{logs[name]}"}
                procs[name] = subprocess.Popen(cmd, env=run_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            running = list(commands)
            while running:
                for name in list(running):
                    os.write(batons[name].go, b"g")
                    turn_end = batons[name].wait(procs[name], timeout)  # d: its turn is over; e: it ended training
                    if turn_end == b"e":
                        os.write(batons[name].go, b"g")  # its final checkpoint and sample, alone
                    if turn_end != b"d":
                        running.remove(name)
                        if procs[name].wait(timeout) != 0:
                            tail = outputs[name].read_text(errors="replace")[-3000:]
                            raise RuntimeError(f"{name} failed:\n{tail}")
            return {name: [json.loads(line) for line in logs[name].read_text().splitlines()] for name in commands}
        finally:
            for name in commands:
                procs[name].kill()
                batons[name].close()


def command(experiment: str, seed: int, run_dir: Path, *extra: str) -> list[str]:
    return [
        *lgpt_train(),
        f"experiment={experiment}",
        "data=local",
        f"data.path={TINY_SHAKESPEARE}",
        f"seed={seed}",
        "callbacks=[default,stop_at_loss]",
        f"callbacks.stop_at_loss.target={TARGET}",
        "+callbacks.race._target_=benchmarks.speedrun.race_timer",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def reached(validations: list[dict], target: float = TARGET) -> dict | None:
    return next((v for v in validations if v["val_loss"] <= target), None)


def describe(validations: list[dict]) -> str:
    hit = reached(validations)
    if hit is None:
        return f"not reached: val {validations[-1]['val_loss']:.4f} at step {validations[-1]['step']}"
    return f"{hit['seconds']:.1f} s, {hit['tokens']:,} tokens, step {hit['step']}, val {hit['val_loss']:.4f}"


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, validations in curves.items():
        ax.plot([v["seconds"] for v in validations], [v["val_loss"] for v in validations], "o-", label=name, ms=4)
    ax.axhline(TARGET, color="grey", ls="--", lw=1, label=f"target {TARGET}")
    ax.set(xlabel="training seconds (own turns, 2-core CPU)", ylabel="val loss", ylim=(1.7, 3.0))
    ax.set_title("Tiny Shakespeare (char): val loss against wall-clock")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def run(quick: bool) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-speedrun-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        ratios, first = [], None
        for seed in SEEDS[:1] if quick else SEEDS:
            runs = {
                "nanogpt_baby": command("nanogpt_baby", seed, Path(tmp) / f"nanogpt-{seed}"),
                "speedrun_baby": command("speedrun_baby", seed, Path(tmp) / f"speedrun-{seed}"),
            }
            result = race(runs, env)
            first = first or result
            for name, validations in result.items():
                hit = reached(validations)
                value = round(hit["seconds"], 1) if hit else float("nan")
                rows.append(
                    row(
                        "speedrun",
                        f"{name} seed {seed}",
                        f"seconds to val {TARGET}",
                        value,
                        "s",
                        note=describe(validations),
                    )
                )
            base, fast = (reached(result[name]) for name in runs)
            if fast:
                # nanogpt_baby's time to the target, or to the end of its 2000 steps if it never got there
                base_seconds = (base or result["nanogpt_baby"][-1])["seconds"]
                ratios.append(fast["seconds"] / base_seconds)
                tokens = fast["tokens"] / (base or result["nanogpt_baby"][-1])["tokens"]
                note = f"tokens ratio {tokens:.3f}" + ("" if base else "; nanogpt_baby's whole run (not reached)")
                rows.append(
                    row(
                        "speedrun",
                        f"seed {seed}",
                        "time ratio speedrun/nanogpt",
                        round(ratios[-1], 3),
                        "x",
                        ratio=round(ratios[-1], 3),
                        target="<= 0.4",
                        note=note,
                    )
                )
        if ratios:
            rows.append(
                row(
                    "speedrun",
                    "all seeds",
                    "median time ratio",
                    round(statistics.median(ratios), 3),
                    "x",
                    ratio=round(max(ratios), 3),
                    target="<= 0.4",
                    note=f"worst {max(ratios):.3f}",
                )
            )
        if first:
            plot(first, ROOT / "docs" / "img" / "speedrun_loss.png")
        for name, overrides in {} if quick else ABLATIONS.items():
            runs = {
                "whole": command("speedrun_baby", SEEDS[0], Path(tmp) / f"whole-{len(rows)}"),
                name: command("speedrun_baby", SEEDS[0], Path(tmp) / f"ablation-{len(rows)}", *overrides),
            }
            result = race(runs, env)
            whole, ablated = reached(result["whole"]), reached(result[name])
            ratio = round(ablated["seconds"] / whole["seconds"], 3) if whole and ablated else float("nan")
            rows.append(
                row(
                    "speedrun ablation",
                    name,
                    "time to target vs whole recipe",
                    ratio,
                    "x",
                    note=f"{describe(result[name])}; whole: {describe(result['whole'])}",
                )
            )
    return rows
