"""Checkpoints: find them in run folders, verify them, read them. Torch only (no Lightning).

A run folder holds checkpoints/last.ckpt (the state it ended or stopped in), step<N>.ckpt snapshots and
best-step<N>-val<loss>.ckpt; a SLURM requeue adds hpc_ckpt_<n>.ckpt. Each is a file, or with
`trainer.strategy.save_distributed_checkpoint=true` a sharded folder (a link to a folder of shards, written
by every process: lightning_gpt/parallel/checkpoint.py); every tool reads both. Every checkpoint is read as
possibly damaged: torch.save writes a zip archive whose every record carries a CRC-32, which torch.load never
checks, so a damaged file would load silently; `damage` checks them (one read of the file), a sharded folder's
manifest holds each shard's CRC-32; loading is weights-only (no code can run).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning_gpt.errors import UserError, first_line

log = logging.getLogger(__name__)
LOCK = ".lock"  # held by the lgpt-train process training in a run folder (lightning_gpt.runs.RunLock)
WHERE = "give a .ckpt file, a run folder with checkpoints/ or a Hugging Face folder (config.json + weights)"


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file or a Hugging Face folder as given, or a run folder's newest checkpoint that loads.

    For a run folder (or its checkpoints/ folder): last.ckpt, the state the run ended or stopped in, unless
    it is missing or damaged (a kill during its first save, a bad disk), then the newest whole one.
    """
    from lightning_gpt.parallel.checkpoint import is_sharded

    path = Path(path).expanduser()
    if is_hf_folder(path) or is_sharded(path):
        return path
    if path.is_dir():
        found = newest_whole_checkpoint(path)
        if found is None:
            raise UserError(f"no checkpoint that loads in {path}; {WHERE}")
        return found
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; {WHERE}")
    return path


def newest_whole_checkpoint(run: Path) -> Path | None:
    """The run folder's last.ckpt (or the newer of it and a SLURM requeue's hpc_ckpt_<n>.ckpt), else, when
    that is missing or damaged, the newest other checkpoint whose checksums hold; None if there is none."""
    from lightning_gpt.parallel.checkpoint import is_sharded

    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    by_age = lambda paths: sorted(  # noqa: E731
        (p for p in paths if p.is_file() or is_sharded(p)), key=lambda p: p.stat().st_mtime, reverse=True
    )
    last = by_age([folder / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")])
    others = by_age(p for p in folder.glob("*.ckpt") if p not in last)
    for i, candidate in enumerate([*last, *others]):
        if damage(candidate) is None:
            if i:
                log.warning(f"{last[0] if last else folder / 'last.ckpt'} is missing or damaged; using {candidate}")
            return candidate
    return None


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint (None: its archive and every record's checksum are whole; a sharded
    folder's shards all there, each of its size and checksum)."""
    import zipfile

    if path.is_dir():
        from lightning_gpt.parallel.checkpoint import problems

        found = problems(path)
        return found[0] if found else None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as e:
        try:
            with open(path, "rb") as f:
                zip_magic = f.read(2) == b"PK"
        except OSError as err:
            return f"unreadable ({err.strerror})"
        return f"truncated or corrupt ({e})" if zip_magic else "not a zip archive"
    except (OSError, EOFError) as e:
        return f"unreadable ({getattr(e, 'strerror', None) or e})"
    return f"corrupt (checksum mismatch in {bad})" if bad is not None else None


def load_checkpoint(path: str | Path, device: Any = "cpu", mmap: bool = False) -> Any:
    """What a checkpoint holds, its checksums verified first and loaded weights-only (a sharded folder read whole,
    as the one file it would be: `optimizer_states` keyed by position, as one process keys them)."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        from lightning_gpt.parallel.checkpoint import read_sharded

        checkpoint = read_sharded(path)
        checkpoint["state_dict"] = {k: v.to(device) for k, v in checkpoint["state_dict"].items()}
        return checkpoint
    problem = damage(path)
    if problem == "not a zip archive":
        raise UserError(
            f"{path} is not a lightning_gpt checkpoint (not a zip archive: a legacy torch.save format or another "
            "kind of file); give a checkpoint written by lgpt-train"
        )
    if problem is not None:
        raise UserError(f"checkpoint {path} is {problem}; use another checkpoint, e.g. an earlier one in its folder")
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} holds Python objects other than tensors and plain data, which could run code when loaded; "
            "lightning_gpt loads weights only: give a checkpoint written by lgpt-train"
        ) from e
    except Exception as e:
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({first_line(e, 120)}); use another checkpoint, e.g. an "
            "earlier one in its folder"
        ) from e


def read_header(path: Path) -> dict[str, Any]:
    """A checkpoint's global_step, hyper_parameters and the rest, its checksums verified, its tensors not read (a
    file's memory-mapped, a sharded folder's left in their shards)."""
    if path.is_dir():
        from lightning_gpt.parallel.checkpoint import read_meta, verify

        verify(path)
        return read_meta(path)
    return load_checkpoint(path, mmap=True)


def checkpoint_parts(checkpoint: Any, path: Path) -> tuple[dict, dict, dict]:
    """(model config, tokenizer, hyper_parameters) of one of our checkpoints; one line if it is not one."""
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    weights = path.is_dir() or "state_dict" in checkpoint  # a sharded folder's are in its shards
    if "model" not in hparams or "tokenizer" not in hparams or not weights:
        raise UserError(
            f"{path} is not a lightning_gpt checkpoint (no model config or tokenizer in it); give a checkpoint "
            "written by lgpt-train"
        )
    return hparams["model"], hparams["tokenizer"], hparams


def read_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[dict, dict, dict]:
    """(model config dict, tokenizer dict, model state dict) of one of our checkpoints, tensors on device.

    A Hugging Face folder (config.json + weights) of a GPT-2-vocabulary model, of any family, reads with
    the gpt2 tokenizer; for another vocabulary (a Llama's 32,000 tokens) we have no tokenizer.
    """
    path = find_checkpoint(path)
    if is_hf_folder(path):
        from lightning_gpt.hf import import_config, import_state_dict

        config = import_config(str(path))
        if config.vocab_size != 50257:
            raise UserError(
                f"{path} is not a GPT-2-vocabulary model ({config.vocab_size} tokens, not 50257): "
                "its tokenizer is unknown"
            )
        state = {k: v.to(device) for k, v in import_state_dict(str(path)).items()}
        return config.to_dict(), {"name": "gpt2"}, state
    if path.is_dir():
        from lightning_gpt.parallel.checkpoint import read_model

        return read_model(path, device)
    checkpoint = load_checkpoint(path, device)
    model, tokenizer, _ = checkpoint_parts(checkpoint, path)
    # Lightning prefixes the model's parameters with "model."; torch.compile adds "_orig_mod.".
    state = {
        k.removeprefix("model.").replace("_orig_mod.", ""): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    return model, tokenizer, state


def latest_run(log_dir: str | Path, task_name: str | None) -> Path:
    """The run folder of task_name (every task if None) whose newest checkpoint is newest, skipping runs
    that are still training (their lock is held)."""
    root = Path(log_dir) / (task_name or "")
    runs = [c.parent for c in root.glob("**/checkpoints") if c.is_dir()]
    busy = [r for r in runs if in_use(r)]
    newest = {
        r: max((p.stat().st_mtime for p in (r / "checkpoints").glob("*.ckpt") if p.exists()), default=None)
        for r in runs
    }
    for run in sorted((r for r in runs if r not in busy and newest[r]), key=newest.get, reverse=True):
        if newest_whole_checkpoint(run):
            return run
    still = f" ({len(busy)} still training)" if busy else ""
    raise UserError(
        f"ckpt_path=latest: no stopped or finished run with a checkpoint under {root}{still}; "
        "train first, or give ckpt_path=<run folder>"
    )


def in_use(run: Path) -> bool:
    """Whether an lgpt-train process holds this run folder's lock (see lightning_gpt.runs.RunLock)."""
    import fcntl

    try:
        fd = os.open(run / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
