"""Checkpoints that survive a kill, a full disk and a preempting scheduler; checks before resuming.

Lightning's own atomic save writes the whole checkpoint to memory, then to a temporary file in the
system temp folder, and moves it into place: when that folder is on another filesystem (a tmpfs /tmp,
node-local scratch beside a shared filesystem) the move is a copy, and a kill during it leaves a
truncated checkpoint. `AtomicCheckpointIO` writes beside the target, syncs, then renames.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gpt.errors import UserError
from lightning_gpt.io import DISK_FULL, create_new, fsync_folder, temporary_name

TEMPORARY = "*.ckpt.*.tmp"  # what a save killed midway leaves behind


class _Writer:
    """A file torch.save writes to, remembering the OSError (a full disk) that torch reports as a RuntimeError."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a fresh `<name>.<random>.tmp` in the same folder, fsync, rename: the old file stays whole
    until the new one is. A checkpoint of the same step as the previous save (last, best and the step
    snapshot are usually taken together) becomes a hard link to it instead of another full copy."""

    def __init__(self) -> None:
        super().__init__()
        self._previous: tuple[Any, Path, int] | None = None  # (training state, file, inode) of the last save

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same step, same kind of checkpoint: the same weights, optimizer, data position and RNG states.
        state = (checkpoint.get("global_step"), tuple(sorted(checkpoint)))
        if not self._link_previous(state, path):
            self._write(checkpoint, path)
        fsync_folder(path.parent)
        self._previous = (state, path, path.stat().st_ino)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """A file as Lightning loads it; a sharded folder (trainer=fsdp wrote it) read whole, as the one file it
        would be, so a run sharded on N processes resumes on one process or under DDP too."""
        if Path(path).is_dir():
            from lightning_gpt.parallel.checkpoint import read_sharded

            return read_sharded(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        partial = temporary_name(path)
        writer = None
        try:
            with create_new(partial) as f:  # exclusive, never through a link planted at the name
                writer = _Writer(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException as e:
            if writer is not None:  # the file is ours: remove it (but never a name someone else created)
                partial.unlink(missing_ok=True)
            error = writer.error if writer is not None and writer.error is not None else e
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                raise UserError(
                    f"no space left to save {path} ({os.strerror(error.errno)}); the previous checkpoints are "
                    "intact: free space (or set paths.log_dir to a larger disk) and resume from them"
                ) from e
            raise

    def _link_previous(self, state: Any, path: Path) -> bool:
        """Hard-link the previous save to `path` when it holds the same training state; False where it
        does not or where links are impossible (then the caller writes a copy)."""
        if self._previous is None or self._previous[0] != state:
            return False
        previous = self._previous[1]
        try:
            if previous.stat().st_ino != self._previous[2]:
                return False  # replaced or removed since
            if path.exists() and path.samefile(previous):
                return True
            partial = temporary_name(path)
            os.link(previous, partial)
        except OSError:
            return False
        try:
            os.replace(partial, path)
        except OSError:
            partial.unlink(missing_ok=True)
            return False
        return True


class LastCheckpoint(L.Callback):
    """Keeps checkpoints/last.ckpt current where Lightning's ModelCheckpoint would not.

    At the end of training: ModelCheckpoint refreshes last.ckpt only on its own triggers, so a run whose
    last step is not one would leave an older one. On SIGTERM, SIGUSR1 (how SLURM and cloud schedulers
    preempt) or Ctrl-C: the run goes on to the end of the current optimizer step (with gradient
    accumulation a checkpoint between micro-batches would lose the gradients summed so far, and the
    resumed run would differ), saves, and stops cleanly; a second Ctrl-C stops at once. Under SLURM
    with auto-requeue, Lightning's own SIGUSR1 handler saves and requeues.
    """

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the stopping signal received
        self.stopping = False  # saved at the end of a step: stop before the next

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Remove what saves killed midway left (each as large as a checkpoint): temporary files, and sharded
        data folders no checkpoint name links to."""
        from lightning_gpt.parallel.checkpoint import remove_orphans

        path = self._path(trainer)
        if stage == "fit" and path is not None and trainer.is_global_zero and path.parent.is_dir():
            for stale in [*path.parent.glob(TEMPORARY), *path.parent.glob("*.ckpt.tmp")]:  # and the old naming
                stale.unlink(missing_ok=True)
            remove_orphans(path.parent)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        self.signal, self.stopping = None, False
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set signal handlers; Lightning's own then apply
        signals = [signal.SIGTERM, signal.SIGINT]
        environment = getattr(trainer.strategy, "cluster_environment", None)  # single-device strategies have none
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            signals.append(signal.SIGUSR1)
        for signum in signals:  # Lightning restores the previous handlers when fit ends
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # between micro-batches: stop only once the optimizer has stepped
        if not trainer.strategy.reduce_boolean_decision(self.signal is not None, all=False):  # any process
            return
        path = self._path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
        saved = f"saved {path}; resume with ckpt_path={path.parent.parent}" if path else "no checkpoint callback"
        rank_zero_info(f"stopped by {self.signal or 'a signal'} at step {trainer.global_step}: {saved}")
        self.stopping = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Stop here, once the last step's metrics are logged (and its validation run, if one was due)."""
        if self.stopping:
            raise SIGTERMException  # Lightning's clean stop (exit code 0): no final validation or sample

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_if_behind(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # also Lightning's, for a SIGTERM before training started
            self._save_if_behind(trainer)

    def _save_if_behind(self, trainer: L.Trainer) -> None:
        path = self._path(trainer)
        if path is not None and trainer.strategy.broadcast(_saved_step(path) != trainer.global_step):
            trainer.save_checkpoint(path)

    @staticmethod
    def _path(trainer: L.Trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        return Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None


def _saved_step(path: Path) -> int | None:
    """The step a checkpoint (file or sharded folder) was saved at; None if it is missing or unreadable."""
    from lightning_gpt.parallel.checkpoint import META

    try:
        file = path / META if path.is_dir() else path
        return torch.load(file, map_location="cpu", weights_only=True, mmap=path.is_file())["global_step"]
    except (OSError, RuntimeError, KeyError, EOFError):
        return None
