"""Lightning's loggers, made to follow a run across resumes and to read well in their dashboards.

CSV appends to its metrics.csv; W&B continues the same W&B run; TensorBoard shows an HPARAMS tab and no
`epoch` card.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import _flatten_dict
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv; this one keeps it and appends. Rows at or past
    the first step this process logs are dropped once: a run killed after its last checkpoint logged them
    before, and the resumed run logs those steps again."""

    def _check_log_dir_exists(self) -> None:
        self._resuming = self._fs.isfile(self.metrics_file_path)
        if self._resuming:
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def save(self) -> None:
        if self._resuming and self.metrics:
            self._resuming = False
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                rows = [row for row in csv.DictReader(f) if row.get("step") and int(float(row["step"])) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        super().save()


class CSVLogger(LightningCSVLogger):
    """Metrics in <save_dir>/<name>/metrics.csv, appended to across resumes of the same run folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, keeping the W&B run id in <save_dir>/wandb/run_id: a run resumed in its own
    folder (ckpt_path=<run folder>, auto or latest) continues the same W&B run (Lightning passes
    resume="allow"); a new run folder starts a new W&B run. An explicit id wins."""

    def __init__(self, save_dir: str = ".", id: str | None = None, **kwargs: Any):
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
            self._id_file.write_text(run.id)
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

        params = self._sanitize_params(_flatten_dict(dict(self.hparams)))
        writer = self.experiment._get_file_writer()
        for summary in hparams(params, dict.fromkeys(self.hp_metrics, 0.0)):
            writer.add_summary(summary)
