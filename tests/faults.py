"""Fault injection for the kill-and-resume tests, added to a run from the command line:
`+callbacks.kill._target_=tests.faults.KillAfterCheckpoint` (`+callbacks.kill.step=4`)."""

from __future__ import annotations

import os
import signal

import lightning as L

from ldm_train.lit.checkpoints import LastCheckpoint


class KillAfterCheckpoint(L.Callback):
    """SIGKILLs the process the moment `last.ckpt` of optimizer step `step` (None: the final step) is
    on disk: after the final one, before the export, the latent scale, the final images, evaluation
    and run summary, and the FINISHED marker. Only a fresh (not resumed) run is killed."""

    def __init__(self, step: int | None = None) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.ckpt_path is not None:
            return
        (last,) = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
        publish = last.publish
        step = trainer.max_steps if self.step is None else self.step

        def publish_then_die(trainer: L.Trainer) -> None:
            due = last.pending_path.is_file() and trainer.global_step == step
            publish(trainer)
            if due:
                os.kill(os.getpid(), signal.SIGKILL)

        last.publish = publish_then_die


class KillAtStep(L.Callback):
    """SIGKILLs a fresh (not resumed) run at the end of optimizer step `step`, between checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
