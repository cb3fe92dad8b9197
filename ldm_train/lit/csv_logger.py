"""A CSV logger whose `metrics.csv` continues across a resume, so one run has one loss curve.

Lightning's CSV writer deletes an existing `metrics.csv` when it starts. A resumed run writes into
its old run directory (see ldm_train/resume.py), so this writer keeps the file instead and, when it
first writes, drops the old rows from the first step it is about to log: the killed run may have
logged steps after its last checkpoint, and those steps are being trained again. Every rewrite of the
file (those, and Lightning's when a new column appears) is atomic. Rows reach the file as they are
logged (Lightning saves its loggers after each `log_metrics`); `last.ckpt` is published only after
its step's rows are logged (ldm_train/lit/checkpoints.py), so a resumed run never misses a row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ldm_train.files import atomic_write

STEP = "step"


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._continued = False

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes metrics.csv here; a resumed run continues it instead."""

    def save(self) -> None:
        if self.metrics and not self._continued:
            self._keep_rows_before(min(int(row[STEP]) for row in self.metrics))
            self._continued = True
        super().save()

    def _keep_rows_before(self, first_new_step: int) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get(STEP) and int(float(row[STEP])) < first_new_step]
        self.metrics_keys = sorted(set(header) | set(self.metrics_keys))
        self._write_all(rows, self.metrics_keys)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning rewrites the file in place when a new column appears; here atomically."""
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        self._write_all(rows, fieldnames)

    def _write_all(self, rows: list[dict], fieldnames: list[str]) -> None:
        # Atomically: a kill while the file is rewritten must not lose the rows already logged.
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.metrics_file_path, write)


class ContinuingCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` (same arguments) that continues an existing metrics.csv."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
