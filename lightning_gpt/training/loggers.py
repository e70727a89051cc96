"""Lightning's loggers, made to follow a run across resumes and to read well in their dashboards.

CSV appends to its metrics.csv; W&B continues the same W&B run; TensorBoard shows an HPARAMS tab and no
`epoch` card.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_gpt.errors import UserError
from lightning_gpt.io import append_text, atomic_write, temporary_name
from lightning_gpt.library_internals import tensorboard_file_writer


class MetricsFile:
    """What CSVLogger writes: <log_dir>/metrics.csv, one row per logged step (the metrics logged at one step by
    the module and by the callbacks share it), and hparams.yaml.

    A run resumed in its folder appends: the rows it logs again (those at or past its first step, which a run
    killed after its last checkpoint logged before) replace the old ones. A new metric rewrites the file with
    the wider header, as a new file renamed into place. Never written through a symlink (lightning_gpt.io).
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / "metrics.csv"
        self.pending: dict[int, dict[str, Any]] = {}  # step -> its metrics, until the next save
        self.hparams: dict[str, Any] = {}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.rows, self.keys = self._read()
        self.first_save = True

    def _read(self) -> tuple[list[dict[str, str]], list[str]]:
        if self.path.is_symlink():
            raise UserError(f"{self.path} is a symbolic link; metrics are written only into a file of their own")
        if not self.path.is_file():
            return [], []
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader), list(reader.fieldnames or [])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        step = step if step is not None else max(self.pending, default=-1) + 1
        values = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
        self.pending.setdefault(step, {"step": step}).update(values)

    def log_hparams(self, params: dict[str, Any]) -> None:
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        fresh = temporary_name(self.log_dir / "hparams.yaml")  # a new name: nothing planted to follow
        save_hparams_to_yaml(fresh, self.hparams)
        os.replace(fresh, self.log_dir / "hparams.yaml")

    def save(self) -> None:
        if not self.pending:
            return
        rows = [self.pending[step] for step in sorted(self.pending)]
        self.pending = {}
        new_keys = sorted({k for row in rows for k in row} - set(self.keys))
        if self.first_save and self.rows:  # a resume: the steps it logs again replace the old rows
            first = rows[0]["step"]
            kept = [row for row in self.rows if row.get("step") and int(float(row["step"])) < first]
            if len(kept) != len(self.rows) or new_keys:
                self.rows, self.keys = kept, sorted({*self.keys, *new_keys}, key=_step_first)
                self._rewrite(rows)
                return
        self.first_save = False
        if new_keys or not self.path.exists():
            self.keys = sorted({*self.keys, *new_keys}, key=_step_first)
            self._rewrite(rows)
        else:
            append_text(self.path, _csv_text(rows, self.keys, header=False))
            self.rows += rows

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.first_save = False
        self.rows = [*self.rows, *rows]
        atomic_write(self.path, _csv_text(self.rows, self.keys, header=True))


def _step_first(key: str) -> tuple[bool, str]:
    return key != "step", key


def _csv_text(rows: list[dict[str, Any]], keys: list[str], header: bool) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class CSVLogger(LightningCSVLogger):
    """Metrics in <save_dir>/<name>/metrics.csv, one row per step, appended to across resumes of the same run
    folder (see MetricsFile)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsFile:
        if self._experiment is None:
            self._experiment = MetricsFile(self.log_dir)
        return self._experiment


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, keeping the W&B run id in <save_dir>/wandb/run_id: a run resumed in its own
    folder (ckpt_path=<run folder>, auto or latest) continues the same W&B run (Lightning passes
    resume="allow"); a new run folder starts a new W&B run. An explicit id wins."""

    def __init__(self, save_dir: str, id: str | None, **kwargs: Any):
        self._id_file = Path(save_dir) / "wandb" / "run_id"
        if id is None and self._id_file.is_file():
            id = self._id_file.read_text().strip()
        super().__init__(save_dir=save_dir, id=id, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        started = self._experiment is None
        run = super().experiment
        if started:
            self._id_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._id_file, run.id)  # never through a link planted there
        return run


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger with an HPARAMS tab: the flattened run config, global batch included,
    beside the last value of each of `hp_metrics`. Without Lightning's `epoch` scalar, which it adds to the
    metrics of every step and TensorBoard would show as the first card."""

    def __init__(
        self, *args: Any, hp_metrics: tuple[str, ...] = ("val/loss", "val/ppl", "val/bpb", "train/loss"), **kwargs: Any
    ):
        super().__init__(*args, default_hp_metric=False, **kwargs)
        self.hp_metrics = list(hp_metrics)
        self._hparams_written = False

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._hparams_written:  # once, after every log_hyperparams call (fit start, the global batch)
            self._hparams_written = True
            self._write_hparams()
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    def _write_hparams(self) -> None:
        """The HPARAMS tab's summaries. They name the metrics only: TensorBoard shows each one's last value."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(self.hparams).items()}
        writer = tensorboard_file_writer(self.experiment)
        for summary in hparams(params, dict.fromkeys(self.hp_metrics, 0.0)):
            writer.add_summary(summary)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"config": {"optim": {"lr": 1e-3}}} -> {"config/optim/lr": 1e-3}: nested settings as TensorBoard's HPARAMS
    tab lists them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
