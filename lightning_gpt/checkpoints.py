"""Checkpoint files: find them in run folders, read them safely, resolve `ckpt_path`, check a resume.

Torch only (no Lightning): `lightning_gpt.load`, the apps and the Lightning-side writer
(`lightning_gpt.training.checkpoint_io`) all come here. A run folder holds checkpoints/last.ckpt (the state it ended
or stopped in), step<N>.ckpt snapshots and best-step<N>-val<loss>.ckpt; a SLURM requeue adds hpc_ckpt_<n>.ckpt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning_gpt.errors import UserError

log = logging.getLogger(__name__)
LOCK = ".lock"  # held by the lgpt-train process training in a run folder (lightning_gpt.runs.run_lock)


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

    A Hugging Face folder (config.json + weights) of a GPT-2-vocabulary model, of any family, reads with
    the gpt2 tokenizer; for another vocabulary (a Llama's 32,000 tokens) we have no tokenizer.
    """
    path = find_checkpoint(path)
    if _is_hf_folder(path):
        from lightning_gpt.hf import import_config, import_state_dict

        config = import_config(str(path))
        if config.vocab_size != 50257:
            raise UserError(
                f"{path} is not a GPT-2-vocabulary model ({config.vocab_size} tokens, not 50257): "
                "its tokenizer is unknown"
            )
        state = {k: v.to(device) for k, v in import_state_dict(str(path)).items()}
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


def resolve_ckpt_path(value: str | None, log_dir: str, output_dir: str, task_name: str | None = None) -> str | None:
    """The checkpoint file to resume from, or None for a fresh start.

    value: a checkpoint file; a run folder (its last.ckpt, else its newest whole checkpoint); "latest" (that
    of the newest run of task_name under log_dir that is not still training); "auto" (that of this run
    folder if it has one, so a requeued job resumes, else a fresh start).
    """

    if value is None:
        return None
    if value == "auto":
        found = newest_whole_checkpoint(Path(output_dir))
        return str(found) if found else None
    if value == "latest":
        return str(find_checkpoint(latest_run(log_dir, task_name)))
    return str(find_checkpoint(value))


def latest_run(log_dir: str, task_name: str | None) -> Path:
    """The run folder of task_name (every task if None) whose newest checkpoint is newest, skipping runs
    that are still training (their lock is held)."""

    root = Path(log_dir) / (task_name or "")
    runs = [c.parent for c in root.glob("**/checkpoints") if c.is_dir()]
    busy = [r for r in runs if in_use(r)]
    newest = {r: max((p.stat().st_mtime for p in (r / "checkpoints").glob("*.ckpt")), default=None) for r in runs}
    for run in sorted((r for r in runs if r not in busy and newest[r]), key=newest.get, reverse=True):
        if newest_whole_checkpoint(run):
            return run
    still = f" ({len(busy)} still training)" if busy else ""
    raise UserError(
        f"ckpt_path=latest: no stopped or finished run with a checkpoint under {root}{still}; "
        "train first, or give ckpt_path=<run folder>"
    )


def in_use(run: Path) -> bool:
    """Whether an lgpt-train process holds this run folder's lock (see lightning_gpt.runs.run_lock)."""
    import fcntl

    try:
        fd = os.open(run / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


SHAPE_KEYS_IGNORED = ("dropout",)  # may change on resume; every other model key fixes the weights' shapes


def check_resumable(path: str, model_config: dict[str, Any], tokenizer: dict[str, Any], max_steps: int = -1) -> None:
    """Fail before training if the checkpoint is damaged, was trained with another shape or tokenizer, or
    already reached max_steps (the run would end at once, training nothing)."""
    checkpoint = load_checkpoint(path, mmap=True)
    try:
        saved = checkpoint["hyper_parameters"]
        saved_model, saved_tokenizer = saved["model"], saved["tokenizer"]
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a lightning_gpt checkpoint (no model config in it); resume from one") from e
    if saved_tokenizer["name"] != tokenizer["name"]:
        raise UserError(
            f"cannot resume from {path}: it was trained with tokenizer.name={saved_tokenizer['name']}, this run has "
            f"tokenizer.name={tokenizer['name']}; use the checkpoint's tokenizer"
        )
    if saved_tokenizer != tokenizer and "chars" in tokenizer:
        raise UserError(
            f"cannot resume from {path}: its character vocabulary ({len(saved_tokenizer.get('chars', ''))} chars) "
            f"differs from this run's data ({len(tokenizer.get('chars', ''))} chars); resume on the same data"
        )
    if saved_tokenizer != tokenizer:
        raise UserError(
            f"cannot resume from {path}: its {tokenizer['name']} vocabulary, learned from its training data, differs "
            "from this run's (the data or tokenizer.vocab_size changed); resume on the same data and settings"
        )
    from lightning_gpt.models import config_from_dict

    saved_model = config_from_dict(saved_model).to_dict()  # a checkpoint from before families has no family key
    for key in sorted(set(saved_model) | set(model_config)):
        if key not in SHAPE_KEYS_IGNORED and saved_model.get(key) != model_config.get(key):
            raise UserError(
                f"cannot resume from {path}: it was trained with model.{key}={saved_model.get(key)}, this run has "
                f"model.{key}={model_config.get(key)}; use the checkpoint's value, or drop ckpt_path to start afresh"
            )
    step = checkpoint.get("global_step", 0)
    if 0 <= max_steps <= step:
        raise UserError(
            f"{path} is already at step {step} and trainer.max_steps={max_steps}: nothing to train; "
            f"raise trainer.max_steps above {step} to continue"
        )
