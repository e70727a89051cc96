"""A Lightning strategy for every mix of FSDP2, HSDP and tensor parallelism: Lightning's ModelParallelStrategy
with a 3-D device mesh (replicate x shard x tensor), atomic and checked sharded checkpoints.

The LightningModule applies the parallelism in `configure_model` (Lightning's design for this strategy):

    def configure_model(self):
        if isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.parallelize(self.model, self.trainer.precision)

Its settings have no defaults here: conf/trainer/fsdp.yaml holds them (hsdp.yaml and fsdp_tp.yaml change a few).
With data_parallel_replicate=1 and tensor_parallel_size=1 (trainer=fsdp) it is FSDP2 over every process, one unit
per block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_gpt.library_internals import start_process_group
from lightning_gpt.parallel.checkpoint import (
    ShardedCheckpointWriter,
    is_sharded,
    optimizer_state_by_index,
    optimizer_state_by_name,
    remove_checkpoint,
    verify,
)
from lightning_gpt.parallel.mesh import MeshSizes, build_mesh, data_mesh, mesh_sizes

# A full checkpoint gathers 12 bytes per parameter with AdamW (weights and two moments in float32) on process 0:
# 12 GB from here on, and over a minute per save (docs/benchmarks.md "Scale out": 158M parameters took 12.7 s).
SHARDED_FROM_PARAMETERS = 1_000_000_000


def saves_shards(setting: bool | Literal["auto"], model: Any) -> bool:
    """save_distributed_checkpoint for this model: "auto" shards from SHARDED_FROM_PARAMETERS on."""
    if setting != "auto":
        return bool(setting)
    return sum(p.numel() for p in model.parameters()) >= SHARDED_FROM_PARAMETERS  # tied ones once


class FSDPStrategy(ModelParallelStrategy):
    """FSDP2 across data_parallel_shard processes, replicated data_parallel_replicate times (HSDP), each block's
    matrices split across tensor_parallel_size processes (Llama family).

    data_parallel_shard="auto" takes what the others leave of devices x nodes. `sequence_parallel` also splits
    the norms and residual stream along the sequence when tensor_parallel_size > 1. `activation_checkpointing`,
    `reshard_after_forward` and the precision are read by `parallelize`. With `save_distributed_checkpoint`,
    each process writes its shards (no process gathers the whole model), atomically, with checksums; "auto"
    shards models from SHARDED_FROM_PARAMETERS on, decided in `parallelize`, once the model is known.
    """

    def __init__(
        self,
        *,
        data_parallel_replicate: int,
        data_parallel_shard: int | Literal["auto"],
        tensor_parallel_size: int,
        sequence_parallel: bool,
        activation_checkpointing: bool,
        reshard_after_forward: bool,
        save_distributed_checkpoint: bool | Literal["auto"],
        **kwargs: Any,
    ):
        mesh_sizes(data_parallel_replicate * tensor_parallel_size, data_parallel_replicate, 1, tensor_parallel_size)
        if data_parallel_shard != "auto":
            mesh_sizes(data_parallel_shard, 1, data_parallel_shard, 1)  # a positive integer
        super().__init__(
            data_parallel_size="auto",  # our mesh is built in setup_environment, once the world size is known
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=False,  # ours decides (`lightning_module_state_dict`, `optimizer_state`)
            **kwargs,
        )
        self.data_parallel_replicate = data_parallel_replicate
        self.data_parallel_shard = data_parallel_shard
        self.tensor_parallel_size = tensor_parallel_size
        self.sequence_parallel = sequence_parallel
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.save_distributed_checkpoint = save_distributed_checkpoint
        self.mesh: Any = None
        self._sharded_writer = ShardedCheckpointWriter()

    def mesh_sizes(self) -> MeshSizes:
        """The (replicate, shard, tensor) sizes for this run's devices x nodes; a ValueError if they do not fit."""
        return mesh_sizes(
            self.num_nodes * self.num_processes,
            self.data_parallel_replicate,
            self.data_parallel_shard,
            self.tensor_parallel_size,
        )

    def setup_environment(self) -> None:
        """ModelParallelStrategy's, with our 3-D mesh instead of its 2-D one. The sizes are checked first, before
        the process group exists (lgpt-train checks them before any process starts: training/build.py)."""
        sizes = self.mesh_sizes()
        start_process_group(self)
        self.mesh = build_mesh(self.root_device.type, sizes)

    @property
    def device_mesh(self) -> Any:
        if self.mesh is None:
            raise RuntimeError("the device mesh exists once the processes have started (setup_environment)")
        return self.mesh

    @property
    def splits_sequences(self) -> bool:
        """Sequence parallelism is on: every forward's positions are split among the tensor-parallel processes,
        which one new token at a time cannot be, so the training processes sample no text."""
        return self.sequence_parallel and self.tensor_parallel_size > 1

    @property
    def data_mesh(self) -> Any:
        """The 1-D mesh of processes that see different data (replicate x shard)."""
        return data_mesh(self.device_mesh)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Processes of one tensor-parallel group read the same batches."""
        mesh = self.data_mesh
        return {"num_replicas": mesh.size(), "rank": mesh.get_local_rank()}

    def parallelize(self, model: Any, precision: str | None = None) -> None:
        """Apply tensor parallelism, activation checkpointing and FSDP2/HSDP to `model` (a LanguageModel) in
        place, as this strategy is configured: for the LightningModule's `configure_model`."""
        from lightning_gpt.parallel.apply import parallelize

        self.save_distributed_checkpoint = saves_shards(self.save_distributed_checkpoint, model)
        parallelize(
            model,
            self.device_mesh,
            precision=str(precision or self.precision_plugin.precision),
            sequence_parallel=self.sequence_parallel,
            activation_checkpointing=self.activation_checkpointing,
            reshard_after_forward=self.reshard_after_forward,
        )

    # -- checkpoints ---------------------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        if self.save_distributed_checkpoint is not True:
            if self.is_global_zero and (path.is_symlink() or path.is_dir()):
                remove_checkpoint(path)  # a sharded checkpoint of an earlier run under the same name
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for sharded checkpoints")
        self._sharded_writer.save(checkpoint, path)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """This process's shards (sharded saves), or the whole state gathered on process 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=self.save_distributed_checkpoint is not True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """This process's shards (sharded saves), or on process 0 the whole state keyed as torch keys it in
        one process: by position in the optimizer's groups (Lightning's strategy counts the model's order,
        so its files resume wrongly on one device or under DDP, and ours the other way round)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = self.save_distributed_checkpoint is not True
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's
        options = StateDictOptions(full_state_dict=full, cpu_offload=True)
        state = get_optimizer_state_dict(self.model, optimizer, options=options)
        return optimizer_state_by_index(state) if full and self.global_rank == 0 else state

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if is_sharded(path) or path.is_symlink():
            verify(path)  # a one-line error naming the missing, truncated or corrupt file, on every process
            return super().load_checkpoint(path, weights_only=weights_only)
        return self._load_full(path, weights_only)

    def _load_full(self, path: Path, weights_only: bool | None) -> dict[str, Any]:
        """One full file, as Lightning loads it, with the optimizer states' positions read in the order they
        were written in (see `optimizer_state`; `optimizer_state_by_name` tells the two apart)."""
        import torch
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        strict = self.lightning_module.strict_loading
        # Process 0's tensors, sent to each process's shards one tensor at a time.
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        names = {p: n for n, p in self.model.named_parameters()}
        shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}  # whole shapes, DTensors too
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            mine = {p for group in optimizer.param_groups for p in group["params"]}
            in_optimizer = [names[p] for group in optimizer.param_groups for p in group["params"]]
            in_model = [n for n, p in self.model.named_parameters() if p in mine]
            named = optimizer_state_by_name(state, in_optimizer, in_model, shapes)
            set_optimizer_state_dict(self.model, optimizer, named, options=options)
        return checkpoint

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            remove_checkpoint(Path(filepath))
