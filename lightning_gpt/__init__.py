"""lightning_gpt: train GPT-style Transformers from Hydra configs.

From Python, a trained checkpoint is one call away:

    import lightning_gpt
    model, tokenizer = lightning_gpt.load("outputs/train/runs/<stamp>")   # a run folder or a .ckpt file
    prompt = torch.tensor([tokenizer.encode("ROMEO:")])
    for token in lightning_gpt.generate(model, prompt, max_new_tokens=100, temperature=0.8, top_k=200):
        print(tokenizer.decode(token[0].tolist()), end="", flush=True)
    print(lightning_gpt.complete(model, tokenizer, "ROMEO:", max_new_tokens=100)[0])   # or all at once

Importing the package stays cheap: torch loads only when a checkpoint does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_gpt.checkpoints import find_checkpoint, load_checkpoint, read_checkpoint
from lightning_gpt.errors import UserError

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.tokenizers import Tokenizer

__all__ = ["UserError", "complete", "find_checkpoint", "generate", "load", "load_checkpoint", "read_checkpoint"]


def load(ckpt_path: str | Path, device: Any = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """The model (in eval mode, on device) and its tokenizer from a checkpoint file, a run folder (its
    last.ckpt) or a Hugging Face transformers folder."""
    import torch

    from lightning_gpt.models import build
    from lightning_gpt.tokenizers import tokenizer_from_dict

    config, tokenizer, state = read_checkpoint(ckpt_path, device)
    with torch.device(device):
        model = build(config)
    model.load_state_dict(state)
    return model.eval(), tokenizer_from_dict(tokenizer)


def generate(*args: Any, **kwargs: Any) -> Any:
    """Yield next tokens one step at a time: see `lightning_gpt.generation.generate`."""
    from lightning_gpt.generation import generate

    return generate(*args, **kwargs)


def complete(*args: Any, **kwargs: Any) -> list[str]:
    """Continue a prompt: see `lightning_gpt.generation.complete`."""
    from lightning_gpt.generation import complete

    return complete(*args, **kwargs)
