"""The GPU check: every GPU preset trains, checkpoints, resumes and samples; GPT-2 small's speed and memory.

    python -m benchmarks --gpu            # on a machine with CUDA GPUs: one table, exit 1 on any failure
    python -m benchmarks --gpu --quick    # fewer steps
    LGPT_GPU_CHECK_ON_CPU=1 python -m benchmarks --gpu --quick   # the same runs simulated on the CPU

For each preset: 20 optimizer steps on one GPU (and on all of them when there are several), validation at
the end, then a resume for 5 more steps from the run folder's last.ckpt and a sample from it; the
sharded-checkpoint, HSDP and 2-D (fsdp_tp, on an even number of GPUs) cases save sharded checkpoints, so this is
their round trip; each case's peak memory is held against lgpt-info's plan for it (within 15%). Then GPT-2
small (124M, block 1024, bf16-mixed) with and without `model.compile`: tokens/s, MFU and peak memory.
Data: Tiny Shakespeare from ../shared (GPT-2 BPE for the GPT-2 runs), so no download is needed.
On the CPU the runs use a tiny model and 2 processes: that checks the script, not the GPU.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, row, run_child
from lightning_gpt.checkpoints import read_header

ON_CPU = os.environ.get("LGPT_GPU_CHECK_ON_CPU") == "1"
LOCAL = ["data=local", f"data.path={TINY_SHAKESPEARE}"]
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
    "data.batch_size=4",
    "data.val_batches=2",
    "model.compile=false",
]
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "sample.max_new_tokens=16",
    "trainer.log_every_n_steps=5",
    "+callbacks.peak_memory._target_=benchmarks.gpu.PeakMemory",
]


class PeakMemory(L.Callback):
    """Logs the peak GPU memory of this process (GiB) at the end of training, for the table."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if torch.cuda.is_available() and trainer.is_global_zero:
            peak = torch.cuda.max_memory_allocated() / 2**30
            for logger in trainer.loggers:
                logger.log_metrics({"peak_memory_gib": peak}, step=trainer.global_step)
                logger.save()


def presets(gpus: int) -> dict[str, list[str]]:
    """Each GPU preset of conf/trainer and conf/experiment, as a user launches it on `gpus` GPUs."""
    devices = [f"trainer.devices={gpus}"]
    cases = {
        "trainer=gpu": ["trainer=gpu"],
        "trainer=gpu precision=16-mixed": ["trainer=gpu", "trainer.precision=16-mixed"],  # a scaler: AdamW unfused
        "trainer=ddp": ["trainer=ddp", *devices],
        "trainer=fsdp": ["trainer=fsdp", *devices],
        "trainer=fsdp activation_checkpointing": [
            "trainer=fsdp",
            *devices,
            "trainer.strategy.activation_checkpointing=true",
        ],
        "trainer=multinode (1 node)": ["trainer=multinode", "trainer.num_nodes=1", *devices],
        "experiment=nanogpt_shakespeare_char": ["experiment=nanogpt_shakespeare_char", "trainer=gpu"],
        "experiment=speedrun_baby (Muon)": ["experiment=speedrun_baby", "trainer=gpu"],
        "model=llama_baby": ["model=llama_baby", "trainer=gpu"],
        "model=mamba_baby": ["model=mamba_baby", "trainer=gpu"],
        "model=mamba_baby fsdp": ["model=mamba_baby", "trainer=fsdp", *devices],
        "trainer=fsdp sharded checkpoints (llama)": [
            "model=llama_baby",
            "trainer=fsdp",
            *devices,
            "trainer.strategy.save_distributed_checkpoint=true",
        ],
        "trainer=hsdp (llama)": ["model=llama_baby", "trainer=hsdp", *devices],
        "experiment=gpt2_124m": [
            "experiment=gpt2_124m",
            *devices,
            "logger=csv",
            "data.num_workers=0",
            "trainer.accumulate_grad_batches=2",
        ],
    }
    if gpus % 2 == 0 or ON_CPU:  # tensor parallel over pairs of devices (sharded checkpoints)
        cases["trainer=fsdp_tp (llama)"] = ["model=llama_baby", "trainer=fsdp_tp", *devices]
    if ON_CPU:  # the same launches on CPU processes (gloo), tiny
        tiny = lambda name: [] if "_baby" in name else TINY  # the baby models are CPU-sized already
        cases = {name: [*args, "trainer.accelerator=cpu", *tiny(name)] for name, args in cases.items()}
        cases = {name: [a.replace(f"devices={gpus}", "devices=2") for a in args] for name, args in cases.items()}
    return cases


def metrics(run: Path) -> dict[str, list[float]]:
    """Every logged value of every metric in the run's CSV log."""
    out: dict[str, list[float]] = {}
    with open(run / "csv" / "metrics.csv") as f:
        for line in csv.DictReader(f):
            for key, value in line.items():
                if value not in ("", None):
                    out.setdefault(key, []).append(float(value))
    return out


def folder_name(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", case).strip("_")


def failed(name: str, error: Exception) -> dict[str, Any]:
    """A FAILED row; the whole error goes to stderr at once, since the table keeps only its last line."""
    print(f"[gpu] {name} FAILED:\n{error}", file=sys.stderr, flush=True)
    return row("gpu", name, "FAILED", float("nan"), "", note=str(error).strip().splitlines()[-1][:200])


def check_preset(name: str, args: list[str], steps: int, root: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Train, resume and sample one preset; a row per figure, or one FAILED row."""
    run = root / folder_name(name)
    common = [
        *LOCAL,
        *args,
        *QUIET,
        f"hydra.run.dir={run}",
        "trainer.val_check_interval=1000",
    ]
    try:
        run_child([*lgpt_train(), *common, f"trainer.max_steps={steps}"], env)
        first = metrics(run)
        run_child([*lgpt_train(), *common, f"trainer.max_steps={steps + 5}", "ckpt_path=auto"], env)
        resumed = read_header(run / "checkpoints" / "last.ckpt")["global_step"]  # a file or a sharded folder
        if resumed != steps + 5:
            raise RuntimeError(f"the resumed run's last.ckpt is at step {resumed}, not {steps + 5}")
        sample = Path(lgpt_train()[0]).with_name("lgpt-sample")
        sample_cmd = [str(sample)] if sample.exists() else [lgpt_train()[0], "-m", "lightning_gpt.apps.sample"]
        run_child([*sample_cmd, f"ckpt_path={run}", "max_new_tokens=16"], env)
    except Exception as e:
        return [failed(name, e)]
    rows = [row("gpu", name, "val/loss at the end", first["val/loss"][-1], "nats", note="trained, resumed, sampled")]
    if "train/items_per_sec" in first:
        rows.append(
            row("gpu", name, "tokens/s (all devices)", statistics.median(first["train/items_per_sec"]), "tok/s")
        )
    planned = planned_gib(run)
    rows.append(row("gpu", name, "lgpt-info's plan (per process)", round(planned, 3), "GiB"))
    if "peak_memory_gib" in first:
        peak = first["peak_memory_gib"][-1]
        ratio = round(peak / planned, 3)
        rows.append(row("gpu", name, "peak memory (rank 0)", peak, "GiB", ratio, "0.85 to 1.15", "ratio: to the plan"))
    return rows


def planned_gib(run: Path) -> float:
    """What lgpt-info plans per process for the run as it was configured (its config.yaml, its model), to hold
    against torch.cuda.max_memory_allocated: the planner's check on a GPU."""
    from omegaconf import OmegaConf

    from lightning_gpt.apps.info import plan_settings
    from lightning_gpt.parallel.memory import GIB, plan

    model = read_header(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["model"]
    return plan(model, **plan_settings(OmegaConf.load(run / "config.yaml"))).total / GIB


def gpt2_speed(compile: bool, steps: int, root: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """GPT-2 small at bf16 on one GPU: tokens/s and MFU over the last half of `steps`."""
    name = f"gpt2_small bf16 compile={str(compile).lower()}"
    run = root / folder_name(name)
    shape = TINY if ON_CPU else ["data.batch_size=8"]
    args = [
        *LOCAL,
        "model=gpt2_small",
        "tokenizer=gpt2",
        "trainer=gpu",
        *QUIET,
        *shape,
        f"model.compile={compile}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=100000",
        "trainer.limit_val_batches=0",
        f"hydra.run.dir={run}",
        "callbacks=none",
        "+callbacks.throughput._target_=lightning_gpt.training.callbacks.TokenThroughputMonitor",
        "+callbacks.throughput.peak_flops=null",  # the card's dense bf16 peak, from Lightning's table
    ]
    if ON_CPU:
        args.append("trainer.accelerator=cpu")
    try:
        run_child([*lgpt_train(), *args], env)
        m = metrics(run)
    except Exception as e:
        return [failed(name, e)]
    half = lambda values: statistics.median(values[len(values) // 2 :])  # after compilation and warm-up
    rows = [row("gpu", name, "tokens/s", half(m["train/device/items_per_sec"]), "tok/s")]
    if "train/device/mfu" in m:
        rows.append(row("gpu", name, "MFU", half(m["train/device/mfu"]), "", note="of the dense bf16 peak"))
    if "peak_memory_gib" in m:
        rows.append(row("gpu", name, "peak memory", m["peak_memory_gib"][-1], "GiB"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    gpus = torch.cuda.device_count()
    if not gpus and not ON_CPU:
        raise SystemExit("error: no CUDA GPU here; run `python -m benchmarks --gpu` on a GPU machine")
    steps = 10 if quick else 20
    env = child_env()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lgpt-gpu-check-") as tmp:
        for count in sorted({1, gpus}) if not ON_CPU else [1]:
            for name, args in presets(count).items():
                label = f"{name} ({count} GPU{'s' if count > 1 else ''})" if not ON_CPU else f"{name} (CPU)"
                rows += check_preset(label, args, steps, Path(tmp) / str(count), env)
                print(f"[gpu] {label}: {rows[-1]['metric']} {rows[-1]['value']:.4g}", file=sys.stderr, flush=True)
        for compile in (False, True):
            rows += gpt2_speed(compile, 8 if ON_CPU else (30 if quick else 60), Path(tmp), env)
    return rows
