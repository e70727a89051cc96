"""Processes for tests/test_parallel*.py: `spawn` starts N gloo processes running one of the functions below,
each writing what it measured to a file the test reads back. Real torch.distributed, nothing mocked."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# A Llama small enough for 4 processes on 2 cores, whose head counts and MLP width a tensor-parallel size of 2
# divides; 3 layers so blocks differ; vocabulary 96 (a multiple of 2, as the row split of the embedding needs).
LLAMA = dict(
    family="llama", n_layer=3, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64, block_size=16, vocab_size=96
)
STEPS, BATCH, CLIP, LR = 3, 4, 0.5, 3e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, out: Path, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)  # N processes on 2 cores: one thread each, or they thrash
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, out: Path, *args: Any) -> list[Any]:
    """Run fn(rank, world, *args) in `world` gloo processes; the list of what each returned, by rank."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(_entry, args=(fn, world, free_port(), out, args), nprocs=world, join=True)
    except Exception as e:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("rank*.error")))
        raise AssertionError(f"a process failed:\n{errors or e}") from None
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def batches(config: dict, steps: int = STEPS, batch: int = BATCH) -> list[torch.Tensor]:
    """The same token batches in every process: (batch, block_size + 1) each, inputs and targets in one."""
    g = torch.Generator().manual_seed(1234)
    shape = (batch, config["block_size"] + 1)
    return [torch.randint(0, config["vocab_size"], shape, generator=g) for _ in range(steps)]


def new_model(config: dict) -> Any:
    from lightning_gpt.models import build

    torch.manual_seed(0)  # the same initial weights in every process
    return build(config)


def full(t: torch.Tensor) -> torch.Tensor:
    """A tensor whole, whether a DTensor (sharded or replicated) or a plain one."""
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def train(model: Any, data: list[torch.Tensor], part: tuple[int, int], optimizer: Any, group: Any = None) -> dict:
    """AdamW (or the given optimizer) steps with norm clipping on this process's part (index, count) of each
    batch; the mean loss over the data-parallel group, the full gradients (after clipping) and weights."""
    index, count = part
    losses, grads = [], []
    for tokens in data:
        mine = tokens.chunk(count)[index]
        _, loss = model(mine[:, :-1], mine[:, 1:])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        grads.append({n: full(p.grad) for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if dist.is_initialized() and count > 1:
            dist.all_reduce(mean, group=group)
            mean /= count
        losses.append((mean.item(), full(norm).item()))
    return {"losses": losses, "grads": grads, "weights": {n: full(p) for n, p in model.named_parameters()}}


def reference(config: dict, data: list[torch.Tensor]) -> dict:
    """One process, no parallelism: what every parallel run must reproduce."""
    model = new_model(config)
    return train(model, data, (0, 1), torch.optim.AdamW(model.parameters(), lr=LR))


def parallel_run(rank: int, world: int, config: dict, sizes: tuple[int, int, int], options: dict) -> dict:
    """Build the (replicate, shard, tensor) mesh, parallelize the model and train it on this process's data."""
    from lightning_gpt.parallel.apply import parallelize
    from lightning_gpt.parallel.mesh import MeshSizes, build_mesh, data_mesh
    from lightning_gpt.parallel.tensor import local_head_counts

    mesh = build_mesh("cpu", MeshSizes(*sizes))
    model = new_model(config)
    parallelize(model, mesh, **options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    dp = data_mesh(mesh)
    result = train(model, batches(config), (dp.get_local_rank(), dp.size()), optimizer, dp.get_group())
    result["heads"] = local_head_counts(model)
    result["placements"] = {n: str(getattr(p, "placements", None)) for n, p in model.named_parameters()}
    return result


# ---------------------------------------------------------------------------------------------------------
# Sharded checkpoints


class Holder(torch.nn.Module):
    """Holds the model as our LightningModule does, so parameter names are "model.<name>" as in checkpoints."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with the norm gains' group first: the optimizer's parameter order is not the model's, so a
    checkpoint that confused the two would put moments on the wrong parameters."""
    params = list(module.parameters())
    groups = [
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
    ]
    return torch.optim.AdamW(groups, lr=LR)


def full_state(holder: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole weights and optimizer state, keyed by name (on process 0; empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(holder, optimizer, options=options)


def build_parallel(config: dict, sizes: tuple[int, int, int], seed: int = 0) -> tuple[Any, Any, Any]:
    from lightning_gpt.parallel.apply import parallelize
    from lightning_gpt.parallel.mesh import MeshSizes, build_mesh

    mesh = build_mesh("cpu", MeshSizes(*sizes))
    model = new_model(config)
    if seed:  # other weights than the checkpoint's, so loading must change them
        torch.manual_seed(seed)
        model.init_weights()
    parallelize(model, mesh)
    holder = Holder(model)
    return mesh, holder, adamw(holder)


def save_run(rank: int, world: int, config: dict, sizes: tuple[int, int, int], path: str, steps: int) -> dict:
    """Train `steps` AdamW steps on the mesh, save a sharded checkpoint as the strategy does; the full state."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from lightning_gpt.parallel.checkpoint import ShardedCheckpointWriter
    from lightning_gpt.parallel.mesh import data_mesh

    mesh, holder, optimizer = build_parallel(config, sizes)
    dp = data_mesh(mesh)
    train(holder.model, batches(config, steps), (dp.get_local_rank(), dp.size()), optimizer, dp.get_group())
    checkpoint = {
        "state_dict": get_model_state_dict(holder),  # this process's shards, as Lightning's strategy collects them
        "optimizer_states": [get_optimizer_state_dict(holder, optimizer)],
        "global_step": steps,
        "hyper_parameters": {"model": config, "tokenizer": {"name": "byte"}},
    }
    ShardedCheckpointWriter().save(checkpoint, Path(path))
    return full_state(holder, optimizer)


def load_run(rank: int, world: int, config: dict, sizes: tuple[int, int, int], path: str) -> dict:
    """A fresh model (other weights) and optimizer on another mesh, loaded from the checkpoint; the full state."""
    from lightning_gpt.parallel.checkpoint import load_sharded

    _, holder, optimizer = build_parallel(config, sizes, seed=99)
    meta = load_sharded(path, holder, [optimizer])
    return (*full_state(holder, optimizer), meta["global_step"])


def reference_checkpoint(config: dict, steps: int) -> tuple[dict, dict]:
    """One process, the same training as save_run: (weights, `optimizer.state_dict()`), the single-file layout."""
    holder = Holder(new_model(config))
    optimizer = adamw(holder)
    train(holder.model, batches(config, steps), (0, 1), optimizer)
    return holder.state_dict(), optimizer.state_dict()


# ---------------------------------------------------------------------------------------------------------
# Distributed Muon


def muon_groups(model: Any) -> list[dict]:
    from lightning_gpt.optim import param_groups
    from lightning_gpt.schema import OptimConfig

    return param_groups(model, OptimConfig(name="muon", lr=LR, muon_lr=0.02, weight_decay=0.1))


def muon_model(config: dict, mode: str, world: int) -> tuple[Any, Any]:
    """(the model, what to call forward on): sharded by FSDP2, tensor parallel, or wrapped in DDP."""
    model = new_model(config)
    if mode in ("fsdp", "tp", "hsdp"):
        from lightning_gpt.parallel.apply import parallelize
        from lightning_gpt.parallel.mesh import MeshSizes, build_mesh

        sizes = {"fsdp": (1, world, 1), "tp": (1, 1, world), "hsdp": (2, world // 2, 1)}[mode]
        parallelize(model, build_mesh("cpu", MeshSizes(*sizes)))
        return model, model
    if mode == "ddp":
        return model, torch.nn.parallel.DistributedDataParallel(model)
    return model, model


def muon_steps(model: Any, forward: Any, optimizer: Any, data: list[torch.Tensor], part: tuple[int, int]) -> list:
    index, count = part
    losses = []
    for tokens in data:
        mine = tokens.chunk(count)[index]
        _, loss = forward(mine[:, :-1], mine[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if count > 1:  # the loss of the whole batch: the mean of the data-parallel processes' losses
            dist.all_reduce(mean)
            mean /= count
        losses.append(mean.item())
    return losses


def muon_run(rank: int, world: int, config: dict, mode: str, steps: int, batch: int = BATCH) -> dict:
    """`steps` Muon + AdamW steps; then the same again with the optimizer's state_dict saved after steps - 1
    and loaded into a fresh optimizer for the last step (exact resume)."""
    from lightning_gpt.optim import MuonWithAdamW

    data = batches(config, steps, batch)
    part = (0, 1) if mode == "tp" else (rank, world)  # tensor-parallel peers read the same batch
    model, forward = muon_model(config, mode, world)
    optimizer = MuonWithAdamW(muon_groups(model))
    losses = muon_steps(model, forward, optimizer, data, part)
    result = {
        "losses": losses,
        "weights": {n: full(p) for n, p in model.named_parameters()},
        "orthogonalized": optimizer.muon.orthogonalized,
        "matrices": len(list(model.hidden_matrices())),
    }
    model, forward = muon_model(config, mode, world)
    optimizer = MuonWithAdamW(muon_groups(model))
    muon_steps(model, forward, optimizer, data[:-1], part)
    saved = optimizer.state_dict()
    optimizer = MuonWithAdamW(muon_groups(model))
    optimizer.load_state_dict(saved)
    muon_steps(model, forward, optimizer, data[-1:], part)
    result["resumed"] = {n: full(p) for n, p in model.named_parameters()}
    return result


def muon_reference(config: dict, steps: int, batch: int = BATCH) -> dict:
    from lightning_gpt.optim import MuonWithAdamW

    model = new_model(config)
    optimizer = MuonWithAdamW(muon_groups(model))
    losses = muon_steps(model, model, optimizer, batches(config, steps, batch), (0, 1))
    return {"losses": losses, "weights": {n: full(p) for n, p in model.named_parameters()}}
