"""Saving and loading a trainer=fsdp checkpoint, one file against sharded, on N CPU processes (gloo):
`python -m benchmarks.sharded [--processes 2 4] [--layers 12]` prints a markdown table for docs/benchmarks.md.

Each process builds the same Llama (~170M parameters with the defaults), shards it with FSDP2 over the N
processes, takes one AdamW step (so the optimizer holds both moments), then saves and loads as FSDPStrategy does:

- one file: every process gathers the whole weights and moments to process 0 (`get_model_state_dict` /
  `get_optimizer_state_dict` with full_state_dict and cpu_offload), which writes one .ckpt (AtomicCheckpointIO);
  loading memory-maps the file on every process and sends process 0's tensors to each shard.
- sharded: each process writes its own shards (ShardedCheckpointWriter: DCP, checksums, a link made last);
  loading reads each process's pieces (DCP).

Per process: the peak resident memory during the operation above the resident memory before it (VmHWM reset
first, glibc's mmap threshold fixed so that freed tensors go back to the system), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 2**20


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def measured(fn: Any) -> dict[str, float]:
    """Run fn; its peak resident memory above the start (MiB) and its wall time (s), with every process timed
    from a common start."""
    import torch.distributed as dist

    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before, start = rss()[0], time.perf_counter()
    fn()
    dist.barrier()
    return {"peak_mib": (rss()[1] - before) / MIB, "seconds": time.perf_counter() - start}


def worker(rank: int, world: int, port: int, layers: int, folder: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from lightning_gpt.models import build
    from lightning_gpt.parallel.apply import parallelize
    from lightning_gpt.parallel.checkpoint import (
        ShardedCheckpointWriter,
        load_sharded,
        optimizer_state_by_index,
        optimizer_state_by_name,
    )
    from lightning_gpt.parallel.mesh import MeshSizes, build_mesh
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config = dict(family="llama", n_layer=layers, n_head=16, n_kv_head=8, n_embd=1024, block_size=64, vocab_size=8192)
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.model = build(config)
    parallelize(holder.model, build_mesh("cpu", MeshSizes(1, world, 1)))
    optimizer = torch.optim.AdamW(holder.parameters(), lr=1e-4)
    tokens = torch.randint(0, config["vocab_size"], (1, 17))
    holder.model(tokens[:, :-1], tokens[:, 1:])[1].backward()
    optimizer.step()
    optimizer.zero_grad()
    params = sum(p.numel() for p in holder.parameters())
    file, sharded = Path(folder) / "one.ckpt", Path(folder) / "sharded.ckpt"
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    result: dict[str, Any] = {"parameters": params}

    def save_file() -> None:  # FSDPStrategy.save_checkpoint with save_distributed_checkpoint=false
        state = {"state_dict": get_model_state_dict(holder, options=full)}
        moments = get_optimizer_state_dict(holder, optimizer, options=full)
        if rank == 0:
            AtomicCheckpointIO().save_checkpoint(
                {**state, "optimizer_states": [optimizer_state_by_index(moments)]}, file
            )

    def save_sharded() -> None:
        state = {
            "state_dict": get_model_state_dict(holder),
            "optimizer_states": [get_optimizer_state_dict(holder, optimizer)],
        }
        ShardedCheckpointWriter().save({**state, "global_step": 1}, sharded)

    def load_file() -> None:  # FSDPStrategy._load_full
        checkpoint = torch.load(file, mmap=True, map_location="cpu", weights_only=True)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(holder, checkpoint["state_dict"], options=options)
        names = [n for n, _ in holder.named_parameters()]
        shapes = {n: tuple(p.shape) for n, p in holder.named_parameters()}
        named = optimizer_state_by_name(checkpoint["optimizer_states"][0], names, names, shapes)
        set_optimizer_state_dict(holder, optimizer, named, options=options)

    for name, fn in (("save one file", save_file), ("save sharded", save_sharded)):
        result[name] = measured(fn)
    for name, fn in (
        ("load one file", load_file),
        ("load sharded", lambda: load_sharded(sharded, holder, [optimizer])),
    ):
        result[name] = measured(fn)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run(world: int, layers: int) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by glibc as each spawned process starts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder, tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, port, layers, folder, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharded", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args(argv)
    print("| processes | parameters | operation | process 0 peak MiB | other processes' peak MiB (max) | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for world in args.processes:
        ranks = run(world, args.layers)
        for op in ("save one file", "save sharded", "load one file", "load sharded"):
            peaks = [r[op]["peak_mib"] for r in ranks]
            seconds = max(r[op]["seconds"] for r in ranks)
            print(
                f"| {world} | {ranks[0]['parameters'] / 1e6:.0f}M | {op} | {peaks[0]:.0f} | {max(peaks[1:]):.0f} "
                f"| {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
