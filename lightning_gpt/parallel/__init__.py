"""Training models larger than one device: tensor parallelism, FSDP2 and HSDP on one device mesh, sharded
checkpoints, and a memory planner (Muon that shares its work among processes is lightning_gpt/optim/muon.py).
Built on torch's own APIs (`fully_shard`, `parallelize_module`, DTensor, `torch.distributed.checkpoint`) and
Lightning's ModelParallelStrategy.

    mesh.py        the (replicate, shard, tensor) device mesh and its sizes
    tensor.py      tensor parallelism for the Llama family (`tensor_parallel`), and what it refuses
    apply.py       `parallelize`: tensor parallelism, activation checkpointing, then FSDP2 / HSDP per block
    strategy.py    `FSDPStrategy` (trainer=fsdp, hsdp, fsdp_tp): builds the mesh, parallelizes, saves checkpoints
    checkpoint.py  sharded (DCP) checkpoints: atomic saves, checks, one-process reading, `consolidate`
    memory.py      bytes per process of a configuration, and the largest micro-batch that fits

Nothing here is imported by `import lightning_gpt`: torch.distributed loads only when used.
"""
