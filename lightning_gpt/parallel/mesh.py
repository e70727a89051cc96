"""The device mesh: every process placed on a (replicate, shard, tensor) grid.

    world size = data_parallel_replicate (R) x data_parallel_shard (S) x tensor_parallel_size (T)

Tensor parallelism is the innermost dimension (consecutive ranks, so one machine's GPUs, whose links are
fastest, carry its per-layer all-reduces), sharding the middle one (FSDP's per-block all-gathers and
reduce-scatters), replication the outermost (one all-reduce of gradients per step, across machines: HSDP).
Processes that differ only in their tensor-parallel coordinate see the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_gpt.library_internals import flatten_mesh

REPLICATE = "data_parallel_replicate"
SHARD = "data_parallel_shard"
TENSOR = "tensor_parallel"
DATA = "data_parallel"  # REPLICATE x SHARD flattened: what the data is split by (Lightning's sampler reads it)


@dataclass(frozen=True)
class MeshSizes:
    replicate: int
    shard: int
    tensor: int

    @property
    def data(self) -> int:
        """Processes that see different data: the data-parallel degree."""
        return self.replicate * self.shard

    @property
    def world(self) -> int:
        return self.replicate * self.shard * self.tensor


def mesh_sizes(world_size: int, replicate: int = 1, shard: int | str = "auto", tensor: int = 1) -> MeshSizes:
    """The three sizes, `shard="auto"` filling what replicate x tensor leave; a ValueError naming the cause."""
    for name, value in (("data_parallel_replicate", replicate), ("tensor_parallel_size", tensor)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if shard == "auto":
        if world_size % (replicate * tensor):
            raise ValueError(
                f"data_parallel_replicate ({replicate}) x tensor_parallel_size ({tensor}) = {replicate * tensor} "
                f"must divide the number of processes ({world_size})"
            )
        shard = world_size // (replicate * tensor)
    if not isinstance(shard, int) or shard < 1:
        raise ValueError(f"data_parallel_shard must be a positive integer or auto, got {shard!r}")
    sizes = MeshSizes(replicate, shard, tensor)
    if sizes.world != world_size:
        raise ValueError(
            f"data_parallel_replicate ({replicate}) x data_parallel_shard ({shard}) x tensor_parallel_size "
            f"({tensor}) = {sizes.world}, but there are {world_size} processes (devices x nodes); they must be equal"
        )
    return sizes


def build_mesh(device_type: str, sizes: MeshSizes) -> Any:
    """A 3-D DeviceMesh named (REPLICATE, SHARD, TENSOR), with REPLICATE x SHARD also reachable as DATA.

    Needs the default process group; every process must call it (it creates the sub-groups)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(
        device_type, (sizes.replicate, sizes.shard, sizes.tensor), mesh_dim_names=(REPLICATE, SHARD, TENSOR)
    )
    data_mesh(mesh)  # created now, by every process together
    return mesh


def data_mesh(mesh: Any) -> Any:
    """REPLICATE x SHARD as one 1-D mesh: the processes that see different data. Created once, then returned
    from the root mesh's cache (slicing it by name from the root mesh is deprecated)."""
    return flatten_mesh(mesh[REPLICATE, SHARD], DATA)


def fsdp_mesh(mesh: Any) -> Any:
    """The mesh FSDP2 shards over: (REPLICATE, SHARD) for HSDP (2-D: replicate across the first, shard
    across the second), SHARD alone when nothing is replicated (plain FSDP)."""
    return mesh[REPLICATE, SHARD] if mesh[REPLICATE].size() > 1 else mesh[SHARD]
