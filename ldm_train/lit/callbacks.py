"""Training callbacks: throughput in the progress bar, image grids to every image-capable logger, and a
run summary (wall-clock, images/s, peak memory) at the end."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ldm_train.files import atomic_write
from ldm_train.lit.fault_tolerance import end_of_training_batches
from ldm_train.runs import IMAGES_DIR

SUMMARY_FILE = "run_summary.json"
KIB_PER_MIB = 1024  # ru_maxrss is in KiB on Linux
BYTES_PER_MIB = 1024**2


def batch_size(batch: dict) -> int:
    """Images in a batch of either data path: every batch has one caption per image (phase 1's may be ""),
    also data=latents batches, which hold no images."""
    return len(batch["caption"])


class ImagesPerSecond(L.Callback):
    """Logs `perf/images_per_s` (global, all ranks) and shows it in the progress bar. (Not Lightning's
    `ThroughputMonitor`, which measures through a batch-size function and FLOPs.)

    Time is measured between consecutive batch ends, so data loading is included."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._times: list[float] = []
        self._images: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._times.append(time.perf_counter())
        self._images.append(batch_size(batch) * trainer.world_size)
        self._times, self._images = self._times[-self.window :], self._images[-self.window :]
        if len(self._times) < 2:
            return
        elapsed = self._times[-1] - self._times[0]
        rate = sum(self._images[1:]) / max(elapsed, 1e-9)
        pl_module.log("perf/images_per_s", rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)


class RunSummary(L.Callback):
    """Writes `<run>/run_summary.json` when training ends: optimizer steps, wall-clock of this
    process's training, images trained on (all ranks), images/s, and peak memory — resident set of
    this process and of its largest child (data-loader workers), and the accelerator's peak
    allocation. A resumed run reports the part it trained (`start_step` to `step`)."""

    def __init__(self) -> None:
        self._start = 0.0
        self._start_step = 0
        self._images = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step, self._images = time.perf_counter(), trainer.global_step, 0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += batch_size(batch) * trainer.world_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        summary = {
            "start_step": self._start_step,
            "step": trainer.global_step,
            "seconds": seconds,
            "images": self._images,
            "images_per_s": self._images / max(seconds, 1e-9),
            "world_size": trainer.world_size,
            "device": str(pl_module.device),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB,
            "peak_child_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / KIB_PER_MIB,
            "peak_accelerator_mib": (torch.cuda.max_memory_allocated(pl_module.device) / BYTES_PER_MIB
                                     if pl_module.device.type == "cuda" else None),
        }
        self._write(trainer, summary)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, summary: dict) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(Path(trainer.default_root_dir) / SUMMARY_FILE, lambda tmp: tmp.write_text(text))


class ImageLogger(L.Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training), asks the module for
    named image batches (`module.log_images(batch) -> {name: B×3×H×W in [-1,1]}`) and sends one
    grid per name to every logger that takes images (W&B, TensorBoard) and to `<run>/images/`."""

    def __init__(self, every_n_steps: int = 500, max_images: int = 16) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.log_now(trainer, pl_module, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        loader = end_of_training_batches(trainer)  # the same batch however the run reached its end
        if self._last_step != trainer.global_step and loader is not None:
            batch = next(iter(loader))
            self.log_now(trainer, pl_module, pl_module.transfer_batch_to_device(batch, pl_module.device, 0))

    def log_now(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict) -> None:
        if not hasattr(pl_module, "log_images"):
            return
        small = {k: v[: self.max_images] if hasattr(v, "__getitem__") else v for k, v in batch.items()}
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(small)
        pl_module.train(was_training)
        self._write(trainer, images, captions=small.get("caption"))

    @rank_zero_only
    def _write(self, trainer: L.Trainer, images: dict[str, torch.Tensor], captions: list[str] | None) -> None:
        step = trainer.global_step
        out_dir = Path(trainer.default_root_dir) / IMAGES_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, batch in images.items():
            grid = torchvision.utils.make_grid((batch.float().clamp(-1, 1) + 1) / 2, nrow=int(len(batch) ** 0.5 + 0.999))
            torchvision.utils.save_image(grid, out_dir / f"{name.replace('/', '_')}_step{step:07d}.png")
            for logger in trainer.loggers:
                log_image_grid(logger, name, grid, step, captions)


def log_image_grid(logger: Logger, name: str, grid: torch.Tensor, step: int, captions: list[str] | None) -> None:
    """One grid image (3×H×W in [0, 1]) to a logger that takes images; others are skipped."""
    if isinstance(logger, WandbLogger):
        caption = "; ".join(captions[:8]) if captions else None
        extra = {"caption": [caption]} if caption else {}  # Lightning's W&B logger rejects caption=None
        logger.log_image(key=name, images=[grid], step=step, **extra)
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(name, grid, step)
