"""Every config composes, passes the signature check and (at tiny size) instantiates; bad keys,
types and group options fail at composition with messages that name them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from ldm_train.config_check import ConfigError, check_config
from ldm_train.train import instantiate_group
from tests.helpers import REPO, compose_config, compose_option, config_options, run_train

CONFIGS = REPO / "ldm_train" / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_groups_mirror_the_code():
    for group in ("autoencoder", "unet", "text_encoder", "diffusion", "data", "sampling" if False else "optim"):
        assert options(group), f"config group {group} is empty"


@pytest.mark.parametrize("option", options("autoencoder"))
def test_autoencoder_configs_instantiate_at_tiny_width(option, tmp_path):
    cfg = compose_config([f"autoencoder={option}", "autoencoder.ch=16", "++autoencoder.norm_groups=8"], tmp_path)
    check_config(cfg)
    ae = instantiate(cfg.autoencoder)
    res = 2 ** len(cfg.autoencoder.ch_mult) * 2
    recon, posterior = ae(torch.zeros(1, 3, res, res))
    assert recon.shape == (1, 3, res, res)
    assert posterior.mean.shape[1] == cfg.autoencoder.embed_dim


@pytest.mark.parametrize("option", options("unet"))
def test_unet_configs_instantiate_at_tiny_width(option, tmp_path):
    small = ["unet.model_channels=32", "++unet.norm_groups=8"]
    if option == "sd2":
        small.append("unet.num_head_channels=8")
    cfg = compose_config(["stage=ldm", "text_encoder=minilm", f"unet={option}", *small], tmp_path)
    check_config(cfg)
    unet = instantiate(cfg.unet)
    out = unet(torch.zeros(2, 4, 8, 8), torch.tensor([1, 500]), torch.zeros(2, 5, 384))
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("option", options("diffusion"))
def test_diffusion_configs_instantiate(option, tmp_path):
    cfg = compose_config(["stage=ldm", "text_encoder=minilm", f"diffusion={option}"], tmp_path)
    objective = instantiate(cfg.diffusion)
    assert objective.schedule.num_timesteps == 1000


@pytest.mark.parametrize("stage,group,option", config_options(), ids=[f"{s}-{g}={o}" for s, g, o in config_options()])
def test_every_option_composes_and_checks(stage, group, option, tmp_path):
    """Each option of each group (with the stages it applies to, experiments and debug included) composes,
    and the config check finds every key of it read by something."""
    cfg = compose_option(stage, group, option, tmp_path)
    check_config(cfg)
    assert cfg.stage_name == stage and HydraConfig.get().runtime.choices[group] == option


@pytest.mark.parametrize("stage", ["autoencoder", "ldm"])
@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_cpu_trainers_instantiate(stage, trainer, tmp_path):
    cfg = compose_config([f"stage={stage}", "text_encoder=minilm", f"trainer={trainer}"], tmp_path)
    assert instantiate(cfg.trainer, logger=False).max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("key", ["+optim.unused_key=1", "+trainer.unused_key=1", "+callbacks.last.unused_key=1",
                                 "+module.loss.unused_key=1", "+unused_key=1"])
def test_a_key_nothing_reads_fails_the_check(key, tmp_path):
    cfg = compose_config(["stage=autoencoder", key], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(key.lstrip("+")) + r"[: ].*unknown key 'unused_key'"):
        check_config(cfg)


def test_loggers_and_callbacks_instantiate(tmp_path):
    cfg = compose_config(["logger=all"], tmp_path)
    loggers = instantiate_group(cfg.logger)
    kinds = (CSVLogger, WandbLogger, TensorBoardLogger)
    assert len(loggers) == 3 and all(any(isinstance(lg, k) for lg in loggers) for k in kinds)
    callbacks = instantiate_group(cfg.callbacks)
    assert {"ModelCheckpoint", "ImagesPerSecond", "ImageLogger", "SkippedSamplesLogger"} <= {
        type(c).__name__ for c in callbacks
    }


def test_offline_clip_fails_fast_naming_minilm(tmp_path):
    cfg = compose_config(["stage=ldm"], tmp_path)
    with pytest.raises(Exception, match="text_encoder=minilm"):
        instantiate(cfg.text_encoder)


def test_first_stage_latest_without_export_names_the_fix(tmp_path):
    cfg = compose_config(["stage=ldm", "text_encoder=minilm"], tmp_path)
    with pytest.raises(Exception, match="no phase-1 export") as err:  # Hydra wraps the FileNotFoundError
        instantiate(cfg.first_stage)
    assert "python train.py stage=autoencoder" in str(err.value)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["autoencoder.chh=3"], "Could not override 'autoencoder.chh'"),
        (["+autoencoder.chh=3"], "autoencoder.chh=3 (for ldm_train.autoencoder.autoencoder_kl.AutoencoderKL): unknown key 'chh'; did you mean 'ch'?"),
        (["autoencoder.ch=wide"], "autoencoder.ch (for ldm_train.autoencoder.autoencoder_kl.AutoencoderKL): expected int, got 'wide'"),
        (["trainer=gpux"], "Could not find 'trainer/gpux'"),
        (["optim.lr=fast"], "optim.lr (read as optim.optimizer.lr by torch.optim.Adam): expected float, got 'fast'"),
    ],
)
def test_bad_input_fails_before_any_model_is_built(args, expected, tmp_path: Path):
    result = run_train(args, tmp_path, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert not (tmp_path / "data").exists(), "failed after data preparation had started"
