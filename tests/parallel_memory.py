"""Measure what lightning_gpt.parallel.memory estimates, on CPU processes: `python -m tests.parallel_memory` prints
the comparison table; tests/test_parallel_memory.py checks a few rows.

Three measurements, each process on its own:
- stored bytes, counted from the real tensors (their local storages, each once): weights after setup,
  gradients after backward, optimizer states after the step. FSDP's padding and tied weights count as stored.
- peak live tensor bytes over a training step, by torch's own MemTracker (torch.distributed._tools; one
  process) or FSDPMemTracker (FSDP2): what the allocator must hold at once, attributed to parameters,
  gradients, optimizer states, activations and temporaries.
- the peak resident memory (VmHWM, reset before the step) above the resident memory before the model was
  built, with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the
  system: an independent check of the total.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tests.parallel_workers import free_port

MIB = 2**20
MMAP = "65536"  # bytes: every tensor larger than this is its own mapping, returned to the system when freed


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind tensors (DTensors: their local pieces)."""
    seen, total = set(), 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def worker(rank: int, world: int, port: int, settings: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, 2 // world))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(measure(settings, rank, world), Path(out) / f"rank{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def measure(settings: dict, rank: int, world: int) -> dict[str, Any]:
    from lightning_gpt.models import build
    from lightning_gpt.optim import build_optimizer
    from lightning_gpt.schema import OptimConfig

    config, strategy = settings["model"], settings.get("strategy", "ddp")
    batch, precision = settings["micro_batch"], settings.get("precision", "32-true")
    block = settings.get("block_size", config["block_size"])
    g = torch.Generator().manual_seed(rank)
    tokens = [torch.randint(0, config["vocab_size"], (batch, block + 1), generator=g) for _ in range(2)]
    base = rss()[0]

    torch.manual_seed(0)
    model = build(config)
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    forward = model
    if strategy == "ddp" and world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    elif strategy != "ddp":
        from lightning_gpt.parallel.apply import parallelize
        from lightning_gpt.parallel.mesh import MeshSizes, build_mesh

        t = settings.get("tensor_parallel_size", 1)
        r = settings.get("data_parallel_replicate", 1)
        parallelize(
            model,
            build_mesh("cpu", MeshSizes(r, world // (r * t), t)),
            precision=precision,
            activation_checkpointing=settings.get("activation_checkpointing", False),
            sequence_parallel=settings.get("sequence_parallel", False),
        )
    if strategy == "ddp" and settings.get("activation_checkpointing"):
        from lightning_gpt.library_internals import checkpoint_in_place

        for block_module in model.blocks:
            checkpoint_in_place(block_module)
    o = OptimConfig(name=settings.get("optimizer", "adamw"), lr=1e-4, muon_lr=1e-3)
    optimizer = build_optimizer(model, o, fused=True)  # as the project's default: no foreach temporaries
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed")

    def step(x: torch.Tensor) -> None:
        with autocast:
            _, loss = forward(x[:, :-1], x[:, 1:])
        loss.backward()

    step(tokens[0])  # the first step creates the gradients and the optimizer states
    result: dict[str, Any] = {
        "weights": storage_bytes(list(model.parameters())),
        "gradients": storage_bytes([p.grad for p in model.parameters() if p.grad is not None]),
    }
    optimizer.step()
    optimizer.zero_grad()
    result["optimizer"] = storage_bytes(optimizer_tensors(optimizer))
    result["rss_before_step"] = rss()[0] - base

    saved: dict[int, int] = {}  # what autograd keeps for backward: distinct storages, parameters excluded
    parameters = {
        (p.to_local() if hasattr(p, "to_local") else p).untyped_storage().data_ptr() for p in model.parameters()
    }

    def pack(t: torch.Tensor) -> torch.Tensor:
        local = t.to_local() if hasattr(t, "to_local") else t
        try:
            storage = local.untyped_storage()
            pointer = storage.data_ptr()
        except RuntimeError:  # a wrapper without storage of its own (a collective's pending result)
            return t
        if pointer not in parameters:
            saved[pointer] = storage.nbytes()
        return t

    reset_peak()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast:
            _, loss = forward(tokens[1][:, :-1], tokens[1][:, 1:])
    result["saved_activations"] = sum(saved.values())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    result["rss_peak"] = rss()[1] - base

    if world == 1 and settings.get("tracker", True):  # torch's tensor-level peak, by category
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            with autocast:
                _, loss = forward(tokens[1][:, :-1], tokens[1][:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        from torch.distributed._tools.mem_tracker import _ModState

        def named(snapshot: dict) -> dict[str, int]:
            return {str(getattr(k, "value", k)).lower(): v for k, v in snapshot[torch.device("cpu")].items()}

        result["tracker"] = named(tracker.get_tracker_snapshot("peak"))
        # Activations at their peak: the model's own peaks in forward (the loss included) and in backward,
        # less the parameters, gradients and optimizer states alive then (robust to activation checkpointing,
        # where the tracker may count recomputed activations as temporaries).
        snapshots = tracker.memory_tracking[model].snapshots
        peaks = [named(s) for state in (_ModState.PEAK_FW, _ModState.PEAK_BW) for s in snapshots.get(state, [])]
        stored = ("parameter", "buffer", "gradient", "optstate")
        result["tracker_activations"] = max(p["total"] - sum(p[k] for k in stored) for p in peaks)
    return result


def run(settings: dict, world: int = 1) -> list[dict[str, Any]]:
    """Measure in `world` fresh processes (a fresh process for one as well: a clean resident baseline)."""
    import tempfile

    import torch.multiprocessing as mp

    os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP  # read by glibc when each spawned process starts
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), settings, out), nprocs=world, join=True)
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]


def estimate(settings: dict, world: int) -> Any:
    from lightning_gpt.parallel.memory import plan

    keys = (
        "precision",
        "activation_checkpointing",
        "optimizer",
        "tensor_parallel_size",
        "data_parallel_replicate",
        "sequence_parallel",
    )
    return plan(
        settings["model"],
        devices=world,
        strategy=settings.get("strategy", "ddp"),
        micro_batch=settings["micro_batch"],
        block_size=settings.get("block_size"),
        **{k: settings[k] for k in keys if k in settings},
    )


LLAMA_25M = dict(family="llama", n_layer=6, n_head=8, n_kv_head=4, n_embd=512, block_size=256, vocab_size=8192)
GPT_25M = dict(family="gpt2", n_layer=6, n_head=8, n_embd=512, block_size=256, vocab_size=8192)
MAMBA_20M = dict(family="mamba", n_layer=8, n_embd=384, block_size=256, vocab_size=8192)

CASES = [
    ("llama 25M, 1 process, fp32", dict(model=LLAMA_25M, micro_batch=4), 1),
    ("llama 25M, activation checkpointing", dict(model=LLAMA_25M, micro_batch=4, activation_checkpointing=True), 1),
    ("llama 25M, bf16-mixed (autocast)", dict(model=LLAMA_25M, micro_batch=4, precision="bf16-mixed"), 1),
    ("llama 25M, muon", dict(model=LLAMA_25M, micro_batch=4, optimizer="muon"), 1),
    ("gpt2 25M, 1 process, fp32", dict(model=GPT_25M, micro_batch=4), 1),
    ("mamba 20M, 1 process, fp32", dict(model=MAMBA_20M, micro_batch=2), 1),
    ("llama 25M, ddp x 2", dict(model=LLAMA_25M, micro_batch=4, tracker=False), 2),
    ("llama 25M, fsdp x 2", dict(model=LLAMA_25M, micro_batch=4, strategy="fsdp", tracker=False), 2),
    (
        "llama 25M, fsdp+tp 2 x 2",
        dict(model=LLAMA_25M, micro_batch=4, strategy="fsdp+tp", tensor_parallel_size=2, tracker=False),
        4,
    ),
    (
        "llama 25M, fsdp+tp 2 x 2, sequence parallel",
        dict(
            model=LLAMA_25M,
            micro_batch=4,
            strategy="fsdp+tp",
            tensor_parallel_size=2,
            sequence_parallel=True,
            tracker=False,
        ),
        4,
    ),
]


def activations_by_rss(settings: dict, world: int) -> int:
    """Activations of `micro_batch` sequences as the growth of process 0's peak resident memory from
    micro_batch to 2 x micro_batch sequences: everything else stays, whatever the allocator keeps."""
    one = run({**settings, "tracker": False}, world)[0]["rss_peak"]
    two = run({**settings, "tracker": False, "micro_batch": 2 * settings["micro_batch"]}, world)[0]["rss_peak"]
    return two - one


def main(names: list[str]) -> None:
    print(
        "| case | weights est / counted | gradients est / counted | optimizer est / counted | "
        "activations est / RSS growth / MemTracker peak / saved by autograd | total est / peak RSS growth |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, settings, world in CASES:
        if names and not any(n in name for n in names):
            continue
        m, e = run(settings, world)[0], estimate(settings, world)
        slope = activations_by_rss(settings, world)
        tracker = f"{m['tracker_activations'] / MIB:.1f}" if "tracker_activations" in m else "-"
        d = e.detail
        print(
            f"| {name} | {d['weights'] / MIB:.1f} / {m['weights'] / MIB:.1f} "
            f"| {d['gradients'] / MIB:.1f} / {m['gradients'] / MIB:.1f} "
            f"| {d['optimizer'] / MIB:.1f} / {m['optimizer'] / MIB:.1f} "
            f"| {e.activations / MIB:.1f} / {slope / MIB:.1f} / {tracker} / {m['saved_activations'] / MIB:.1f} "
            f"| {e.total / MIB:.1f} / {m['rss_peak'] / MIB:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
