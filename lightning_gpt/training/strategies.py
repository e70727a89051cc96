"""Several processes, one run: generation from a sharded model, and every launcher agreeing on one run folder.
The FSDP2 / HSDP / tensor-parallel strategy itself is `lightning_gpt.parallel.strategy.FSDPStrategy`.

- `full_parameters`: the root's gathered parameters while generating outside `forward`; `can_generate`.
- `children_run_this_app`: Lightning starts the extra DDP processes of one machine by re-running the parent's
  command line; under a Hydra sweep or a submitit job that command is not ours. They run `lightning_gpt.apps.train`
  instead, which reads rank 0's resolved config from the run folder (see `train.main`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def can_generate(trainer: Any) -> bool:
    """Whether the training processes can sample text: not under sequence parallelism (see FSDPStrategy)."""
    return not getattr(trainer.strategy, "splits_sequences", False)


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
