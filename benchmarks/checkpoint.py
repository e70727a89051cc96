"""What checkpoint integrity costs: saving, verifying the CRC-32s and loading a GPT-2-small-sized checkpoint.

The checkpoint is what lgpt-train saves for `model=gpt2_small` (124M parameters) with AdamW's two moments,
about 1.5 GB, written by `AtomicCheckpointIO` to a temporary folder on the same disk. Verifying is
`lightning_gpt.load_checkpoint`'s check (zipfile's CRC-32 of every record, one read of the file);
loading is torch.load(weights_only=True), which reads the same bytes again.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from benchmarks import Stopwatch, row


def run(quick: bool) -> list[dict]:
    import torch

    from lightning_gpt.models.gpt2.model import GPT, GPTConfig
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    config = GPTConfig(block_size=1024, vocab_size=50304, n_layer=4 if quick else 12, n_head=12, n_embd=768)
    model = GPT(config)
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in model.named_parameters()}
    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [moments], "global_step": 1}
    case = f"{model.num_params(non_embedding=False) / 1e6:.0f}M parameters + AdamW moments"
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        path = Path(folder) / "last.ckpt"
        with Stopwatch() as save:
            AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        size_gb = path.stat().st_size / 1e9
        with Stopwatch() as verify:
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None
        with Stopwatch() as load:
            torch.load(path, map_location="cpu", weights_only=True)
    note = f"{size_gb:.2f} GB; file in the OS cache (just written)"
    return [
        row("checkpoint", case, "save (write, fsync, rename)", save.seconds, "s", note=note),
        row(
            "checkpoint",
            case,
            "verify CRC-32s",
            verify.seconds,
            "s",
            ratio=verify.seconds / load.seconds,
            note=f"{size_gb / verify.seconds:.2f} GB/s; ratio: against loading",
        ),
        row("checkpoint", case, "torch.load(weights_only=True)", load.seconds, "s", note=note),
    ]
