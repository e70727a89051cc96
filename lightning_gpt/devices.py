"""The device a tool runs on, and one vocabulary for numeric precision: Lightning's names, for training and
for every tool.

    32-true      float32 everywhere
    bf16-mixed   float32 weights, bfloat16 compute (autocast)      bf16-true   bfloat16 weights and compute
    16-mixed     float32 weights, float16 compute + a loss scaler  16-true     float16 weights and compute

Lightning also accepts 32, bf16 and 16 (its older spellings); they mean 32-true, bf16-mixed and 16-mixed here
as there. Sampling and the other tools run a model in the compute dtype of the name they are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAMES = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def canonical(precision: str | int) -> str:
    """Lightning's full name of a precision; ValueError for one Lightning does not know."""
    name = _ALIASES.get(str(precision), str(precision))
    if name not in NAMES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(NAMES)}")
    return name


def compute_dtype(precision: str | int) -> torch.dtype:
    """The dtype matrix multiplications run in."""
    import torch

    return {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}[canonical(precision).split("-")[0]]


def is_half(precision: str | int) -> bool:
    """Whether compute runs in bfloat16 or float16 (tensor-core peaks apply, FSDP casts its shards)."""
    return canonical(precision) != "32-true"


def is_float16(precision: str | int) -> bool:
    """float16 (not bfloat16): gradients need a loss scaler under 16-mixed."""
    return canonical(precision).startswith("16")


def pick_device(device: str, precision: str | None) -> tuple[torch.device, torch.dtype]:
    """The torch device and compute dtype a tool runs a model in ("auto": the best device there is; precision
    None: bf16-true on GPUs that have bfloat16, else 32-true)."""
    import torch

    from lightning_gpt.errors import UserError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:<index> or mps") from e
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, True):
        raise UserError(f"device {device} is not here (no {dev.type} device); use auto or cpu")
    if precision is None:
        precision = "bf16-true" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    try:
        return dev, compute_dtype(precision)
    except ValueError as e:
        raise UserError(str(e)) from e
