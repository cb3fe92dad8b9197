"""Shared test helpers: compose the real configs, run train.py in a subprocess, count forward calls per step."""

from __future__ import annotations

import csv
import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = str(REPO / "ldm_train" / "configs")


def without_evaluation(overrides: list[str]) -> list[str]:
    """`evaluation=none` unless the test chooses an evaluation: the in-loop metrics load Inception
    and reference statistics, which only the evaluation tests pay for."""
    chooses = any(o.split("=")[0].lstrip("+~") == "evaluation" for o in overrides)
    if chooses:
        return overrides
    # Next to the other overrides: Hydra's parser takes its flags (`-m`, `--cfg job`) before or after
    # the overrides, but not between two of them.
    flag = next((i for i, o in enumerate(overrides) if o.startswith("-")), len(overrides))
    at = len(overrides) if flag == 0 else flag
    return [*overrides[:at], "evaluation=none", *overrides[at:]]


def compose_config(overrides: list[str], root: Path) -> DictConfig:
    """The config `python train.py <overrides>` would run with, rooted at `root`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", *without_evaluation(overrides)],
                      return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        del cfg["hydra"]
    return cfg


def run_train(args: list[str], root: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python train.py <args>` with LDM_TRAIN_ROOT=root, offline, one thread per process."""
    env = {**os.environ, "LDM_TRAIN_ROOT": str(root), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *without_evaluation(args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on localhost that is free now: the rendezvous of a test's gloo process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dirs(root: Path, stage: str) -> list[Path]:
    return sorted((root / "outputs" / stage).glob("*/*"))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def series(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


# -- every config group option, with the stage(s) it applies to -----------------------------------------
STAGES = ("autoencoder", "ldm")
# Groups whose options build one stage's pieces; every other group's options apply to both stages.
# `stage` and `experiment_stage` are chosen through `stage=` and `experiment=`; `hydra` (launchers) is
# composed in tests/test_sweeps.py and never reaches the config check.
STAGE_GROUPS = {
    "autoencoder": ("autoencoder",), "discriminator": ("autoencoder",), "perceptual": ("autoencoder",),
    "unet": ("ldm",), "text_encoder": ("ldm",), "diffusion": ("ldm",), "first_stage": ("ldm",),
}
NOT_CHOSEN_DIRECTLY = ("stage", "experiment_stage", "hydra")
# Options that hold a stage's pieces of a both-stage group (their names say which), and the values an
# option leaves to the user (`???`).
OPTION_STAGES = {("optim", "autoencoder"): ("autoencoder",), ("optim", "adamw"): ("ldm",), ("data", "latents"): ("ldm",)}
OPTION_NEEDS = {("data", "webdataset"): ["data.train_shards=/data/shard-000000.tar"],
                ("data", "latents"): ["data.cache_dir=/data/latents"]}
# Phase 2 without CLIP's weights (offline); a text_encoder=<option> composition replaces it.
STAGE_BASE = {"autoencoder": [], "ldm": ["text_encoder=minilm"]}


def config_options() -> list[tuple[str, str, str]]:
    """(stage, group, option) for every option of every config group, once per stage it applies to."""
    found = []
    for folder in sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in NOT_CHOSEN_DIRECTLY):
        for option in sorted(p.stem for p in folder.glob("*.yaml")):
            stages = OPTION_STAGES.get((folder.name, option)) or STAGE_GROUPS.get(folder.name, STAGES)
            if folder.name == "evaluation" and option.rsplit("_", 1)[-1] in STAGES:
                stages = (option.rsplit("_", 1)[-1],)
            found += [(stage, folder.name, option) for stage in stages]
    return found


def compose_option(stage: str, group: str, option: str, root: Path) -> DictConfig:
    """The config of `stage` with `group=option` (and the values that option leaves to the user)."""
    base = [o for o in STAGE_BASE[stage] if o.split("=")[0] != group]
    return compose_config([f"stage={stage}", *base, f"{group}={option}", *OPTION_NEEDS.get((group, option), [])], root)


class ForwardCalls(L.Callback):
    """How often each named submodule ran forward during each training batch: `per_batch[i][name]`."""

    def __init__(self, **modules: nn.Module) -> None:
        self.per_batch: list[dict[str, int]] = []
        self._counts = dict.fromkeys(modules, 0)
        for name, module in modules.items():
            module.register_forward_hook(functools.partial(self._count, name))

    def _count(self, name: str, *hook_args) -> None:
        self._counts[name] += 1

    def on_train_batch_start(self, *args) -> None:
        self._counts = dict.fromkeys(self._counts, 0)

    def on_train_batch_end(self, *args) -> None:
        self.per_batch.append(dict(self._counts))
