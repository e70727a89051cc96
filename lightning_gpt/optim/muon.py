"""Muon (Jordan et al. 2024) for the hidden weight matrices and AdamW for the rest, as one optimizer, in one process
or many: across processes each matrix's Newton-Schulz orthogonalization is computed once, by the one process that
owns the matrix, not by every process (nanochat's DistMuon and modded-nanogpt do the same).

Orthogonalization needs the whole matrix, which FSDP2 and tensor parallelism split: torch.optim.Muon cannot step
their DTensor shards, and a naive port would gather every matrix on every process and orthogonalize it there,
W times over. Here the matrices are shared out among the processes, balanced by Newton-Schulz cost (largest
first, each to the least loaded process), and each step:

- one process: every matrix, as torch.optim.Muon (float32 Newton-Schulz on CPUs, see `Muon`).
- FSDP2 (`Shard(0)` on one mesh dimension; HSDP: replicated on the other): the momentum is kept and updated
  shard by shard, as FSDP keeps AdamW's; the owner gathers the shards of the update (one `gather`), orthogonalizes
  and sends each process its rows back (one `scatter`). Under HSDP each replica group does this among its own
  shards, so a matrix is orthogonalized once per replica group.
- DDP (whole parameters, gradients all-reduced by DDP): every process keeps the momentum (the same everywhere, so
  any process's checkpoint holds it), the owner orthogonalizes and broadcasts the result.
- Other DTensors (tensor parallelism, with or without FSDP): every process assembles the update whole
  (`full_tensor`), the owner orthogonalizes and broadcasts it, and each process keeps its own piece.

All collectives of a step are issued at once (asynchronously) and waited for together. The optimizer's state is
torch.optim.Muon's (`momentum_buffer`, a DTensor where the parameter is one): `state_dict`, DCP and resharding
work as for any optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from lightning_gpt.library_internals import muon_group_state, muon_lr_scale, muon_newton_schulz


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T of g = U S V^T (Jordan et al. 2024), as torch.optim.Muon's
    but in float32: a quintic polynomial whose steep slope at zero pushes every singular value towards ~1."""
    a, b, c = coefficients
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # (small, large): the Gram matrix below is the small side squared
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (small, small)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


def owners(shapes: list[tuple[int, int]], processes: int) -> list[int]:
    """Which process orthogonalizes each matrix: greedy by Newton-Schulz cost (~ m n min(m, n) per iteration),
    the costliest first, each to the process with the least work so far. The same on every process."""
    load = [0] * processes
    owner = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-math.prod(shapes[i]) * min(shapes[i]), i)):
        owner[i] = min(range(processes), key=lambda r: (load[r], r))
        load[owner[i]] += math.prod(shapes[i]) * min(shapes[i])
    return owner


def _rows(total: int, parts: int) -> list[int]:
    """Rows of each process under `Shard(0)` (torch.chunk's split: ceil(total / parts) each, the last ones
    short or empty)."""
    size = math.ceil(total / parts)
    return [max(0, min(size, total - r * size)) for r in range(parts)]


class Muon(torch.optim.Muon):
    """torch.optim.Muon's step, state and learning-rate rule, for whole parameters, FSDP2 shards,
    tensor-parallel DTensors and DDP replicas alike (see the module docstring for who orthogonalizes what).

    On CPUs the orthogonalization runs in float32: torch's casts to bfloat16, which CPUs without bf16 matrix units
    emulate, 15x slower than float32 on this project's 2-core test machine. `orthogonalized` counts the matrices
    this process orthogonalized (a test shows each is done once per step across the processes)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.orthogonalized = 0

    def _orthogonalize(self, update: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        self.orthogonalized += 1
        newton_schulz = orthogonalize if update.device.type == "cpu" else muon_newton_schulz
        done = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
        return done.to(update.dtype)  # torch's is bfloat16: adding it to a float32 parameter casts it so anyway

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = muon_group_state(self, group)
            momentum = group["momentum"]
            updates = []
            for grad, buffer in zip(grads, buffers):  # elementwise: on each process's shard as on the whole
                grad, buffer = _local(grad), _local(buffer)
                buffer.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            orthogonal = self._orthogonalize_all(params, updates, group)
            lr, decay = group["lr"], group["weight_decay"]
            for param, update in zip(params, orthogonal):
                local = _local(param)
                local.mul_(1 - lr * decay)
                local.add_(update, alpha=-muon_lr_scale(lr, group["adjust_lr_fn"], param.shape))  # the whole shape
        return loss

    def _orthogonalize_all(
        self, params: list[torch.Tensor], updates: list[torch.Tensor], group: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Each parameter's orthogonalized update, this process's part of it (local rows, or the whole)."""
        from torch.distributed.tensor import DTensor, Replicate, Shard

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return [self._orthogonalize(u, group) for u in updates]
        result: list[torch.Tensor | None] = [None] * len(params)
        sharded, other = [], []  # FSDP2 shards (rows on one mesh dimension); everything else
        for i, p in enumerate(params):
            placements = tuple(p.placements) if isinstance(p, DTensor) else ()
            rows_only = placements and placements[-1] == Shard(0) and all(q == Replicate() for q in placements[:-1])
            (sharded if rows_only else other).append(i)
        if sharded:
            self._gather_orthogonalize_scatter(params, updates, sharded, result, group)
        if other:
            self._orthogonalize_broadcast(params, updates, other, result, group)
        return result  # type: ignore[return-value]

    def _gather_orthogonalize_scatter(
        self, params: list, updates: list, indices: list[int], result: list, group: dict[str, Any]
    ) -> None:
        """FSDP2/HSDP: within each parameter's shard group, the owner gathers the rows, orthogonalizes, scatters."""
        mesh_groups = [params[i].device_mesh.get_group(params[i].device_mesh.ndim - 1) for i in indices]
        size, rank = dist.get_world_size(mesh_groups[0]), dist.get_rank(mesh_groups[0])
        owner = owners([tuple(params[i].shape) for i in indices], size)
        gathered, works = {}, []
        for j, i in enumerate(indices):
            rows = _rows(params[i].shape[0], size)
            padded = _pad(updates[i], max(rows))
            pieces = [torch.empty_like(padded) for _ in range(size)] if rank == owner[j] else None
            works.append(dist.gather(padded, pieces, group=mesh_groups[j], group_dst=owner[j], async_op=True))
            gathered[j] = (pieces, rows)
        for work in works:
            work.wait()
        outgoing, works = {}, []
        for j, i in enumerate(indices):
            pieces, rows = gathered[j]
            scatter = None
            if rank == owner[j]:
                whole = torch.cat([piece[:n] for piece, n in zip(pieces, rows)])
                done = self._orthogonalize(whole, group)
                scatter = [_pad(part, max(rows)) for part in _split_rows(done, rows)]
            received = torch.empty((max(rows), *updates[i].shape[1:]), dtype=updates[i].dtype, device=updates[i].device)
            works.append(dist.scatter(received, scatter, group=mesh_groups[j], group_src=owner[j], async_op=True))
            outgoing[j] = (received, rows[rank])
        for work in works:
            work.wait()
        for j, i in enumerate(indices):
            received, n = outgoing[j]
            result[i] = received[:n]

    def _orthogonalize_broadcast(
        self, params: list, updates: list, indices: list[int], result: list, group: dict[str, Any]
    ) -> None:
        """DDP (whole parameters) or tensor parallelism: every process has the whole update (DDP's all-reduce,
        or `full_tensor`), the owner orthogonalizes it and broadcasts it to all."""
        from torch.distributed.tensor import DTensor, Replicate

        world, rank = dist.get_world_size(), dist.get_rank()
        owner = owners([tuple(params[i].shape) for i in indices], world)
        wholes, works = [], []
        for j, i in enumerate(indices):
            p, update = params[i], updates[i]
            if isinstance(p, DTensor):  # the update is this process's piece: assemble it (every process takes part)
                update = DTensor.from_local(update, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
                update = update.full_tensor()
            whole = self._orthogonalize(update, group) if rank == owner[j] else torch.empty_like(update)
            works.append(dist.broadcast(whole, src=owner[j], async_op=True))
            wholes.append(whole)
        for work in works:
            work.wait()
        for j, i in enumerate(indices):
            p, whole = params[i], wholes[j]
            if isinstance(p, DTensor):  # keep this process's piece: a local slice, no communication
                replicated = DTensor.from_local(whole, p.device_mesh, [Replicate()] * p.device_mesh.ndim)
                whole = replicated.redistribute(p.device_mesh, p.placements).to_local()
            result[i] = whole


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local piece (the same storage: in-place changes reach the parameter), or the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with zero rows appended to `rows` rows: gather and scatter need equal sizes on every process."""
    if t.size(0) == rows:
        return t.contiguous()
    return torch.cat([t, t.new_zeros((rows - t.size(0), *t.shape[1:]))])


def _split_rows(t: torch.Tensor, rows: list[int]) -> list[torch.Tensor]:
    return list(torch.split(t, rows))


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the groups marked muon=True and torch.optim.AdamW on the others, as one optimizer: Lightning's
    automatic optimization, its LR scheduler and its checkpoints take exactly one. Both run on this optimizer's
    own param_groups and state, so the schedule reaches them and a state_dict holds both."""

    def __init__(self, groups: list[dict[str, Any]], fused: bool | None = None):
        muon = [g for g in groups if g["muon"]]
        adamw = [g for g in groups if not g["muon"]]
        self.muon = Muon(muon) if muon else None  # each fills in its defaults in its groups
        self.adamw = torch.optim.AdamW(adamw, fused=fused) if adamw else None
        super().__init__([*muon, *adamw], {})
        self._share()

    def _share(self) -> None:
        """Point both at this optimizer's groups and state (load_state_dict replaces them)."""
        for child, is_muon in ((self.muon, True), (self.adamw, False)):
            if child is not None:
                child.param_groups = [g for g in self.param_groups if g["muon"] == is_muon]
                child.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for child in (self.muon, self.adamw):
            if child is not None:
                child.step()
        return loss
