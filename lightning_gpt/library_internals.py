"""The private parts of the libraries we build on that lightning_gpt still uses: one function each, saying why
there is no public way. tests/test_library_internals.py calls each against the installed libraries, so an
upgrade that changes one fails there, loudly, instead of somewhere silently.
"""

from __future__ import annotations

from typing import Any


def tensorboard_file_writer(writer: Any) -> Any:
    """The FileWriter of a torch SummaryWriter: the HPARAMS tab's summaries must go into the run's own event file,
    beside its scalars. The public `SummaryWriter.add_hparams` writes them into a new subfolder per call, which
    TensorBoard then shows as a second run."""
    return writer._get_file_writer()


def muon_lr_scale(lr: float, adjust_lr_fn: str | None, shape: Any) -> float:
    """torch.optim.Muon's learning rate for a matrix of this shape (its adjust_lr_fn rule): our float32 step on
    CPUs must take the very step torch's own does, and torch keeps the rule in a private function."""
    from torch.optim._muon import _adjust_lr

    return _adjust_lr(lr, adjust_lr_fn, shape)


def muon_group_state(optimizer: Any, group: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """(parameters with gradients, their gradients, their momentum buffers, created at first use) of one
    parameter group of a torch.optim.Muon, as its own step collects them: state kept exactly as torch keeps it,
    so a state_dict saved by either step loads into the other."""
    params: list[Any] = []
    grads: list[Any] = []
    buffers: list[Any] = []
    optimizer._init_group(group, params, grads, buffers)
    return params, grads, buffers


def muon_newton_schulz(update: Any, coefficients: tuple[float, float, float], steps: int, eps: float) -> Any:
    """torch.optim.Muon's own Newton-Schulz iteration (bfloat16 on GPUs): a matrix that our distributed step
    orthogonalizes on a GPU must get exactly what torch's one-process step computes, and torch keeps it private."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(update, coefficients, steps, eps)


def start_process_group(strategy: Any) -> None:
    """Lightning's ModelParallelStrategy starts the process group (ranks, backend, timeout, device) in a private
    step of its setup_environment, which then builds its own 2-D mesh; our FSDPStrategy needs that step alone,
    to build a 3-D (replicate, shard, tensor) mesh instead."""
    strategy._setup_distributed()


def flatten_mesh(mesh: Any, name: str) -> Any:
    """A DeviceMesh's dimensions merged into one 1-D mesh named `name`: torch's only way to merge dimensions is
    the private `_flatten` (torchtitan uses it too); the root mesh caches the result under that name."""
    return mesh._flatten(name)


def checkpoint_in_place(module: Any) -> Any:
    """Activation checkpointing applied to a module in place (torch's composable `checkpoint`): the public
    `checkpoint_wrapper` wraps the module, which renames every parameter and so every checkpoint key."""
    from torch.distributed._composable import checkpoint

    return checkpoint(module)


def read_whole_dcp(folder: str, keys: set[str] | None = None) -> dict[str, Any]:
    """Everything a torch.distributed.checkpoint folder holds (only the top-level `keys` if given), read whole in
    one process without a process group, as torch's own converter (format_utils.dcp_to_torch_save) reads it: its
    planner rebuilds the nested dict from the folder's index, and torch's public `load` fills only keys already
    present in a dict of the right shapes."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    planner = _EmptyStateDictLoadPlanner(keys=keys)
    _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=planner, no_dist=True)
    return state
