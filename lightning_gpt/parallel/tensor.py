"""Tensor parallelism (Megatron-LM's split of each block, Shoeybi et al. 2019) with torch's DTensor styles.

Each block's attention splits by heads and its MLP by hidden units: the input projections (q, k, v; gate,
up) are `ColwiseParallel` (each process computes its share of the heads / hidden units, no communication),
the output projections (o_proj, down_proj) `RowwiseParallel` (each process's partial sums are added by one
all-reduce). So one block costs two all-reduces forward and two backward, and each process holds 1/T of
every block's matrices. The attention modules compute with their local head counts (as torchtitan sets
them), since `view(B, T, n_head, head_dim)` sees only the local columns.

With `sequence_parallel` (Korthikanti et al. 2022) the residual stream between the matrices is split along
the sequence instead of replicated: the RMSNorms run on 1/T of the positions (`SequenceParallel`), each
all-reduce becomes an all-gather before the attention/MLP and a reduce-scatter after, the same bytes, and
the activations that were replicated (norms, residuals, dropout) shrink T-fold.

Families: the Llama family only. GPT-2's attention projects q, k and v with one fused `c_attn` whose output
rows are [all q heads | all k heads | all v heads]: a column split gives process 0 the q heads and part of
k, not a third of each. Splitting it needs either three Linear layers (parameter names change, so every
checkpoint and the transformers mapping with them) or a strided placement that FSDP2 cannot shard on top
of; neither is worth it for a 1.5B-parameter family that FSDP alone holds. Mamba has no heads to split: its
`x_proj` mixes every channel of the scan into the step sizes and state matrices, so a column split of
`in_proj` would need a gather inside every layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import ParallelStyle

from lightning_gpt.models.base import LanguageModel

SUPPORTED = ("llama",)
WHY_NOT = {
    "gpt2": "GPT-2's fused c_attn (q, k and v in one matrix) cannot be split by heads across processes",
    "mamba": "Mamba has no attention heads to split: its x_proj mixes every channel inside each layer",
}


def check_tensor_parallel(config: object, size: int) -> None:
    """Plain ValueErrors naming the cause, before any process group or DTensor is created."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be a positive integer, got {size}")
    if size == 1:
        return
    family = getattr(config, "family", "")
    if family not in SUPPORTED:
        why = WHY_NOT.get(family, f"the {family} family has no tensor-parallel plan")
        raise ValueError(
            f"tensor_parallel_size={size} needs the llama family: {why}; use FSDP (tensor_parallel_size=1), "
            "which shards every family"
        )
    for name, value in (("n_head", config.n_head), ("n_kv_head", config.kv_heads), ("MLP width", config.hidden_dim)):
        if value % size:
            raise ValueError(
                f"tensor_parallel_size={size} must divide the model's {name} ({value}): each process computes "
                f"an equal share of it"
            )


def tensor_parallel(model: LanguageModel, tp_mesh: DeviceMesh, sequence_parallel: bool = False) -> None:
    """Split a Llama's blocks, embedding and head across `tp_mesh` (a 1-D DeviceMesh), in place.

    The embedding is split by vocabulary rows (`RowwiseParallel`: each process looks up the tokens it holds,
    one all-reduce or reduce-scatter adds them); the head by vocabulary columns, its logits gathered whole,
    so the loss is computed as before on every process of the group. Call before `fully_shard`.
    """
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    config = model.config
    size = tp_mesh.size()
    check_tensor_parallel(config, size)
    if size == 1:
        return
    # Between the blocks the residual stream is split along the sequence (dim 1) or whole on every process.
    residual = Shard(1) if sequence_parallel else Replicate()
    tied = getattr(config, "tie_embeddings", False)
    top = {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=residual),
        "lm_head": ColwiseParallel(input_layouts=residual, output_layouts=Replicate(), use_local_output=True),
    }
    top["model.norm"] = SequenceParallel() if sequence_parallel else Replicated()
    parallelize_module(model, tp_mesh, top)
    if tied:  # parallelize_module made a new parameter for each module: tie them again (both Shard(0))
        model.lm_head.weight = model.model.embed_tokens.weight

    for block in model.blocks:
        plan: dict[str, object] = {
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=residual),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=residual),
        }
        if block.mlp.gated:
            plan["mlp.gate_proj"] = ColwiseParallel()
        if config.qk_norm:
            # Per-head norms see only this process's heads (dim 2 of (B, T, heads, head_dim)): their gains'
            # gradients are partial sums, which DTensor adds across the group.
            plan["self_attn.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
            plan["self_attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        if not sequence_parallel:
            plan["input_layernorm"] = Replicated()
            plan["post_attention_layernorm"] = Replicated()
        else:
            plan["input_layernorm"] = SequenceParallel()
            plan["post_attention_layernorm"] = SequenceParallel()
            # Gather the positions before the matrices: attention needs every position, the MLP its input whole.
            plan["self_attn"] = PrepareModuleInput(
                input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)
            )
            plan["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        parallelize_module(block, tp_mesh, plan)
        attention = block.self_attn
        attention.n_head //= size  # the heads this process computes
        attention.n_kv_head //= size


class Replicated(ParallelStyle):
    """A module computed whole on every process of the group, its parameters DTensors replicated across it.

    For the norms that tensor parallelism leaves whole: as plain tensors FSDP2 would shard them over the
    data-parallel mesh only, and `clip_grad_norm_` cannot add norms of gradients on two meshes (1-D and
    2-D); so every parameter lives on the same (data, tensor) mesh. torch has no such style (torchtitan
    writes its own `NoParallel`)."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, _replicate_parameters, _replicated_inputs, _local_output)


def _replicate_parameters(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
    for key, param in list(module.named_parameters(recurse=False)):  # the same values on every process already
        replicated = DTensor.from_local(param.data, mesh, [Replicate()], run_check=False)
        module.register_parameter(key, nn.Parameter(replicated, requires_grad=param.requires_grad))


def _replicated_inputs(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
    # Any local tensor (an all-reduce's output may be a subclass that waits for it), not one already a DTensor.
    local = lambda t: isinstance(t, torch.Tensor) and not isinstance(t, DTensor)  # noqa: E731
    return tuple(DTensor.from_local(t, mesh, [Replicate()], run_check=False) if local(t) else t for t in inputs)


def _local_output(module: nn.Module, output: object, mesh: DeviceMesh) -> object:
    return output.to_local() if isinstance(output, DTensor) else output


def local_head_counts(model: nn.Module) -> list[tuple[int, int]]:
    """(n_head, n_kv_head) each attention module computes with: the local share under tensor parallelism."""
    return [(m.n_head, m.n_kv_head) for m in model.modules() if hasattr(m, "n_kv_head") and hasattr(m, "q_proj")]
