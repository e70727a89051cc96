"""Test-only callbacks, importable by runs in subprocesses (`+callbacks.x._target_=tests.helpers.X`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class RecordFirstBatch(L.Callback):
    """Each process writes the token ids of its first training batch, to show what data it saw."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            path = Path(trainer.default_root_dir) / f"first_batch_rank{trainer.global_rank}.txt"
            path.write_text(" ".join(map(str, batch[0][0].tolist())))
