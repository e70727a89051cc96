"""Training models larger than one device: tensor parallelism, FSDP2 and HSDP on one device mesh, sharded
checkpoints, distributed Muon, and a memory planner. Built on torch's own APIs (`fully_shard`,
`parallelize_module`, DTensor, `torch.distributed.checkpoint`) and Lightning's ModelParallelStrategy.

    mesh.py        the (replicate, shard, tensor) device mesh and its sizes
    tensor.py      tensor parallelism for the Llama family (`tensor_parallel`), and what it refuses
    apply.py       `parallelize`: tensor parallelism, activation checkpointing, then FSDP2 / HSDP per block
    strategy.py    `FSDPStrategy`: the Lightning strategy that builds the mesh and saves sharded checkpoints
    checkpoint.py  sharded (DCP) checkpoints: atomic saves, checks, one-process reading, `consolidate`
    muon.py        `DistMuon`: Muon whose orthogonalizations are shared out among the processes
    memory.py      bytes per process of a configuration, and the largest micro-batch that fits

Nothing here is imported by `import lightning_gpt`: torch.distributed loads only when used.
"""
