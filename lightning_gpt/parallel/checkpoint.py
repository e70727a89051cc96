"""Sharded checkpoints (torch.distributed.checkpoint, DCP) as first-class files: written atomically, checked on
every load, readable in one process without a process group, consolidated into one .ckpt file.

A sharded checkpoint is a folder, as Lightning's ModelParallelStrategy writes it with
`save_distributed_checkpoint=True`:

    .metadata          DCP's index: which bytes of which file hold which piece of which tensor
    __<rank>_0.distcp  each process's shards of the weights ("state_dict.*") and optimizer states ("optimizer_<i>.*")
    meta.pt            Lightning's: everything else (hyper_parameters, loops, callbacks, data module, RNG states)
    manifest.json      ours: every file's size and CRC-32, written last (DCP has no checksums)

Atomic saves. A folder cannot replace another in one rename, so a checkpoint name (`last.ckpt`,
`step000100.ckpt`) is a symbolic link to a data folder beside it (`last.ckpt.<16 hex digits>`): a save writes a
new data folder, then replaces the link in one rename, then removes the old data folder. A kill at any moment
leaves the name pointing at a whole checkpoint, the old one or the new one; a half-written data folder is
referenced by no link, so nothing reads it, and the next save in that folder removes it. A save of the same
training state as the previous one (the step snapshot, then last.ckpt) links the same data folder.

The optimizer states of a consolidated file are keyed as `optimizer.state_dict()` keys them in one process:
by position in the optimizer's parameter groups.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightning_gpt.errors import UserError
from lightning_gpt.io import create_new, fsync_folder, temporary_name
from lightning_gpt.library_internals import read_whole_dcp

META = "meta.pt"  # Lightning's name (lightning.fabric.utilities.load._METADATA_FILENAME)
DCP_METADATA = ".metadata"
MANIFEST = "manifest.json"
_DATA = re.compile(r".+\.[0-9a-f]{16}$")  # a data folder: <checkpoint name>.<16 hex digits>
_LINK = re.compile(r"^\..+\.[0-9a-f]{16}\.link$")  # a link being made: .<name>.<16 hex digits>.link


def is_sharded(path: str | Path) -> bool:
    """Whether path (or what it links to) is a folder holding a DCP checkpoint."""
    path = Path(path)
    return path.is_dir() and ((path / DCP_METADATA).is_file() or (path / META).is_file())


# ---------------------------------------------------------------------------------------------------------
# Checks


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _dcp_metadata(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(str(folder)).read_metadata()
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} is incomplete: {folder.resolve() / DCP_METADATA} is missing") from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {folder} is damaged: {folder.resolve() / DCP_METADATA} does not read ({reason})"
        ) from None


def shard_sizes(folder: Path) -> dict[str, int]:
    """Each shard file DCP's index names, with the least size it must have (the end of its last piece)."""
    sizes: dict[str, int] = {}
    for info in _dcp_metadata(folder).storage_data.values():
        sizes[info.relative_path] = max(sizes.get(info.relative_path, 0), info.offset + info.length)
    return sizes


def problems(folder: Path, files: Iterable[str] | None = None, checksums: bool = True) -> list[str]:
    """What is wrong with a sharded checkpoint folder, one line each naming the file (empty: whole).

    Sizes come from DCP's index (a missing or truncated shard), checksums from our manifest (a shard
    changed after it was written); `files` limits the checksums to some files (each process checks its
    share). A folder without a manifest (written by Lightning alone) is checked by sizes only."""
    folder = Path(folder)
    if not folder.is_dir():
        target = f" (it links to {os.readlink(folder)}, which is gone)" if folder.is_symlink() else ""
        return [f"checkpoint {folder} is missing{target}"]
    data = folder.resolve()  # name the files where they are, not through the checkpoint's link
    if not (data / META).is_file():
        return [f"checkpoint {folder} is incomplete: {data / META} is missing"]
    try:
        sizes = shard_sizes(folder)
    except UserError as e:
        return [str(e)]
    found = []
    for name, least in sorted(sizes.items()):
        path = data / name
        if not path.is_file():
            found.append(f"checkpoint {folder} is incomplete: shard {path} is missing")
        elif path.stat().st_size < least:
            found.append(
                f"checkpoint {folder} is damaged: shard {path} is truncated ({path.stat().st_size} of {least} bytes)"
            )
    manifest = data / MANIFEST
    if found or not checksums or not manifest.is_file():
        return found
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return [f"checkpoint {folder} is damaged: {manifest} does not read ({e})"]
    for name in sorted(recorded if files is None else set(files) & set(recorded)):
        path, want = data / name, recorded[name]
        if not path.is_file():
            found.append(f"checkpoint {folder} is incomplete: {path} is missing")
        elif path.stat().st_size != want["bytes"]:
            found.append(f"checkpoint {folder} is damaged: {path} has {path.stat().st_size} bytes, not {want['bytes']}")
        elif f"{_crc32(path):08x}" != want["crc32"]:
            found.append(f"checkpoint {folder} is corrupt: {path} fails its checksum")
    return found


def verify(folder: str | Path, checksums: bool = True) -> None:
    """Raise a one-line UserError naming the first missing, truncated or corrupt file of a sharded checkpoint.

    Under a process group every process checks a share of the files' checksums and all raise the same error."""
    folder = Path(folder)
    found: list[str] = []
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
        found = problems(folder, checksums=False)
        if not found and checksums and (folder / MANIFEST).is_file():
            names = sorted(json.loads((folder / MANIFEST).read_text())["files"])
            found = problems(folder, files=names[rank::world])
        every: list[list[str]] = [[] for _ in range(world)]
        dist.all_gather_object(every, found)
        found = [line for lines in every for line in lines]
    else:
        found = problems(folder, checksums=checksums)
    if found:
        raise UserError(f"{found[0]}; use another checkpoint, e.g. an earlier one in the same folder")


# ---------------------------------------------------------------------------------------------------------
# Reading in one process


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (as `get_optimizer_state_dict` gives it) keyed by
    position in the parameter groups instead, as `optimizer.state_dict()` of one process keys it."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": dict(sorted((index[name], value) for name, value in state.get("state", {}).items())),
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]],
    }


def optimizer_state_by_name(
    state: dict[str, Any], optimizer_order: list[str], model_order: list[str], shapes: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
    """The inverse of `optimizer_state_by_index`, for a single-file checkpoint: positions to parameter names.

    Positions count the optimizer's parameters in its groups' order (torch's layout: one process, DDP, our
    consolidated and full files), except in full files of Lightning's ModelParallelStrategy (so those of
    the FSDP strategy of earlier lightning_gpt versions), which count them in the model's order. The order whose
    parameters have the shapes of the saved moments is the one used; torch's when both fit."""

    def named(order: list[str]) -> dict[str, Any]:
        return {order[i]: values for i, values in state["state"].items()}

    def fits(order: list[str]) -> bool:
        return all(
            tuple(t.shape) == shapes[name]
            for name, values in named(order).items()
            for t in values.values()
            if isinstance(t, torch.Tensor) and t.dim() > 0  # not `step`
        )

    order = model_order if not fits(optimizer_order) and fits(model_order) else optimizer_order
    return {
        "state": named(order),
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def read_sharded(folder: str | Path, weights_only: bool = False, checksums: bool = True) -> dict[str, Any]:
    """A sharded checkpoint as one process sees a single-file one: Lightning's checkpoint dict with the full
    `state_dict` (names as the LightningModule's: "model.<parameter>") and `optimizer_states` (none with
    weights_only), plus everything in meta.pt. No process group needed; every tensor is read whole."""
    folder = Path(folder)
    verify(folder, checksums=checksums)
    checkpoint = read_meta(folder)
    state = read_whole_dcp(str(folder), keys={"state_dict"} if weights_only else None)
    checkpoint["state_dict"] = state.pop("state_dict")
    if not weights_only:
        optimizers = sorted((k for k in state if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
        checkpoint["optimizer_states"] = [optimizer_state_by_index(state.pop(k)) for k in optimizers]
    return checkpoint


def read_meta(folder: str | Path) -> dict[str, Any]:
    """Lightning's meta.pt of a sharded checkpoint (global_step, hyper_parameters, loops, ...): no tensors read."""
    return torch.load(Path(folder) / META, map_location="cpu", weights_only=True)


def read_model(folder: str | Path, device: Any = "cpu") -> tuple[dict, dict, dict]:
    """(model config dict, tokenizer dict, model state dict) of a sharded checkpoint, as
    `lightning_gpt.checkpoints.read_checkpoint` returns them for a file: what `lightning_gpt.load`, lgpt-sample,
    lgpt-export and lgpt-eval need. Only the weights are read."""
    folder = Path(folder)
    checkpoint = read_sharded(folder, weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model" not in hparams or "tokenizer" not in hparams:
        raise UserError(f"{folder} is not a lightning_gpt checkpoint (no model config or tokenizer in it)")
    state = {
        k.removeprefix("model.").replace("_orig_mod.", ""): v.to(device)
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    return hparams["model"], hparams["tokenizer"], state


def load_sharded(folder: str | Path, module: torch.nn.Module, optimizers: Iterable[Any] = ()) -> dict[str, Any]:
    """Load a sharded checkpoint into a (parallelized) module and its optimizers on every process, whatever
    the number of processes or the mesh it was saved from (DCP reshards: each process reads the pieces its
    shards need); the rest of the checkpoint (meta.pt) is returned. Lightning's own loader does the same."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)
    verify(folder)
    state = {"state_dict": get_model_state_dict(module)}
    load(state, checkpoint_id=str(folder))
    set_model_state_dict(module, state["state_dict"])
    for i, optimizer in enumerate(optimizers):
        key = f"optimizer_{i}"
        state = {key: get_optimizer_state_dict(module, optimizer)}
        load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(module, optimizer, state[key])
    return read_meta(folder)


def consolidate(folder: str | Path, out_file: str | Path) -> Path:
    """Write a sharded checkpoint as one .ckpt file (atomically: a temporary file beside it, then a rename),
    in the layout of the single-file checkpoints: what `lightning_gpt.load`, lgpt-sample, lgpt-export and
    lgpt-eval read, and a run resumes from on any number of processes."""
    out_file = Path(out_file)
    checkpoint = read_sharded(folder)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(out_file)
    try:
        with create_new(partial) as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, out_file)
    finally:
        partial.unlink(missing_ok=True)
    fsync_folder(out_file.parent)
    return out_file


# ---------------------------------------------------------------------------------------------------------
# Writing from every process


def _ranks() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(value: Any) -> Any:
    if _ranks()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if _ranks()[1] > 1:
        dist.barrier()


def linked_data(folder: Path) -> dict[Path, list[Path]]:
    """Each data folder in `folder` that a checkpoint name links to, with the names linking to it."""
    links: dict[Path, list[Path]] = {}
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.is_symlink():
            links.setdefault(folder / os.readlink(entry), []).append(entry)
    return links


def _our_data(folder: Path, target: Path) -> bool:
    """Whether a link's target is one of our data folders in `folder`: a link planted at a checkpoint name may
    point anywhere, and what it points at is never removed."""
    return target.parent == folder and bool(_DATA.match(target.name)) and target.is_dir() and not target.is_symlink()


def remove_orphans(folder: Path) -> list[Path]:
    """Remove data folders no checkpoint name links to (saves killed midway, or replaced) and links being
    made when a save was killed; what was removed."""
    if not folder.is_dir():
        return []
    used = set(linked_data(folder))
    removed = []
    for entry in folder.iterdir():
        if _LINK.match(entry.name) and entry.is_symlink():
            entry.unlink()
            removed.append(entry)
        elif _DATA.match(entry.name) and entry.is_dir() and not entry.is_symlink() and entry not in used:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint name: a link (and its data folder, unless another name links to it), a folder or
    a file. One process only."""
    if path.is_symlink():
        target = path.parent / os.readlink(path)
        path.unlink()
        if not linked_data(path.parent).get(target) and _our_data(path.parent, target):
            shutil.rmtree(target, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _point(path: Path, data: Path) -> None:
    """Make `path` a link to `data` (a sibling) in one rename, whatever path was before."""
    link = path.with_name(f".{path.name}.{secrets.token_hex(8)}.link")
    os.symlink(data.name, link)
    if path.is_dir() and not path.is_symlink():  # a folder Lightning wrote in place: not replaceable in one step
        path.rename(path.with_name(f"{path.name}.{secrets.token_hex(8)}"))  # an orphan, removed below
    os.replace(link, path)


class ShardedCheckpointWriter:
    """Writes sharded checkpoints atomically from every process (see the module docstring): what the
    strategy's `save_checkpoint` calls. Remembers its last save to link, not copy, the same state again."""

    def __init__(self) -> None:
        self._previous: tuple[Any, Path] | None = None  # (training state, data folder) of the last save
        self._cleaned: set[Path] = set()  # folders whose orphans this process removed

    def save(self, checkpoint: dict[str, Any], path: str | Path) -> Path:
        """Save Lightning's checkpoint dict (its `state_dict` and `optimizer_states` hold this process's
        shards) under the name `path`; every process calls it. Returns the data folder."""
        from torch.distributed.checkpoint import FileSystemWriter, save

        path = Path(path)
        rank, world = _ranks()
        state = (checkpoint.get("global_step"), checkpoint.get("epoch"), tuple(sorted(checkpoint)))
        reuse, data = False, None
        if rank == 0:  # process 0 decides for all (on a filesystem each node mounts, they would agree anyway)
            reuse = self._previous is not None and self._previous[0] == state and self._previous[1].is_dir()
            data = self._previous[1] if reuse else path.with_name(f"{path.name}.{secrets.token_hex(8)}")
        reuse, data = _broadcast((reuse, data))
        if rank == 0 and path.parent not in self._cleaned:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_orphans(path.parent)
            self._cleaned.add(path.parent)
        _barrier()
        if not reuse:
            shards = {"state_dict": checkpoint.pop("state_dict")}
            for i, optimizer in enumerate(checkpoint.pop("optimizer_states", [])):
                shards[f"optimizer_{i}"] = optimizer
            save(shards, storage_writer=FileSystemWriter(str(data), sync_files=True))  # creates the folder
            if rank == 0:
                with open(data / META, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
            self._write_manifest(data, rank, world)
        if rank == 0:
            old = path.parent / os.readlink(path) if path.is_symlink() else None
            _point(path, data)
            fsync_folder(path.parent)
            if (
                old is not None
                and old != data
                and not linked_data(path.parent).get(old)
                and _our_data(path.parent, old)
            ):
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        self._previous = (state, data)
        return data

    @staticmethod
    def _write_manifest(data: Path, rank: int, world: int) -> None:
        """Each process checksums a share of the files; process 0 writes them all, last of anything."""
        _barrier()  # meta.pt is written
        names = _broadcast(sorted([*shard_sizes(data), DCP_METADATA, META]) if rank == 0 else None)
        mine = {n: {"bytes": (data / n).stat().st_size, "crc32": f"{_crc32(data / n):08x}"} for n in names[rank::world]}
        every: list[Any] = [None] * world
        if world > 1:
            dist.all_gather_object(every, mine)
        else:
            every = [mine]
        if rank == 0:
            files = {k: v for part in every for k, v in part.items()}
            partial = data / f"{MANIFEST}.tmp"
            with open(partial, "w") as f:
                json.dump({"format": 1, "files": dict(sorted(files.items()))}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, data / MANIFEST)
            fsync_folder(data)
