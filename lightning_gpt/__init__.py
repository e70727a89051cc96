"""lightning_gpt: train GPT-style Transformers from Hydra configs.

From Python, a trained checkpoint is one call away:

    import lightning_gpt
    model, tokenizer = lightning_gpt.load("outputs/train/runs/<stamp>")   # a run folder or a .ckpt file
    prompt = torch.tensor([tokenizer.encode("ROMEO:")])
    for token in model.generate(prompt, max_new_tokens=100, temperature=0.8, top_k=200):
        print(tokenizer.decode(token[0].tolist()), end="", flush=True)

Importing the package stays cheap: torch loads only when a checkpoint does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_gpt.errors import UserError

if TYPE_CHECKING:
    from lightning_gpt.model import GPT
    from lightning_gpt.tokenizers import Tokenizer

__all__ = ["UserError", "find_checkpoint", "load", "load_checkpoint", "read_checkpoint"]

log = logging.getLogger(__name__)


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file or a Hugging Face GPT-2 folder as given, or a run folder's newest checkpoint that loads.

    For a run folder (or its checkpoints/ folder): last.ckpt, the state the run ended or stopped in, unless
    it is missing or damaged (a kill during its first save), then the newest whole step*.ckpt.
    """
    path = Path(path).expanduser()
    if _is_hf_folder(path):
        return path
    if path.is_dir():
        found = newest_whole_checkpoint(path)
        if found is None:
            raise UserError(
                f"no checkpoint that loads in {path}; give a .ckpt file, a run folder with "
                "checkpoints/ or a Hugging Face GPT-2 folder"
            )
        return found
    if not path.is_file():
        raise UserError(
            f"checkpoint not found: {path}; give a .ckpt file, a run folder with checkpoints/ "
            "or a Hugging Face GPT-2 folder"
        )
    return path


def newest_whole_checkpoint(run: Path) -> Path | None:
    """The run folder's last.ckpt (or the newer of it and a SLURM requeue's hpc_ckpt_<n>.ckpt), else, when
    that is missing or does not load, the newest other checkpoint that does; None if there is none."""
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    by_age = lambda paths: sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    last = by_age([folder / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")])
    others = by_age(p for p in folder.glob("*.ckpt") if p not in last)
    for i, candidate in enumerate([*last, *others]):
        if _is_whole(candidate):
            if i:
                log.warning(f"{last[0] if last else folder / 'last.ckpt'} is missing or damaged; using {candidate}")
            return candidate
    return None


def _is_whole(path: Path) -> bool:
    """Whether a checkpoint file reads back (a truncated one does not); tensors are mapped, not read."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def read_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[dict, dict, dict]:
    """(GPTConfig dict, tokenizer dict, GPT state dict) of one of our checkpoints, tensors on device.

    A Hugging Face GPT-2 folder (config.json + weights) reads as a GPT-2 with the gpt2 tokenizer.
    """
    path = find_checkpoint(path)
    if _is_hf_folder(path):
        from lightning_gpt.hf import gpt2_config, gpt2_state_dict

        config = gpt2_config(str(path))
        if config.vocab_size != 50257:
            raise UserError(
                f"{path} is not a GPT-2-vocabulary model ({config.vocab_size} tokens, not 50257): "
                "its tokenizer is unknown"
            )
        state = {k: v.to(device) for k, v in gpt2_state_dict(str(path)).items()}
        return config.to_dict(), {"name": "gpt2"}, state
    ckpt = load_checkpoint(path, device)
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model" not in hparams or "tokenizer" not in hparams or "state_dict" not in ckpt:
        raise UserError(
            f"{path} is not a lightning_gpt checkpoint (no model config or tokenizer in it); "
            "give a checkpoint written by lgpt-train"
        )
    # Lightning prefixes the GPT's parameters with "model."; torch.compile adds "_orig_mod.".
    state = {
        k.removeprefix("model.").replace("_orig_mod.", ""): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.")
    }
    return hparams["model"], hparams["tokenizer"], state


def load_checkpoint(path: str | Path, device: Any = "cpu", mmap: bool = False) -> Any:
    """What a .ckpt file holds, its checksums verified first and loaded weights-only (no code can run).

    torch.save writes a zip archive whose every record carries a CRC-32, but torch.load never checks
    them: a damaged file would load silently. Checking costs one read of the file (docs/reliability.md).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            zip_magic = f.read(2) == b"PK"
        if zip_magic:
            raise UserError(
                f"checkpoint {path} is truncated or corrupt ({e}); use another checkpoint, e.g. an "
                "earlier one in the same folder"
            ) from e
        raise UserError(
            f"{path} is not a lightning_gpt checkpoint (not a zip archive: a legacy torch.save "
            "format or another kind of file); give a checkpoint written by lgpt-train"
        ) from e
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read checkpoint {path} ({e}); give a readable .ckpt file") from e
    if damaged is not None:
        raise UserError(
            f"checkpoint {path} is corrupt (checksum mismatch in {damaged}); use another "
            "checkpoint, e.g. an earlier one in the same folder"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} holds Python objects other than tensors and plain data, which could run code "
            "when loaded; lightning_gpt loads weights only: give a checkpoint written by "
            "lgpt-train"
        ) from e
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({reason}); use another checkpoint, e.g. "
            "an earlier one in the same folder"
        ) from e


def load(ckpt_path: str | Path, device: Any = "cpu") -> tuple[GPT, Tokenizer]:
    """The GPT (in eval mode, on device) and its tokenizer from a checkpoint file, a run folder (its
    last.ckpt) or a Hugging Face GPT-2 folder."""
    import torch

    from lightning_gpt.model import GPT, GPTConfig
    from lightning_gpt.tokenizers import tokenizer_from_dict

    config, tokenizer, state = read_checkpoint(ckpt_path, device)
    with torch.device(device):
        model = GPT(GPTConfig(**config))
    model.load_state_dict(state)
    return model.eval(), tokenizer_from_dict(tokenizer)
