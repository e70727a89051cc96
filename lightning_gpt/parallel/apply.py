"""Parallelize a model in place: tensor parallelism, then activation checkpointing, then FSDP2 or HSDP.

The order is torch's (and torchtitan's): `fully_shard` must see the DTensor parameters tensor parallelism
made, and shards them further along the data-parallel mesh (2-D DTensors).
"""

from __future__ import annotations

import logging
import warnings

import torch

from lightning_gpt.library_internals import checkpoint_in_place
from lightning_gpt.models.base import LanguageModel
from lightning_gpt.parallel.mesh import TENSOR, fsdp_mesh
from lightning_gpt.parallel.tensor import tensor_parallel

HALF = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def mixed_precision(precision: str) -> object:
    """FSDP's own mixed precision for Lightning's precision string: bf16/fp16 weights in compute and
    communication, fp32 gradient reduction; none for 32-true and bf16-true (the weights are that dtype)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    half = HALF.get(str(precision))
    return MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32) if half else MixedPrecisionPolicy()


def parallelize(
    model: LanguageModel,
    mesh: object,
    precision: str = "32-true",
    sequence_parallel: bool = False,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> None:
    """Apply the mesh's parallelism to `model` in place: each block one FSDP unit (gathered for its forward
    and backward), the embeddings, final norm and head the root's. `mesh` is `mesh.build_mesh`'s."""
    from torch.distributed.fsdp import fully_shard

    # Llama.head/GPT.head return logits sliced to vocab_size (a view); nothing modifies them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    if mesh[TENSOR].size() > 1:
        tensor_parallel(model, mesh[TENSOR], sequence_parallel)
        # clip_grad_norm_ adds norms over the (data, tensor) mesh with two all-reduces, which torch calls
        # suboptimal in a warning from every process: the cost is two scalars per step.
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    data = fsdp_mesh(mesh)
    policy = mixed_precision(precision)
    for block in model.blocks:
        if activation_checkpointing:  # recompute the block in backward instead of storing its activations
            checkpoint_in_place(block)  # parameter names, so checkpoints, stay the same
        fully_shard(block, mesh=data, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=data, mp_policy=policy, reshard_after_forward=reshard_after_forward)
