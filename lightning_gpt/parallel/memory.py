"""How many bytes each process needs to train a model, and the largest micro-batch that fits in a device.

    from lightning_gpt.parallel.memory import plan, largest_micro_batch
    print(plan({"family": "llama", ...}, devices=8, strategy="fsdp+tp", tensor_parallel_size=2,
               micro_batch=1, block_size=4096, precision="bf16-mixed").table())

Parameters, gradients and optimizer states are counted exactly from the model built on the meta device, as
each strategy lays them out per process:

- ddp: everything whole on every process; gradients twice (DDP's buckets are a second copy, torch's default
  `gradient_as_bucket_view=False`); under bf16-mixed, autocast's bf16 copy of every weight matrix lives from
  its use in forward until backward has used it.
- fsdp (FSDP2, one unit per block; hsdp: replicated data_parallel_replicate times, sharded over the rest):
  each parameter's rows split over the sharding processes (rounded up, as FSDP2 pads), gradients and optimizer
  states with them; plus the whole compute copy of the root's parameters (embedding, head: FSDP2 keeps the
  root gathered from forward to the end of backward) and of two blocks (the one running and the one
  prefetched).
- fsdp+tp: first the block matrices, the embedding and the head are split tensor_parallel_size ways (norm
  gains stay whole), then FSDP2 shards those pieces.

Master weights, gradients and optimizer states are fp32 under 32-true and the mixed precisions (weights cast
to bf16/fp16 for compute), bf16 under bf16-true. AdamW keeps 2 states per parameter; Muon 1 (momentum) per
hidden matrix and AdamW's 2 for the rest.

Activations, per layer per token, count the tensors autograd keeps for backward in this project's code, in
the compute dtype (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
section 4.1, redone for our layers and measured tensor by tensor: their 34 s b h bytes per GPT layer in fp16,
17 h elements, is our 16 h with dropout off):

- GPT-2: attention 6h (LayerNorm input and output, q, k, v, SDPA output: the kernel lays it out so that the
  transpose for c_proj copies nothing), MLP 10h (LayerNorm input and output, c_fc output 4h kept by GELU,
  GELU output 4h kept by c_proj). SDPA's flash and memory-efficient kernels keep no T x T matrix, only a
  log-sum-exp per head and position.
- Llama: attention 5h + 2 kv (RMSNorm 3h: input, normalized input, output; q and k after rotation, v, SDPA
  output), MLP 3h + 4f (SwiGLU: gate, silu(gate), up, their product) or 3h + 2f (relu2).
- Mamba: 3h + 11 d_inner + dt_rank + 2 d_state in the compute dtype and 2 d_inner d_state in fp32: the scan
  keeps each position's decays and states (selective_scan runs in fp32), which dominate (d_inner = 2h).
- Dropout > 0 adds a 1-byte mask per element of each dropped tensor (2h per layer).
- The head: logits (padded vocabulary, compute dtype), fp32 log-probabilities kept by cross-entropy and, in
  backward, their gradient and the logits' gradient; under mixed precision also the logits cast to fp32.
- Activation checkpointing keeps each block's input (h per layer) and recomputes one block at a time in
  backward: its activations twice (recomputed, and their gradients) on top.
- Tensor parallelism divides the head-wise and hidden-unit-wise tensors by T; the norms' tensors are whole on
  every process (with sequence parallelism split by T, but the projections keep their gathered input whole).

What this leaves out: the framework's own memory (CUDA context ~0.5 GiB, NCCL buffers, the caching
allocator's fragmentation, often 5-15%), the data loader, and temporaries inside a kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("ddp", "fsdp", "fsdp+tp", "hsdp")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
GIB = 2**30


@dataclass
class Plan:
    """Bytes per process. `parameters` counts the stored (master) weights and the compute copies."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    detail: dict[str, int] = field(default_factory=dict)  # each term before summing, for the table
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def table(self) -> str:
        s = self.settings
        mesh = (
            f"({s['strategy']} over {s['world']} processes: replicate {s['replicate']} x shard {s['shard']} x tensor "
        )
        where = "one process" if s["world"] == 1 else f"per process {mesh}{s['tensor']})"
        rows = [
            f"{where}, {s['precision']}, {s['optimizer']}, micro-batch {s['micro_batch']} x {s['block_size']} tokens"
            + (", activation checkpointing" if s["activation_checkpointing"] else ""),
        ]
        for key in ("parameters", "gradients", "optimizer", "activations", "total"):
            rows.append(f"  {key:<12}{getattr(self, key) / GIB:>10.2f} GiB")
        return "\n".join(rows)


@dataclass
class _Tensor:
    shape: tuple[int, ...]
    in_block: bool
    hidden_matrix: bool  # stepped by Muon when optimizer="muon"
    tensor_split: int  # dimension tensor parallelism splits (0 rows, 1 columns), -1: whole


def _parameters(model: Any) -> list[_Tensor]:
    """Every parameter once (tied ones once), with what the strategies need to know of it."""
    hidden = {id(p) for p in model.hidden_matrices()}
    in_block = {id(p) for p in model.blocks.parameters()}
    rowwise = ("o_proj.weight", "down_proj.weight")  # RowwiseParallel: input columns split
    columnwise = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
    root_split = ("embed_tokens.weight", "lm_head.weight")  # the embedding by rows, the head by its output rows
    out = []
    for name, p in model.named_parameters():  # named_parameters skips a tied duplicate
        if name.endswith(rowwise):
            split = 1
        elif name.endswith(columnwise) or name.endswith(root_split):
            split = 0
        else:
            split = -1
        out.append(_Tensor(tuple(p.shape), id(p) in in_block, id(p) in hidden, split))
    return out


def _local_numel(t: _Tensor, tensor: int, shard: int) -> int:
    """Elements this process stores: split by tensor parallelism, then FSDP2's row split (rounded up)."""
    shape = list(t.shape)
    if tensor > 1 and t.tensor_split >= 0:
        shape[t.tensor_split] = math.ceil(shape[t.tensor_split] / tensor)
    shape[0] = math.ceil(shape[0] / shard)
    return math.prod(shape)


def layer_bytes(config: Any, precision: str = "32-true", tensor: int = 1, sequence_parallel: bool = False) -> float:
    """Bytes one layer keeps per token for backward (each term measured tensor by tensor on CPU:
    tests/parallel_memory.py).

    Matrices' outputs are in the compute dtype. Under mixed precision (autocast) the residual stream and the
    norms stay fp32 and every Linear casts its input to bf16 itself: a norm feeding q, k and v keeps three
    bf16 copies of its output. A norm keeps its input (RMSNorm, composed of smaller ops, also the normalized
    input before the gain). Under tensor parallelism the head-wise and hidden-unit-wise tensors are split;
    the norms' tensors too with sequence parallelism, not the gathered inputs the projections keep."""
    t = tensor
    mixed = precision in ("bf16-mixed", "16-mixed")
    c = 4 if precision == "32-true" else 2  # matrices' outputs
    r = 2 if precision == "bf16-true" else 4  # residual stream and norms
    h = config.n_embd
    split = (lambda n: n / t) if sequence_parallel else (lambda n: n)

    def norm(consumers: int, rms: bool) -> float:
        kept = (2 if rms else 1) * r * h  # input (and the normalized input)
        output = consumers * c * h if mixed else r * h  # the output, or each Linear's cast of it
        stats = 4 * (1 if rms else 2)  # rstd (and mean), fp32
        return split(kept + stats) + output

    if config.family == "gpt2":
        attention = norm(1, rms=False) + c * 4 * h / t + 4 * config.n_head / t  # q, k, v, SDPA output; lse
        mlp = norm(1, rms=False) + c * 8 * h / t  # c_fc output (kept by GELU), GELU output (kept by c_proj)
        return attention + mlp
    if config.family == "llama":
        kv = config.kv_heads * config.head_dim
        gated = config.mlp == "swiglu"
        # q and k after rotation, v, SDPA output (o_proj's input: the same storage); log-sum-exp
        attention = norm(3, rms=True) + c * (2 * h + 2 * kv) / t + 4 * config.n_head / t
        mlp = norm(2 if gated else 1, rms=True) + c * (4 if gated else 2) * config.hidden_dim / t
        return attention + mlp
    if config.family == "mamba":
        d, n = config.d_inner, config.d_state
        # in_proj output 2d (z kept by its silu), conv input, conv output, silu output, dt_proj output, step
        # sizes, dt x, y, silu(z), gated y (out_proj's input): 11d with x_proj's output; the scan (fp32)
        # keeps each position's decays and states, 2 d N, which dominate; under autocast also fp32 copies of
        # the step sizes and dt x.
        return (
            norm(1, rms=True) + c * (11 * d + config.time_step_rank + 2 * n) + 4 * 2 * d * n + (8 * d if mixed else 0)
        )
    raise ValueError(f"no activation estimate for the {config.family} family")


def head_bytes(config: Any, precision: str = "32-true") -> float:
    """Bytes per token of the head and loss at their peak, the start of backward: the logits (padded vocabulary,
    compute dtype; fp32 for the loss under autocast), the log-probabilities cross-entropy keeps (fp32, or bf16
    under bf16-true), then their gradient and the logits' gradient."""
    vocab, padded = config.vocab_size, config.padded_vocab_size
    if precision == "32-true":
        return 4 * padded + 3 * 4 * vocab
    if precision == "bf16-true":
        return 2 * padded + 3 * 2 * vocab
    return 2 * padded + 4 * vocab + 3 * 4 * vocab  # logits, their fp32 cast, log-probs and two gradients


def plan(
    model: Any,
    devices: int = 1,
    nodes: int = 1,
    strategy: str = "ddp",
    tensor_parallel_size: int = 1,
    data_parallel_replicate: int = 1,
    micro_batch: int = 1,
    block_size: int | None = None,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    optimizer: str = "adamw",
    sequence_parallel: bool = False,
) -> Plan:
    """Bytes per process to train `model` (a model config dict or dataclass) as configured; see the module
    docstring for what each term counts. ValueErrors name the setting at fault."""
    import torch

    from lightning_gpt.models import build, config_from_dict

    config = config_from_dict(model) if isinstance(model, dict) else model
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be adamw or muon, got {optimizer!r}")
    world = devices * nodes
    tensor = tensor_parallel_size if strategy != "ddp" else 1  # "fsdp+tp" and "hsdp" name the usual mixes
    replicate = data_parallel_replicate if strategy != "ddp" else 1
    if tensor > 1:
        from lightning_gpt.parallel.tensor import check_tensor_parallel

        check_tensor_parallel(config, tensor)
    if world % (tensor * replicate):
        raise ValueError(f"tensor_parallel_size x data_parallel_replicate must divide {world} processes")
    shard = 1 if strategy == "ddp" else world // (tensor * replicate)
    block_size = block_size or config.block_size
    tokens = micro_batch * block_size

    with torch.device("meta"):
        meta = build(config)
    params = _parameters(meta)
    master = 2 if precision == "bf16-true" else 4  # bytes of stored weights, gradients and optimizer states
    compute = 4 if precision == "32-true" else 2
    local = [_local_numel(p, tensor, shard) for p in params]
    stored = master * sum(local)  # weights this process keeps; gradients as many
    states = {"adamw": 2, "muon": 1}
    detail: dict[str, int] = {
        "weights": stored,
        "gradients": stored,
        "optimizer": sum(master * n * (states[optimizer] if p.hidden_matrix else 2) for n, p in zip(local, params)),
    }
    # What exists besides while computing: gathered or cast weights, gradient buffers.
    if strategy == "ddp":
        if compute != master:  # autocast's copies of the matrices, kept from forward to backward
            detail["weights: autocast copies"] = compute * sum(math.prod(p.shape) for p in params if len(p.shape) == 2)
        if world > 1:
            detail["gradients: DDP buckets"] = stored
    elif shard > 1 or compute != master:
        whole = [_local_numel(p, tensor, 1) for p in params]
        root = sum(n for n, p in zip(whole, params) if not p.in_block)
        per_block = sum(n for n, p in zip(whole, params) if p.in_block) / config.n_layer
        detail["weights: gathered root and 2 blocks"] = int(compute * (root + min(2, config.n_layer) * per_block))
        detail["gradients: one block unsharded"] = int((compute + 4) * per_block)  # and its fp32 reduce-scatter
    parameters = sum(v for k, v in detail.items() if k.startswith("weights"))
    gradients = sum(v for k, v in detail.items() if k.startswith("gradients"))
    optimizer_bytes = detail["optimizer"]

    per_layer = layer_bytes(config, precision, tensor, sequence_parallel)
    if config.dropout > 0:
        per_layer += 2 * config.n_embd  # a 1-byte mask after attention and after the MLP
    residual = 2 if precision == "bf16-true" else 4
    final = (1 if config.family == "gpt2" else 2) * residual * config.n_embd + compute * config.n_embd  # final norm
    head = head_bytes(config, precision)
    if activation_checkpointing:  # each block's input; in backward one block recomputed, with its gradients
        kept = config.n_layer * residual * config.n_embd + max(head, 2 * per_layer)
    else:
        kept = config.n_layer * per_layer + head
    activations = int(tokens * (kept + final))

    return Plan(
        parameters=int(parameters),
        gradients=int(gradients),
        optimizer=int(optimizer_bytes),
        activations=activations,
        detail=detail,
        settings=dict(
            strategy=strategy,
            world=world,
            replicate=replicate,
            shard=shard,
            tensor=tensor,
            precision=precision,
            optimizer=optimizer,
            micro_batch=micro_batch,
            block_size=block_size,
            activation_checkpointing=activation_checkpointing,
        ),
    )


def largest_micro_batch(model: Any, memory_bytes: float, headroom: float = 0.9, **settings: Any) -> int:
    """The largest micro-batch whose plan fits in `headroom` x `memory_bytes` of one device (0: not even one
    sequence fits). Activations grow linearly with the micro-batch, the rest not at all."""
    one = plan(model, micro_batch=1, **settings)
    fixed = one.total - one.activations
    budget = headroom * memory_bytes - fixed
    return max(0, int(budget // one.activations)) if one.activations else 0
