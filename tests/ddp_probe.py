"""Test-only callbacks for runs of `train.py`:
- `+callbacks.probe._target_=tests.ddp_probe.RankProbe` (Lightning): every rank writes what it saw
  into the run directory as `probe_rank<k>.json`;
- `+hydra.callbacks.returns._target_=tests.ddp_probe.ReturnRecorder` (Hydra): the job's return
  value (what sweepers optimise) goes to `<job dir>/return.json`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ldm_train.distributed import is_launch_rank_zero


class RankProbe(L.Callback):
    """Records rank, world size, base LR, a hash of every training image, validation metrics and
    (phase 1) the latent scale. `fail_on_job`: rank 0 raises an OOM at the start of that sweep job
    (after writing what it saw so far), while the other ranks go on into training."""

    def __init__(self, fail_on_job: int | None = None) -> None:
        self.fail_on_job = fail_on_job
        self.samples: list[str] = []
        self.val: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)
        if self.fail_on_job is not None and trainer.global_rank == 0 and HydraConfig.get().job.num == self.fail_on_job:
            raise torch.OutOfMemoryError("simulated out-of-memory in the probe")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images = batch["image"].detach().cpu().float()
        self.samples += [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        autoencoder = getattr(pl_module, "autoencoder", None)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "lr": trainer.optimizers[0].defaults["lr"],
            "samples": self.samples,
            "val": self.val,
            "latent_scale": None if autoencoder is None else autoencoder.latent_norm.scale.tolist(),
        }
        out = Path(trainer.default_root_dir) / f"probe_rank{trainer.global_rank}.json"
        out.write_text(json.dumps(record))


class ReturnRecorder(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if not is_launch_rank_zero():  # Lightning's child ranks run the job too
            return
        done = job_return.status == JobStatus.COMPLETED
        record = {"status": job_return.status.name, "value": job_return.return_value if done else None}
        Path(config.hydra.runtime.output_dir, "return.json").write_text(json.dumps(record))
