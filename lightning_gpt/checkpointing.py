"""Checkpoints that survive a kill, a full disk and a preempting scheduler; checks before resuming.

Lightning's own atomic save writes the whole checkpoint to memory, then to a temporary file in the
system temp folder, and moves it into place: when that folder is on another filesystem (a tmpfs /tmp,
node-local scratch beside a shared filesystem) the move is a copy, and a kill during it leaves a
truncated checkpoint. `AtomicCheckpointIO` writes beside the target, syncs, then renames.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gpt.errors import UserError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to `<name>.tmp` in the same folder, fsync, rename: the old file stays whole until the new one is."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except OSError as e:
            partial.unlink(missing_ok=True)
            if e.errno in _DISK_FULL:
                raise UserError(
                    f"no space left to save {path} ({e.strerror}); the previous checkpoints are intact: "
                    "free space (or set paths.log_dir to a larger disk) and resume from them"
                ) from e
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LastCheckpoint(L.Callback):
    """Keeps checkpoints/last.ckpt current where Lightning's ModelCheckpoint would not.

    At the end of training: ModelCheckpoint refreshes last.ckpt only on its own triggers, so a run whose
    last step is not one would leave an older one. On SIGTERM or SIGUSR1 (how SLURM and cloud schedulers
    preempt): Lightning stops cleanly at the next batch; this saves first. SIGUSR1 is routed to SIGTERM's
    path, except under SLURM with auto-requeue, where Lightning's own handler saves and requeues.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = getattr(trainer.strategy, "cluster_environment", None)  # single-device strategies have none
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)
        if path is not None and trainer.strategy.broadcast(_saved_step(path) != trainer.global_step):
            trainer.save_checkpoint(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        path = self._path(trainer)
        if isinstance(exception, SIGTERMException) and path is not None:
            trainer.save_checkpoint(path)
            rank_zero_info(
                f"stopped by a signal at step {trainer.global_step}: saved {path}; "
                f"resume with ckpt_path={path.parent.parent}"
            )

    @staticmethod
    def _path(trainer: L.Trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        return Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None


def _saved_step(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except (OSError, RuntimeError, KeyError):
        return None


SHAPE_KEYS_IGNORED = ("dropout",)  # may change on resume; every other model key fixes the weights' shapes


def check_resumable(path: str, model_config: dict[str, Any], tokenizer: dict[str, Any]) -> None:
    """Fail before training if the checkpoint is unreadable or was trained with another shape or tokenizer."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = checkpoint["hyper_parameters"]
        saved_model, saved_tokenizer = saved["model"], saved["tokenizer"]
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a lightning_gpt checkpoint (no model config in it); resume from one") from e
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({reason}); resume from another one, "
            "e.g. the best checkpoint in the same folder"
        ) from e
    if saved_tokenizer["name"] != tokenizer["name"]:
        raise UserError(
            f"cannot resume from {path}: it was trained with tokenizer.name={saved_tokenizer['name']}, this run has "
            f"tokenizer.name={tokenizer['name']}; use the checkpoint's tokenizer"
        )
    if saved_tokenizer != tokenizer:
        raise UserError(
            f"cannot resume from {path}: its character vocabulary ({len(saved_tokenizer.get('chars', ''))} chars) "
            f"differs from this run's data ({len(tokenizer.get('chars', ''))} chars); resume on the same data"
        )
    for key in sorted(set(saved_model) | set(model_config)):
        if key not in SHAPE_KEYS_IGNORED and saved_model.get(key) != model_config.get(key):
            raise UserError(
                f"cannot resume from {path}: it was trained with model.{key}={saved_model.get(key)}, this run has "
                f"model.{key}={model_config.get(key)}; use the checkpoint's value, or drop ckpt_path to start afresh"
            )
