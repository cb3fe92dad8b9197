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

from ldm_train.files import atomic_write, temp_pattern
from ldm_train.runs import LAST_CKPT_NAME, find_checkpoint  # noqa: F401  (find_checkpoint: until text_to_image imports it from runs)

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
    """

    def __init__(self, dirpath: str, every_n_steps: int | None = 500, every_n_minutes: float | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null (no step-based saves), got {every_n_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"every_n_minutes must be > 0 or null (no time-based saves), got {every_n_minutes}")
        self.path = Path(dirpath) / LAST_CKPT_NAME
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
        if trainer.global_step != self._saved_step and not trainer.fast_dev_run:
            self.save(trainer)  # stopped by max_epochs, max_time or a callback, between saves

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state: resumable
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()

    # -- preemption -----------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run or self._saved_step is None:
            return  # another failure, or stopped before training started: the existing last.ckpt stays
        if trainer.global_step != self._saved_step:
            self.save(trainer)
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
