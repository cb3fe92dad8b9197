"""Hydra + Lightning glue for runs of several processes. Processes are started by Lightning (its
subprocess launcher re-runs `train.py` for local ranks 1..N-1), by torchrun or srun, or by Hydra's
submitit launcher; this module only makes them agree with each other:

- One run directory for all ranks. `${run_stamp:<strftime>}` (configs/hydra/default.yaml) is the
  launch time every rank shares, not each process's own clock: `LDM_TRAIN_RUN_STAMP` if set,
  else under torchrun the first rank's clock, exchanged through the rendezvous store, else SLURM's
  job start time. `${on_rank_zero:x}` is x on global rank 0 and null elsewhere (Hydra's `.hydra/`);
  `RankZeroFileHandler` writes Hydra's `train.log` on global rank 0 only (other ranks log to the console).
- Multirun × DDP. Lightning re-launches ranks with the script's own command line, which in a sweep
  is the whole `-m` sweep: `distributed_job` gives them this job's overrides in RUN mode and this
  job's directory, and after the job destroys the process group and the launcher's environment,
  so the next job starts (and re-launches its ranks) from scratch. Under torchrun/srun every rank
  runs the sweep itself and the group is kept from job to job.
- Launcher geometry: under submitit/SLURM one task per device, checked before anything is submitted.
- FSDP for phase 2: only trained networks are sharded; frozen ones are replicated (`FrozenAwareFSDP`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig, OmegaConf, read_write
from torch import nn

from ldm_train.config_rules import validate_sweep

log = logging.getLogger(__name__)

RUN_STAMP_ENV = "LDM_TRAIN_RUN_STAMP"
RUN_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
STORE_KEY = "ldm_train/run_stamp"
STORE_TIMEOUT = timedelta(minutes=5)
# FSDP units of phase 2 (trainer=fsdp): the UNet class itself (so it and its EMA copy shard alike) and its blocks.
UNET_WRAP_MODULES = (
    "ldm_train.unet.unet.UNet", "ldm_train.nn.resnet.ResBlock", "ldm_train.unet.transformer.SpatialTransformer",
)
# What Lightning's subprocess launcher exports in the launching process (and never removes).
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Appended by Lightning to the command line of the ranks it launches.
LIGHTNING_HYDRA_KEYS = ("hydra.run.dir", "hydra.job.name", "hydra.output_subdir", "hydra.mode")
_store_holder: list = []  # keeps a rendezvous store we host alive until the process group reuses it


# -- one run directory for all ranks ---------------------------------------------------------------
def is_launch_rank_zero() -> bool:
    """Global rank 0 as the launcher's environment says, before any process group exists."""
    if "RANK" in os.environ:  # torchrun
        return int(os.environ["RANK"]) == 0
    if _slurm_tasks() > 1:  # srun
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    return node == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0  # Lightning's launcher


def shared_launch_time() -> datetime:
    """The launch time all ranks of this run agree on (see the module docstring for the order)."""
    if os.environ.get(RUN_STAMP_ENV):
        try:
            return datetime.strptime(os.environ[RUN_STAMP_ENV], RUN_STAMP_FORMAT)
        except ValueError as error:
            raise ValueError(
                f"{RUN_STAMP_ENV}={os.environ[RUN_STAMP_ENV]!r} is not a {RUN_STAMP_FORMAT} time stamp: "
                f"set it with `export {RUN_STAMP_ENV}=$(date +{RUN_STAMP_FORMAT})`"
            ) from error
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _exchange_through_rendezvous_store(datetime.now())
    if _slurm_tasks() > 1:
        if os.environ.get("SLURM_JOB_START_TIME"):
            return datetime.fromtimestamp(int(os.environ["SLURM_JOB_START_TIME"]))
        log.warning(
            "srun started %d tasks but nothing tells them one launch time, so their run directories may "
            "differ: export %s=$(date +%s) before srun, or use hydra/launcher=slurm.",
            _slurm_tasks(), RUN_STAMP_ENV, RUN_STAMP_FORMAT,
        )
    return datetime.now()


def _exchange_through_rendezvous_store(candidate: datetime) -> datetime:
    """First writer wins: every rank proposes its clock, all read back the one that was stored."""
    from torch.distributed import TCPStore

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent hosts the store
        store = TCPStore(host, port, is_master=False, timeout=STORE_TIMEOUT)
    else:  # rank 0 hosts it; multi-tenant, so init_process_group later reuses the same server
        rank_zero = int(os.environ["RANK"]) == 0
        store = TCPStore(host, port, is_master=rank_zero, timeout=STORE_TIMEOUT, wait_for_workers=False,
                         multi_tenant=True)
        _store_holder.append(store)
    key = f"{STORE_KEY}/{os.environ['TORCHELASTIC_RUN_ID']}"
    stored = store.compare_set(key, "", candidate.strftime(RUN_STAMP_FORMAT))
    return datetime.strptime(stored.decode(), RUN_STAMP_FORMAT)


@functools.cache
def launch_time() -> datetime:
    return shared_launch_time()


def run_stamp(pattern: str) -> str:
    return launch_time().strftime(pattern)


def on_rank_zero(value: Any) -> Any:
    return value if is_launch_rank_zero() else None


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_NTASKS", "1")) if "SLURM_PROCID" in os.environ else 1


class RankZeroFileHandler(logging.FileHandler):
    """Hydra's log file (`<run dir>/train.log`, configs/hydra/default.yaml) on global rank 0; on the other
    ranks a handler that never opens a file, so they log to the console only and write nothing into the
    shared run directory (Lightning's launched ranks would write `train_ddp_process_<k>.log`, torchrun's
    ranks would all append to `train.log`)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = False,
                 errors: str | None = None) -> None:
        self.writes = is_launch_rank_zero()
        super().__init__(filename, mode, encoding, delay=delay or not self.writes, errors=errors)

    def emit(self, record: logging.LogRecord) -> None:
        if self.writes:
            super().emit(record)


# use_cache: a sweep's jobs (also when submitit runs them on other machines) copy the master
# config's resolver cache, so they all see the stamp the sweep directory was made with.
OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("on_rank_zero", on_rank_zero, replace=True)


# -- one Hydra job on this process ------------------------------------------------------------------
@contextmanager
def distributed_job() -> Iterator[None]:
    """Wraps one Hydra job (a single run, or one job of a sweep) on this process."""
    saved_env = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    saved_argv = list(sys.argv)
    # Ranks started outside Lightning (torchrun, srun) live through all of a sweep's jobs and keep
    # their process group: a re-initialised one would read the previous job's rendezvous keys from
    # torchrun's store. Ranks Lightning launches end with their job, so their group goes with it.
    external_ranks = "LOCAL_RANK" in os.environ or _slurm_tasks() > 1
    earlier_threads = set(threading.enumerate())
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    relaunch = not external_ranks and hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    if relaunch:  # Lightning re-runs sys.argv (+ hydra.run.dir=<HydraConfig run.dir>) for the other ranks
        saved_run_dir = OmegaConf.to_container(hydra_cfg.run)["dir"]
        sys.argv = [sys.argv[0], *job_command_line(hydra_cfg)]
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    except BaseException:
        if not external_ranks:
            _end_launched_ranks(set(threading.enumerate()) - earlier_threads)
        raise
    finally:
        if not external_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # Lightning leaves it to the end of the process
        for key, value in saved_env.items():  # a stale LOCAL_RANK would stop the next job's launch
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv = saved_argv
        if relaunch:
            with read_write(hydra_cfg):
                hydra_cfg.run.dir = saved_run_dir


def _end_launched_ranks(job_threads: set[threading.Thread]) -> None:
    """After a failed job, end the ranks Lightning launched for it: they may wait in a collective for
    this rank forever, and once they exit, Lightning's observer thread would kill this process, and
    with it the rest of the sweep. (Lightning has no public handle on either.)"""
    for thread in job_threads:
        if isinstance(thread, _ChildProcessObserver):
            procs, thread._child_processes = thread._child_processes, []  # nothing left to watch
            for proc in procs:
                proc.kill()
                proc.wait()


def job_command_line(hydra_cfg: DictConfig) -> list[str]:
    """Overrides that re-create this sweep job as a single run (Lightning appends its run dir)."""
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if o.split("=", 1)[0] not in LIGHTNING_HYDRA_KEYS]
    return [*hydra_cfg.overrides.task, *hydra_overrides, "hydra.mode=RUN"]


# -- launcher geometry ------------------------------------------------------------------------------
class SweepStart(Callback):
    """Hydra callback at the start of a sweep, before the sweeper or launcher do anything."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Sweepers resolve hydra.sweep.dir (→ paths.root_dir → ${hydra:runtime.cwd}) before any job
        # has set HydraConfig; a single run sets it before its callbacks, so do the same.
        HydraConfig.instance().set_config(config)
        launcher = config.hydra.launcher
        remote = str(launcher.get("_target_", "")).endswith("SlurmLauncher")
        try:
            if remote:
                check_submitit_geometry(launcher, config.trainer, list(config.hydra.overrides.task))
            if config.get("check_config", True) or config.get("check") == "only":
                # Every job, before any is started or queued; the hardware only where the jobs run here.
                jobs = validate_sweep(config, machine=not remote)
        except ValueError as error:
            # Hydra turns an exception of a callback into a warning and launches anyway: exit instead.
            raise SystemExit(f"Nothing was launched: {error}") from None
        if config.get("check") == "only":  # a sweep's check=only launches (and queues) nothing
            print(f"Config check (check=only): all {jobs} sweep jobs OK. Nothing was launched.")
            raise SystemExit(0)


def check_submitit_geometry(launcher: DictConfig, trainer: DictConfig, task_overrides: list[str]) -> None:
    """srun starts `tasks_per_node` processes on each of `nodes` nodes and Lightning's SLURMEnvironment
    makes each one rank: one task per device, as many nodes as the Trainer expects."""
    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(task_overrides)
             if o.is_sweep_override() and o.key_or_group in ("trainer.devices", "trainer.num_nodes")]
    if swept:
        raise ValueError(
            f"{', '.join(swept)} is swept, but the SLURM launcher's tasks_per_node/nodes are fixed for the "
            "whole sweep: run one sweep per device count."
        )
    devices = trainer.devices
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"trainer.devices={devices!r}: under SLURM give the number of devices per node as an integer "
            "(hydra.launcher.tasks_per_node follows it)."
        )
    tasks, gpus = launcher.tasks_per_node, launcher.get("gpus_per_node")
    if tasks != devices:
        raise ValueError(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: SLURM must start one task "
            f"per device. Set hydra.launcher.tasks_per_node={devices} (or leave it at its default, "
            "${trainer.devices})."
        )
    if gpus is not None and gpus < devices:
        raise ValueError(
            f"hydra.launcher.gpus_per_node={gpus} is less than trainer.devices={devices}: "
            f"set hydra.launcher.gpus_per_node={devices}."
        )
    if launcher.nodes != trainer.num_nodes:
        raise ValueError(
            f"hydra.launcher.nodes={launcher.nodes} but trainer.num_nodes={trainer.num_nodes}: "
            f"set both to the same number (hydra.launcher.nodes defaults to ${{trainer.num_nodes}})."
        )


# -- FSDP ---------------------------------------------------------------------------------------------
class FrozenAwareFSDP(FSDPStrategy):
    """FSDP that shards only what is trained. The LightningModule's `frozen_submodules` (phase 2's
    VAE and text encoder) become FSDP `ignored_modules`: replicated on every device, never flattened
    into sharded parameters, so their weights stay usable outside the UNet's forward. Instances of
    `wrap_modules` (import paths) are FSDP units of their own; wrap the UNet class itself too, so
    that the UNet and its EMA copy are sharded identically and the EMA update stays elementwise."""

    def __init__(self, wrap_modules: Sequence[str] | None = UNET_WRAP_MODULES, **kwargs: Any) -> None:
        if wrap_modules:
            kwargs["auto_wrap_policy"] = {get_class(path) for path in wrap_modules}
        super().__init__(**kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        self.kwargs["ignored_modules"] = frozen_modules(model, self.root_device)
        return super()._setup_model(model)


def frozen_modules(model: nn.Module, device: torch.device) -> list[nn.Module]:
    """The module's `frozen_submodules`, on `device` (FSDP moves only the modules it manages)."""
    return [model.get_submodule(name).to(device) for name in getattr(model, "frozen_submodules", ())]
