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
