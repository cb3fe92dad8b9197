"""Faults a long run must survive without losing work or silently corrupting its weights.

- `NonFiniteGuard`: an optimizer step whose loss or gradients are not finite is skipped (its
  gradients are dropped, the weights and optimizer moments stay as they were) and counted; after
  `max_consecutive` such steps in a row the run stops with `NonFiniteLossError`, and its checkpoints
  (written only from good steps) are the last good state.
- `RandomStateCheckpoint`: the global random streams (Python, NumPy, torch CPU and CUDA) of every rank
  go into each checkpoint and come back when training resumes, and validation never draws from them,
  so a resumed run draws the same noise, timesteps and caption drops as one that was never stopped.
- `finish_when_restored_complete`: a run restored from a checkpoint whose training is already done
  (killed after its final checkpoint, before or during the end-of-training work) still runs that
  work (`on_train_start`, then every `on_train_end` hook: export, latent scale, final images, metrics,
  run summary); Lightning's own fit loop skips them. The hooks write whole files (overwriting a
  killed process's partial work), so the end of a run can be repeated until it completes. The data
  they read come from `end_of_training_batches`: the same batches wherever the training stream stopped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loops.fit_loop import _FitLoop
from torch import Tensor, nn

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient: the run has diverged."""


class NonFiniteGuard(nn.Module):
    """Decides, identically on every rank, whether an optimizer step may be taken.

    Usage, per optimizer step (after backward, before `optimizer.step()`):
        guard.observe(loss)                                   # every micro-batch
        if not guard.check(optimizers, grad_norms, strategy): # at the accumulation boundary
            ...                                               # e.g. no EMA update
        optimizer.step()   # a no-op when check() dropped the gradients

    A skipped step still counts as a step (global_step, LR schedule), as torch's AMP grad scaler
    does for its overflow steps, so `max_steps` and schedules mean the same on every rank. The
    counters are buffers: they are saved with the module and continue after a resume.
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        super().__init__()
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive", torch.zeros((), dtype=torch.long))
        self._window_bad: Tensor | None = None  # any non-finite loss since the last check (a device flag)
        self.last_skipped = False

    def observe(self, *losses: Tensor) -> None:
        """Record a micro-batch's losses; no host sync (the flag stays on the device)."""
        bad = torch.stack([~torch.isfinite(loss.detach()).all() for loss in losses]).any()
        self._window_bad = bad if self._window_bad is None else self._window_bad | bad

    def check(self, optimizers: Sequence[torch.optim.Optimizer], grad_norms: Sequence[Tensor], strategy: Any) -> bool:
        """True: step. False: this step is skipped; the optimizers' gradients are dropped.

        `strategy` is the Lightning strategy: the decision is summed over ranks (one scalar
        all-reduce), because with sharded gradients (FSDP) ranks need not see the same values.
        Raises NonFiniteLossError after `max_consecutive` skipped steps in a row."""
        flags = [~torch.isfinite(norm.detach()).all() for norm in grad_norms]
        if self._window_bad is not None:
            flags.append(self._window_bad)
        self._window_bad = None
        device = self.skipped.device
        bad = torch.stack([f.to(device) for f in flags]).any().float() if flags else torch.zeros((), device=device)
        self.last_skipped = bool(strategy.reduce(bad, reduce_op="sum") > 0)  # the one host sync
        if not self.last_skipped:
            self.consecutive.zero_()
            return True
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)  # Adam(W)/SGD leave parameters without grads untouched
        self.skipped += 1
        self.consecutive += 1
        log.warning(
            "Non-finite loss or gradient: optimizer step skipped (%d in a row, %d in this run).",
            int(self.consecutive), int(self.skipped),
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{int(self.consecutive)} optimizer steps in a row had a non-finite loss or gradient: training "
                "has diverged and was stopped. No skipped step was applied, so the checkpoints in this run's "
                "checkpoints/ folder hold the last good weights. Train again with a lower optim.lr, with "
                "optim.grad_clip set, or with trainer.precision=32-true or bf16-mixed (resuming this run would "
                "bring back its optimizer state, learning rate included)."
            )
        return False


def _collect_random_states() -> dict[str, Any]:
    # Plain lists and tensors only: Lightning loads checkpoints with torch.load(weights_only=True).
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStateCheckpoint(L.Callback):
    """Global random states of every rank in the checkpoint; restored when training (re)starts from
    one, and set aside around validation so that validation does not shift the training stream."""

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None
        self._outside_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Lightning collects callback states on every rank (rank 0 writes the file): gather them.
        states = _collect_random_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict["per_rank"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Restored here, after the data loaders started, as late as possible before the first step.
        if self._to_restore is None:
            return
        if len(self._to_restore) != trainer.world_size:
            log.warning(
                "The checkpoint holds random states of %d ranks and this run has %d: keeping the freshly "
                "seeded streams (the run continues, but not bit-identically).", len(self._to_restore), trainer.world_size,
            )
        else:
            _set_random_states(self._to_restore[trainer.global_rank])
        self._to_restore = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outside_validation = _collect_random_states()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._outside_validation is not None:
            _set_random_states(self._outside_validation)
            self._outside_validation = None


# Private Lightning API: no public hook runs when a restored run has nothing left to train (the fit loop
# returns before `on_train_start`), so the loop itself is subclassed. Checked against lightning>=2.6,<2.7
# (pyproject.toml pins that range); tests/test_resume_end_of_run.py fails if a release changes it.
class _FinishingFitLoop(_FitLoop):
    """Lightning's fit loop; restored from a checkpoint whose `max_steps`/`max_epochs` is reached, it runs
    the end-of-training hooks (after the start-of-training ones, which restore e.g. the random states)
    with no step in between, where Lightning's own loop returns without calling either."""

    def run(self) -> None:
        self.setup_data()
        # `limit_train_batches=0` or an empty loader: Lightning's "nothing to train", not "finished".
        has_data = self.trainer.limit_train_batches != 0 and self.max_batches != 0
        if self.trainer.ckpt_path is None or not has_data or not self.done:
            super().run()
            return
        log.info("The checkpoint's training is complete: running the end-of-training work only.")
        self.reset()
        self.on_run_start()
        self._restarting = False
        self.on_run_end()


def finish_when_restored_complete(trainer: L.Trainer) -> None:
    """Give `trainer` the fit loop that completes the end-of-training work of a restored finished run
    (see `_FinishingFitLoop`). Call before `trainer.fit`; Lightning lets a Trainer's fit loop be replaced."""
    current = trainer.fit_loop
    loop = _FinishingFitLoop(trainer, min_epochs=current.min_epochs, max_epochs=current.max_epochs)
    loop.epoch_loop = current.epoch_loop
    trainer.fit_loop = loop


def end_of_training_batches(trainer: L.Trainer) -> Iterable | None:
    """Training batches for end-of-training work (latent statistics, the final image grid) that do not
    depend on where the training stream stopped: a fresh loader from the data module, which starts at
    the first epoch. An uninterrupted run and one resumed at its end then read the same batches.
    Without a data module, the trainer's own training loader."""
    if trainer.datamodule is not None:
        return trainer.datamodule.train_dataloader()
    return trainer.train_dataloader
