"""Hydra entry: compose → check → instantiate → fit → return the sweep metric.

This is the only place configs become objects (`hydra.utils.instantiate`); every constructor
below it receives built networks, losses and `_partial_` optimizers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ldm_train.config_check import ConfigError
from ldm_train.config_rules import check_only, validate_config
from ldm_train.console import print_config
from ldm_train.distributed import distributed_job
from ldm_train.lit.fault_tolerance import finish_when_restored_complete
from ldm_train.loggers import finish_loggers
from ldm_train.resume import mark_finished, prepare_run, resolve_ckpt_path
from ldm_train.runs import RESOLVED_CONFIG

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")


def instantiate_group(group: DictConfig | None) -> list:
    """Callbacks and loggers come as named entries; `null` or an empty group gives none."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def run(cfg: DictConfig) -> float | None:
    """Train one stage as configured; returns `cfg.optimized_metric` (for sweepers)."""
    if cfg.check_config:
        validate_config(cfg)
    prepare_run(cfg)  # git sha into the config; a resumed run keeps its W&B run id
    L.seed_everything(cfg.seed, workers=True)  # `deterministic=true` is the Trainer's (strict): README "Resume"
    print_config(cfg)
    _save_resolved_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg)  # says, in one line, which run continues from which step (or a fresh start)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})
    callbacks = instantiate_group(cfg.get("callbacks"))
    if cfg.get("evaluation"):
        callbacks.append(instantiate(cfg.evaluation))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # Lightning refuses an LR monitor without a logger (logger=none, debug=fast_dev_run)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    finish_when_restored_complete(trainer)  # a run killed after its final checkpoint still exports etc.
    _log_batch_geometry(cfg, trainer)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        finish_loggers(loggers)
    if not trainer.interrupted:
        mark_finished(cfg.paths.output_dir)
    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    return None if metric is None else float(metric)


@rank_zero_only
def _save_resolved_config(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / RESOLVED_CONFIG, resolve=True)


@rank_zero_only
def _log_batch_geometry(cfg: DictConfig, trainer: L.Trainer) -> None:
    per_device = cfg.data.batch_size
    accumulate = cfg.optim.get("accumulate_grad_batches", 1)
    log.info(
        "Global batch = %d per device × %d devices × %d nodes × %d accumulation = %d",
        per_device,
        trainer.num_devices,
        trainer.num_nodes,
        accumulate,
        per_device * trainer.num_devices * trainer.num_nodes * accumulate,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.check == "only":  # print the config and the check's verdict; build nothing
        return check_only(cfg)
    with distributed_job():  # this job's ranks run this job's overrides; torn down after it
        try:
            return run(cfg)
        except ConfigError as error:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # a failed job of a sweep: the sweeper records it
            raise SystemExit(f"Nothing was built: {error}") from None  # the report is the message, no traceback
