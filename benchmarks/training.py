"""Training throughput: a real `lgpt-train` run against a hand-written PyTorch loop doing the same work.

- lgpt-train: the real Hydra app with its default callbacks (checkpointing, LR monitor, throughput,
  progress bar refreshed every 10 steps), CSV logger and logging every 10 steps, plus one callback
  (`step_timer`) that times the steps and ends the process after the last timed one: no validation, final
  checkpoint or sample in the window.
- the loop: the same composed config, the same `GPT` class and seed (so the same initial weights), the same
  batches from the same data module, AdamW with the same parameter groups, the same LR schedule, gradient
  clipping and precision; `loss.item()` every 10 steps as nanoGPT logs; gradients zeroed just before
  backward (the faster place, see hand_loop). No Lightning.
Both report the loss of their last step: equal losses show that they did the same work.

Shared machines are noisy, so the two run side by side and take turns: each warms up, then they run one
chunk of steps at a time, alternately, while the other waits on a pipe. Consecutive chunks of the two
sides thus see the same background load; each side's rate comes from its median chunk. A chunk of 10
steps pays for one logging and one progress-bar refresh, so periodic costs are counted in full.

    python -m benchmarks.training loop <overrides> --first 20 --last 240 --chunk 10  # the hand loop alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import TINY_SHAKESPEARE, Baton, child_env, lgpt_train, open_baton, read_json_line, row

TAG = "BENCH_STEPS "
BATON = "LGPT_BENCH_BATON"  # str(Baton): its two named pipes, set by paired_trial
SIDES = ("hand loop", "lgpt-train")


@dataclass
class Case:
    name: str
    overrides: list[str]
    first: int  # timing starts after this many optimizer steps (warm-up excluded) ...
    last: int  # ... and ends after this many, before the first validation
    chunk: int  # steps per timed chunk
    settings: str


class ChunkTimer:
    """Times chunks of `chunk` steps from step `first` to `last`; between chunks, hands over to the other side."""

    def __init__(self, first: int, last: int, chunk: int, device_type: str):
        self.first, self.last, self.chunk, self.device_type = first, last, chunk, device_type
        self.chunks: list[float] = []
        self.start: float | None = None
        baton = os.environ.get(BATON)
        self.go, self.done = open_baton(baton) if baton else (None, None)

    def clock(self) -> float:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()  # only at chunk ends: the steps in between stay asynchronous
        return time.perf_counter()

    def after_step(self, step: int) -> bool:
        """Call after each optimizer step; True once the last step is timed."""
        if step < self.first or (step - self.first) % self.chunk:
            return False
        if self.start is not None:
            self.chunks.append(self.clock() - self.start)
        if self.done is not None:
            os.write(self.done, b"d")
        if step == self.last:
            return True
        if self.go is not None and os.read(self.go, 1) != b"g":
            os._exit(1)  # the benchmark is gone
        self.start = self.clock()
        return False

    def report(self, tokens_per_step: int, loss: float, flops_per_token: int) -> None:
        result = {
            "chunks": self.chunks,
            "tokens_per_step": tokens_per_step,
            "loss": loss,
            "flops_per_token": flops_per_token,
        }
        print(TAG + json.dumps(result), flush=True)


def step_timer(first: int, last: int, chunk: int):
    """The Lightning callback lgpt-train gets (+callbacks.bench_timer._target_=benchmarks.training.step_timer)."""
    import lightning as L

    class StepTimer(L.Callback):
        timer: ChunkTimer | None = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.timer = self.timer or ChunkTimer(first, last, chunk, pl_module.device.type)
            if self.timer.after_step(trainer.global_step):
                self.timer.report(batch[0].numel(), float(outputs["loss"]), pl_module.model.flops_per_token())
                os._exit(0)  # skip the final checkpoint and sample: they are not training throughput

    return StepTimer()


def compose(overrides: list[str]):
    """The lgpt-train config for these overrides, composed as the app does it (outside a Hydra run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lightning_gpt.apps.launch import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def hand_loop(overrides: list[str], first: int, last: int, chunk: int) -> None:
    """nanoGPT's training loop on the pieces lgpt-train composes, without Lightning."""
    import torch

    from lightning_gpt.apps.console import fit_threads_to_load
    from lightning_gpt.models.gpt2.model import GPT, GPTConfig
    from lightning_gpt.optim import cosine_lr
    from lightning_gpt.training.build import build_datamodule, build_model_config

    fit_threads_to_load()  # the thread count lgpt-train would choose: like against like on a loaded machine
    cfg = compose(overrides)
    o, trainer = cfg.optim, cfg.trainer
    device = torch.device("cuda" if torch.cuda.is_available() and trainer.accelerator != "cpu" else "cpu")
    precision = trainer.precision or "32-true"
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise ValueError(f"the hand loop knows 32-true and bf16-mixed, not {precision}")
    torch.manual_seed(cfg.seed)  # as L.seed_everything: the same initial weights as lgpt-train
    datamodule = build_datamodule(cfg)
    model = GPT(GPTConfig(**build_model_config(cfg, datamodule.tokenizer))).to(device)
    if cfg.model.compile:
        model.compile()
    fused = o.fused if o.fused is not None else device.type in ("cuda", "cpu")  # as GPTLightningModule
    optimizer = torch.optim.AdamW(
        model.optimizer_groups(o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr(step, o.lr, o.min_lr, o.warmup_steps, o.decay_steps) / o.lr
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    timer = ChunkTimer(first, last, chunk, device.type)
    batches = iter(datamodule.train_dataloader())
    losses = []
    for step in range(1, last + 1):
        x, y = (part.to(device, non_blocking=True) for part in next(batches))
        with autocast:
            _, loss = model(x, y)
        # Zeroing here (as Lightning does) rather than after the step (as nanoGPT does) made GPT-2-sized steps
        # 1.2x faster on CPU: the baseline is the faster of the two.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainer.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        if step % trainer.log_every_n_steps == 0:
            losses.append(loss.item())
        timer.after_step(step)
    timer.report(x.numel(), loss.item(), model.flops_per_token())


def _lgpt_train(case: Case, extra: tuple[str, ...] = ()) -> list[str]:
    timer = [f"+callbacks.bench_timer._target_={__name__}.step_timer"]
    timer += [
        f"+callbacks.bench_timer.{k}={v}"
        for k, v in (("first", case.first), ("last", case.last), ("chunk", case.chunk))
    ]
    return [*lgpt_train(), *case.overrides, *extra, *timer]


def _hand_loop(case: Case) -> list[str]:
    window = [f"--first={case.first}", f"--last={case.last}", f"--chunk={case.chunk}"]
    return [sys.executable, "-m", __name__, "loop", *case.overrides, *window]


def paired_trial(commands: dict[str, list[str]], chunks: int, env: dict[str, str], timeout: float = 600) -> dict:
    """Start two runs; once both are warm, let them run one chunk at a time, taking turns. Their reports by name."""
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-pair-") as tmp:
        procs, batons, logs = {}, {}, {}
        for i, (name, cmd) in enumerate(commands.items()):
            batons[name], logs[name] = Baton(Path(tmp), str(i)), Path(tmp) / f"{i}.log"
            with open(logs[name], "w") as log:
                run_env = {**env, BATON: str(batons[name])}
                procs[name] = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT)

        def output(name: str) -> str:
            return logs[name].read_text(errors="replace")

        def wait_done(name: str) -> None:
            if batons[name].wait(procs[name], timeout) != b"d":
                for proc in procs.values():
                    proc.kill()
                raise RuntimeError(f"the {name} run stopped or hung; its output ends with:\n{output(name)[-3000:]}")

        names = list(commands)
        try:
            for name in names:
                wait_done(name)  # warmed up
            for i in range(chunks):
                for name in names if i % 2 == 0 else names[::-1]:
                    os.write(batons[name].go, b"g")
                    wait_done(name)
            for proc in procs.values():
                proc.wait(timeout=60)
            return {name: read_json_line(output(name), TAG) for name in names}
        finally:
            for proc in procs.values():
                proc.kill()
            for baton in batons.values():
                baton.close()


def _median_chunks(results: list[dict], name: str) -> float:
    return statistics.median(c for r in results for c in r[name]["chunks"])


def compare(case: Case, trials: int, env: dict[str, str]) -> list[dict]:
    """Rows for both sides' tokens/s (from their median chunk over all trials) and their ratio."""
    commands = {"hand loop": _hand_loop(case), "lgpt-train": _lgpt_train(case)}
    results = [paired_trial(commands, (case.last - case.first) // case.chunk, env) for _ in range(trials)]
    tokens_per_chunk = case.chunk * results[0]["hand loop"]["tokens_per_step"]
    median = {side: _median_chunks(results, side) for side in SIDES}
    rate = {side: tokens_per_chunk / median[side] for side in SIDES}
    overhead_ms = 1000 * (median["lgpt-train"] - median["hand loop"]) / case.chunk
    chunks = sum(len(r["hand loop"]["chunks"]) for r in results)
    losses = {side: results[-1][side]["loss"] for side in SIDES}
    rows = [
        row(
            "training",
            case.name,
            "tokens/s hand loop",
            round(rate["hand loop"]),
            "tok/s",
            note=f"{case.settings}; median of {chunks} chunks of {case.chunk} steps, taking turns",
        ),
        row(
            "training",
            case.name,
            "tokens/s lgpt-train",
            round(rate["lgpt-train"]),
            "tok/s",
            ratio=round(rate["lgpt-train"] / rate["hand loop"], 3),
            target=">= 0.97",
            note=f"{overhead_ms:+.2f} ms/step vs the loop; "
            f"last-step loss {losses['lgpt-train']:.4f} vs loop {losses['hand loop']:.4f}",
        ),
    ]
    peak = _peak_flops()
    if peak:
        flops_per_token = results[0]["hand loop"]["flops_per_token"]
        for side in SIDES:
            rows.append(
                row(
                    "training",
                    case.name,
                    f"MFU {side}",
                    round(100 * rate[side] * flops_per_token / peak, 1),
                    "%",
                    note="of the GPU's dense bf16 peak",
                )
            )
    return rows


def option(case: Case, override: str, env: dict[str, str], why: str) -> dict:
    """A row: lgpt-train's speed with one override relative to its defaults, the two taking turns."""
    commands = {"defaults": _lgpt_train(case), "override": _lgpt_train(case, (override,))}
    results = [paired_trial(commands, (case.last - case.first) // case.chunk, env)]
    speed = _median_chunks(results, "defaults") / _median_chunks(results, "override")
    return row("training", case.name, f"speed with {override}", round(speed, 3), "x defaults", note=why)


# Options that the defaults settle (full run only): below 1 means the defaults are faster.
OPTIONS = {
    "nanogpt_baby": [
        ("optim.fused=false", "the default is fused AdamW, on CPUs too"),
        ("data.num_workers=2", "loader workers compete with the model for 2 cores; default 0"),
        ("model.compile=true", "compilation (in the warm-up) buys nothing at this size on CPU"),
    ],
    "gpt2_small shape": [("optim.fused=false", "the default is fused AdamW, on CPUs too")],
}


def _peak_flops() -> float | None:
    """Peak bf16 FLOP/s of the GPU, as the training app's MFU takes it; None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    from lightning_gpt.training.callbacks import h200_peak_flops

    cuda = torch.device("cuda")
    return h200_peak_flops(torch.cuda.get_device_name(cuda), "bf16-mixed") or get_available_flops(cuda, torch.bfloat16)


def cases(quick: bool) -> list[Case]:
    import torch

    data = ["data=local", f"data.path={TINY_SHAKESPEARE}"] if TINY_SHAKESPEARE.exists() else []
    first, last = (20, 140) if quick else (30, 240)  # its first validation is at step 250
    out = [
        Case(
            "nanogpt_baby",
            ["experiment=nanogpt_baby", *data],
            first,
            last,
            10,
            f"experiment=nanogpt_baby (0.8M params), 12x64 tokens/step, fp32, steps {first + 1}-{last}",
        )
    ]
    gpt2 = ["model=gpt2_small", "tokenizer=gpt2", "model.vocab_multiple=64", *data]
    if torch.cuda.is_available():
        first, last = (10, 30) if quick else (20, 120)
        for compile_ in (False, True):
            out.append(
                Case(
                    f"gpt2_small bf16 compile={compile_}",
                    [*gpt2, "trainer=gpu", "data.batch_size=12", f"model.compile={compile_}"],
                    first,
                    last,
                    10,
                    f"GPT-2 small, 12x1024 tokens/step, bf16-mixed, steps {first + 1}-{last}",
                )
            )
    elif not quick:  # a GPT-2-sized step takes seconds on a CPU: too long for --quick
        first, last = 3, 15
        out.append(
            Case(
                "gpt2_small shape",
                [*gpt2, "trainer=cpu", "model.block_size=128", "data.batch_size=2"],
                first,
                last,
                1,
                f"GPT-2 small (124M) at block_size=128, 2x128 tokens/step, fp32, steps {first + 1}-{last}",
            )
        )
    return out


def run(quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-train-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        for case in cases(quick):
            rows += compare(case, 1 if quick else 2, env)
            if not quick:
                rows += [option(case, override, env, why) for override, why in OPTIONS.get(case.name, [])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["loop"])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--last", type=int, required=True)
    parser.add_argument("--chunk", type=int, required=True)
    args = parser.parse_args()
    hand_loop(args.overrides, args.first, args.last, args.chunk)


if __name__ == "__main__":
    main()
