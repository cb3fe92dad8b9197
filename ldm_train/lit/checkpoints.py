"""Checkpoint files: written atomically and kept current (periodically, at the end and on preemption).
Where they live and how they are found again: ldm_train/runs.py."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ldm_train.files import TEMP_SUFFIX, atomic_write, replace_durably, temp_pattern
from ldm_train.runs import LAST_CKPT_NAME

log = logging.getLogger(__name__)
SECONDS_PER_MINUTE = 60.0


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target folder, fsync, then rename over the target.

    A kill at any moment leaves either the previous complete checkpoint or the new complete one,
    never a truncated `last.ckpt` (Lightning's default writes the target file in place)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote filesystems: fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        for stale in target.parent.glob(temp_pattern(target)):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        atomic_write(target, lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(L.Callback):
    """Keeps `<dirpath>/last.ckpt` current, so a killed run loses at most the steps since the last save.

    Saves every `every_n_steps` optimizer steps and/or every `every_n_minutes` (rank 0's clock decides,
    so all ranks save together), after the final step, and on preemption: Lightning answers SIGTERM by
    finishing the current batch and raising `SIGTERMException`; this callback then saves exactly where
    training stopped and the process exits, unfinished, for `resume=auto` to continue. SIGUSR1 (the
    "time is nearly up" signal of batch schedulers) is treated as SIGTERM unless a handler is already
    installed (Lightning's SLURM auto-requeue). Any other exception saves nothing: the last checkpoint
    stays the last state known to be good. Saves go through the trainer's CheckpointIO (atomic).

    A save in `on_train_batch_end` is written to a hidden temporary name and becomes `last.ckpt` once
    the step's metrics and those of a validation due at that step are logged (at the end of that
    validation, the next batch, the end of the epoch or of training): Lightning logs them after
    `on_train_batch_end`, and a checkpoint published earlier would, killed in between, resume past
    rows that were never written. A kill before the rename leaves the previous `last.ckpt` (the
    steps since are trained again); the temporary file is removed when the run resumes.
    """

    def __init__(self, dirpath: str, every_n_steps: int | None = 500, every_n_minutes: float | None = 30) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null (no step-based saves), got {every_n_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"every_n_minutes must be > 0 or null (no time-based saves), got {every_n_minutes}")
        self.path = Path(dirpath) / LAST_CKPT_NAME
        # Where a save waits until its step's metrics are logged (a temporary name: see the class doc).
        self.pending_path = self.path.with_name(f".{self.path.name}.pending{TEMP_SUFFIX}")
        self._pending = False
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self._saved_step: int | None = None  # set when training starts
        self._saved_at = time.monotonic()
        self._previous_sigusr1: Any = None

    # -- periodic and final saves -----------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()
        main_thread = threading.current_thread() is threading.main_thread()  # signal.signal's rule
        if main_thread and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, _as_sigterm)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step = trainer.global_step
        if step == self._saved_step or step == 0 or trainer.fast_dev_run:
            return  # step 0 or the same optimizer step (gradient accumulation): nothing new to save
        due = self.every_n_steps is not None and step % self.every_n_steps == 0
        due |= 0 < trainer.max_steps <= step
        if self.every_n_minutes is not None:
            elapsed = time.monotonic() - self._saved_at
            due |= bool(trainer.strategy.broadcast(elapsed >= self.every_n_minutes * SECONDS_PER_MINUTE))
        if due:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.publish(trainer)
        if trainer.global_step != self._saved_step and not trainer.fast_dev_run:
            self.save(trainer)  # stopped by max_epochs, max_time or a callback, between saves
            self.publish(trainer)

    # The step's metrics, and those of a validation run after it, are logged when these run. (A run
    # restored from a checkpoint saved where a validation was due does not repeat it: Lightning's rule.)
    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.publish(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.publish(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.publish(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """The full (resumable) state of this step, published as `last.ckpt` by `publish`."""
        if "://" in str(self.path):  # remote filesystems have no rename: written in place, at once
            trainer.save_checkpoint(self.path, weights_only=False)
        else:
            trainer.save_checkpoint(self.pending_path, weights_only=False)
            self._pending = True
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()

    def publish(self, trainer: L.Trainer) -> None:
        """The last save becomes `last.ckpt` (rank 0 renames the file it wrote)."""
        if not self._pending:
            return
        self._pending = False
        if trainer.is_global_zero:
            replace_durably(self.pending_path, self.path)

    # -- preemption -----------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run or self._saved_step is None:
            return  # another failure, or stopped before training started: the existing last.ckpt stays
        if trainer.global_step != self._saved_step:
            self.save(trainer)
        self.publish(trainer)  # Lightning stops after logging the step: its row is written
        rank_zero_info(
            f"Stopped by a signal at step {trainer.global_step}: {self.path} holds that step. "
            "Run the same command again (resume=auto) to continue."
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None


def _as_sigterm(signum: int, frame) -> None:
    log.info("Received SIGUSR1: stopping as for SIGTERM (checkpoint, then exit).")
    signal.raise_signal(signal.SIGTERM)
