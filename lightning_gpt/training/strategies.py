"""Several processes, one run: sharded training (FSDP2), and every launcher agreeing on one run folder.

- `FSDPStrategy`: Lightning's `ModelParallelStrategy` as pure data-parallel FSDP2 (`fully_shard`, one unit per
  Transformer block), which unlike Lightning's FSDP1 strategy clips gradients by norm, runs on CPUs (gloo) as on
  GPUs, and saves one full checkpoint file that loads anywhere.
- `children_run_this_app`: Lightning starts the extra DDP processes of one machine by re-running the parent's
  command line; under a Hydra sweep or a submitit job that command is not ours. They run `lightning_gpt.apps.train`
  instead, which reads rank 0's resolved config from the run folder (see `train.main`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy


class FSDPStrategy(ModelParallelStrategy):
    """FSDP2 over every process: parameters, gradients and optimizer states sharded across all of them.

    The LightningModule shards itself in `configure_model` (Lightning's design for this strategy), reading
    `activation_checkpointing` and `reshard_after_forward` from here.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process is a data-parallel shard
        super().setup_environment()


def shard(model: torch.nn.Module, blocks: torch.nn.ModuleList, strategy: FSDPStrategy, precision: str) -> None:
    """Apply FSDP2 in place: each block is one unit (gathered for its forward and backward), the rest the root."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # GPT.forward returns logits sliced to vocab_size (a view); nothing modifies them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = strategy.device_mesh["data_parallel"]
    # bf16 weights in compute and communication, fp32 gradient reduction: FSDP's own mixed precision.
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    policy = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32) if half else MixedPrecisionPolicy()
    for block in blocks:
        if strategy.activation_checkpointing:  # recompute the block in backward instead of storing activations
            checkpoint(block)  # the composable form: parameter names, so checkpoints, stay the same
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=strategy.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=strategy.reshard_after_forward)


@contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Generation outside `forward` under FSDP2: gather the root's own parameters (embeddings, final norm,
    head); each block gathers its own when called. Every process must take part."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


@contextmanager
def children_run_this_app(module: str = "lightning_gpt.apps.train") -> Iterator[None]:
    """While Lightning may start local DDP processes, make their command `python -m <module>`.

    Lightning builds the command from `__main__` and `sys.argv` (and appends Hydra run-folder overrides);
    under `-m` sweeps or submitit those are the sweep's or submitit's. The environment variables it sets
    for its children (MASTER_PORT, LOCAL_RANK, ...) are removed afterwards, so the next job of a sweep
    starts its own processes instead of waiting for the previous job's.
    """
    import importlib.util

    main = sys.modules["__main__"]
    saved_argv, saved_spec, saved_env = sys.argv, getattr(main, "__spec__", None), dict(os.environ)
    sys.argv, main.__spec__ = [module], importlib.util.find_spec(module)
    try:
        yield
    finally:
        sys.argv, main.__spec__ = saved_argv, saved_spec
        os.environ.clear()
        os.environ.update(saved_env)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
