"""Evaluation during training: every `every_n_steps` optimizer steps and once at the end, the module's
evaluation weights (the EMA when there is one) are scored by the stage's evaluator — the same
object `scripts/evaluate.py` runs on a checkpoint — and the scalars go to every logger (W&B, CSV,
TensorBoard) under `val/`, the grid image to every image-capable logger and `<run>/images/`, and the
whole result to `<run>/evaluation/step<N>.json`.

The evaluation of step N runs at the start of the next batch (or at the end of training): by then
the module's own end-of-batch work (the EMA update) is done, and `last.ckpt` of step N holds exactly
the weights that were scored. A run killed during an evaluation redoes it after resuming.
All ranks evaluate together (each its share, see `evaluation.sharding`), so none waits alone.

The module offers `evaluation_input()`: the input its stage's evaluator takes (phase 1: the autoencoder
to score; phase 2: a `prompts, seeds -> images` function over its EMA UNet and sampler settings).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from ldm_train.evaluation.generation import GenerationEvaluator
from ldm_train.evaluation.reconstruction import ReconstructionEvaluator
from ldm_train.evaluation.results import EvaluationResult
from ldm_train.lit.callbacks import log_image_grid

log = logging.getLogger(__name__)
PREFIX = "val/"


class EvaluationCallback(L.Callback):
    def __init__(
        self,
        evaluator: GenerationEvaluator | ReconstructionEvaluator,
        # Evaluate after every this many optimizer steps (null: only at the end of training).
        every_n_steps: int | None = 500,
        # Also evaluate after the final step.
        at_end: bool = True,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"evaluation.every_n_steps must be >= 1 or null (only at the end), got {every_n_steps}")
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.at_end = at_end
        self._last_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Feature network, classifier and reference statistics load (or are computed) now: a missing
        # asset fails before training, not at the first evaluation.
        if not trainer.fast_dev_run:
            self.evaluator.setup(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and trainer.global_step > 0 and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> EvaluationResult | None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return None
        step = self._last_step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        try:
            result = self.evaluator.run(pl_module.evaluation_input(), pl_module.device)
        finally:
            pl_module.train(was_training)
        result.details.update(step=step, seconds=time.perf_counter() - start)
        self._write(trainer, result, step)
        return result

    @rank_zero_only
    def _write(self, trainer: L.Trainer, result: EvaluationResult, step: int) -> None:
        metrics = {PREFIX + name: value for name, value in result.metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
            log_image_grid(logger, f"{PREFIX}evaluation", result.grid, step, None)
        run_dir = Path(trainer.default_root_dir)
        result.write(run_dir / "evaluation", name=f"step{step:07d}")
        summary = ", ".join(f"{name} {value:.4g}" for name, value in result.metrics.items() if "/" not in name)
        log.info("Evaluation at step %d (%.0f s): %s", step, result.details["seconds"], summary)
