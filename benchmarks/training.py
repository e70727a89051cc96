"""Training throughput: a real `lgpt-train` run against a hand-written PyTorch loop doing the same work.

Both sides run in fresh processes, one at a time, alternating, and each keeps its best trial (noise on a
shared machine only ever slows a run down):
- lgpt-train: the real Hydra app with its default callbacks (checkpointing, LR monitor, throughput,
  progress bar refreshed every 10 steps), CSV logger and logging every 10 steps. One extra callback
  (`step_timer`) reads the clock at the end of two steps and exits the process after the second, so the
  window holds only whole training steps: no start-up, no validation, no final checkpoint.
- the loop: the same composed config, the same `GPT` class and seed (so the same initial weights), the same
  batches from the same data module, AdamW with the same parameter groups, the same LR schedule, gradient
  clipping and precision; `loss.item()` every 10 steps as nanoGPT logs. No Lightning.
Both report the loss of the last step: equal losses show that they did the same work.

    python -m benchmarks.training loop <overrides> --first 20 --last 240   # the hand loop alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, read_json_line, row, run_child

TAG = "BENCH_STEPS "


def _clock(device_type: str) -> float:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()  # only at the two ends of the window: the steps in between stay asynchronous
    return time.perf_counter()


def _report(times: list[float], tokens_per_step: int, loss: float, flops_per_token: int) -> None:
    chunks = [b - a for a, b in zip(times, times[1:])]
    result = {"chunks": chunks, "tokens_per_step": tokens_per_step, "loss": loss, "flops_per_token": flops_per_token}
    print(TAG + json.dumps(result), flush=True)


def step_timer(first: int, last: int, chunk: int):
    """A Lightning callback reading the clock every `chunk` steps from step first to last, then ending the process."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if first <= step <= last and (step - first) % chunk == 0:
                self.times.append(_clock(pl_module.device.type))
            if step == last:
                _report(self.times, batch[0].numel(), float(outputs["loss"]), pl_module.model.flops_per_token())
                os._exit(0)  # skip the final checkpoint and sample: they are not training throughput

    return StepTimer()


def compose(overrides: list[str]):
    """The lgpt-train config for these overrides, composed as the app does it (outside a Hydra run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lightning_gpt.cli import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def hand_loop(overrides: list[str], first: int, last: int, chunk: int) -> None:
    """nanoGPT's training loop on the pieces lgpt-train composes, without Lightning."""
    import torch

    from lightning_gpt.model import GPT, GPTConfig
    from lightning_gpt.module import cosine_lr
    from lightning_gpt.train import build_datamodule, build_model_config

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
    fused = o.fused if o.fused is not None else device.type == "cuda"
    optimizer = torch.optim.AdamW(model.optimizer_groups(o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=fused)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr(step, o.lr, o.min_lr, o.warmup_steps, o.decay_steps) / o.lr
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    batches = iter(datamodule.train_dataloader())
    times, losses = [], []
    for step in range(1, last + 1):
        x, y = (part.to(device, non_blocking=True) for part in next(batches))
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        if trainer.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % trainer.log_every_n_steps == 0:
            losses.append(loss.item())
        if first <= step and (step - first) % chunk == 0:
            times.append(_clock(device.type))
    _report(times, x.numel(), loss.item(), model.flops_per_token())


@dataclass
class Case:
    name: str
    overrides: list[str]
    first: int  # the window starts after this many optimizer steps (warm-up excluded) ...
    last: int  # ... and ends after this many, before the first validation
    chunk: int  # steps per timed chunk; 10 holds one logging and one progress-bar refresh
    settings: str


def _trial(side: str, case: Case, env: dict[str, str]) -> dict[str, Any]:
    window = {"first": case.first, "last": case.last, "chunk": case.chunk}
    if side == "lgpt-train":
        timer = [f"+callbacks.bench_timer._target_={__name__}.step_timer"]
        timer += [f"+callbacks.bench_timer.{k}={v}" for k, v in window.items()]
        cmd = [*lgpt_train(), *case.overrides, *timer]
    else:
        cmd = [sys.executable, "-m", __name__, "loop", *case.overrides, *(f"--{k}={v}" for k, v in window.items())]
    return read_json_line(run_child(cmd, env), TAG)


def compare(case: Case, trials: int, env: dict[str, str]) -> list[dict]:
    """Alternate lgpt-train and the hand loop `trials` times. Each side's rate comes from its median chunk
    over all trials: robust to other processes stealing the CPU now and then, yet every chunk pays the
    periodic costs (logging, progress bar) in full."""
    sides = ("hand loop", "lgpt-train")
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(trials):
        for side in sides:
            results[side].append(_trial(side, case, env))
    tokens_per_chunk = case.chunk * results["hand loop"][0]["tokens_per_step"]
    median = {side: statistics.median(c for r in results[side] for c in r["chunks"]) for side in sides}
    rate = {side: tokens_per_chunk / median[side] for side in sides}
    overhead_ms = 1000 * (median["lgpt-train"] - median["hand loop"]) / case.chunk
    per_trial = {side: [round(tokens_per_chunk * len(r["chunks"]) / sum(r["chunks"])) for r in results[side]]
                 for side in sides}  # fmt: skip
    losses = {side: results[side][-1]["loss"] for side in sides}
    rows = [
        row(
            "training",
            case.name,
            "tokens/s hand loop",
            round(rate["hand loop"]),
            "tok/s",
            note=f"{case.settings}; whole-window rate per trial {per_trial['hand loop']}",
        ),  # fmt: skip
        row(
            "training",
            case.name,
            "tokens/s lgpt-train",
            round(rate["lgpt-train"]),
            "tok/s",
            ratio=round(rate["lgpt-train"] / rate["hand loop"], 3),
            target=">= 0.97",
            note=f"{overhead_ms:+.2f} ms/step vs the loop; whole-window rate per trial {per_trial['lgpt-train']}; "
            f"last-step loss {losses['lgpt-train']:.4f} vs loop {losses['hand loop']:.4f}",
        ),  # fmt: skip
    ]
    peak = _peak_flops()
    if peak:
        flops_per_token = results["hand loop"][0]["flops_per_token"]
        for side in sides:
            rows.append(row("training", case.name, f"MFU {side}", round(100 * rate[side] * flops_per_token / peak, 1),
                            "%", note="bf16 peak from lightning's get_available_flops"))  # fmt: skip
    return rows


def _peak_flops() -> float | None:
    """Peak bf16 FLOP/s of the GPU, where Lightning knows it; None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(torch.device("cuda"), torch.bfloat16)


def cases(quick: bool) -> list[Case]:
    import torch

    data = ["data=local", f"data.path={TINY_SHAKESPEARE}"] if TINY_SHAKESPEARE.exists() else []
    first, last = (20, 120) if quick else (30, 240)  # its first validation is at step 250
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
            out.append(Case(f"gpt2_small bf16 compile={compile_}",
                            [*gpt2, "trainer=gpu", "data.batch_size=12", f"model.compile={compile_}"], first, last, 10,
                            f"GPT-2 small, 12x1024 tokens/step, bf16-mixed, steps {first + 1}-{last}"))  # fmt: skip
    else:
        first, last = (2, 5) if quick else (3, 11)
        out.append(Case("gpt2_small shape", [*gpt2, "trainer=cpu", "model.block_size=128", "data.batch_size=2"],
                        first, last, 1, f"GPT-2 small (124M) at block_size=128, 2x128 tokens/step, fp32, "
                        f"steps {first + 1}-{last}"))  # fmt: skip
    return out


def run(quick: bool) -> list[dict]:
    import tempfile

    trials = 1 if quick else 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-train-") as tmp:
        env = child_env(LGPT_ROOT=tmp, LGPT_CACHE_DIR=os.environ.get("LGPT_BENCH_CACHE", f"{tmp}/cache"))
        for case in cases(quick):
            rows += compare(case, trials, env)
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
