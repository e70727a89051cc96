"""Lightning's CSVLogger, appending: a run resumed in its own folder keeps the rows it logged before."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


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
