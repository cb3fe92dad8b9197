"""The commands: `python -m ldm_train` = `ldm-train` = `python train.py` (training by default, `evaluate` and
`sample` as subcommands), `python -m ldm_train.sample` = `ldm-sample`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_dirs

BIN = Path(sys.executable).parent


def run_command(command: list[str], cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "ldm_train", *args])


def test_module_trains_by_default():
    result = run_module("stage=autoencoder", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stage_name: autoencoder" in result.stdout


@pytest.mark.parametrize("command", [[sys.executable, "-m", "ldm_train"], [str(BIN / "ldm-train")],
                                     [sys.executable, str(REPO / "train.py")]])
def test_every_training_command_checks_the_command_line_first(command):
    """The same checks before torch is imported, whichever way training is started."""
    result = run_command([*command, "stage=autoencoder", "optim.lr=1e-3", "optim.lr=3e-4"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "optim.lr is given 2 times" in result.stderr


def test_evaluate_subcommand_reaches_the_evaluation_script(tmp_path):
    result = run_module("evaluate", f"ckpt={tmp_path / 'missing'}")
    assert result.returncode != 0 and f"no checkpoint at {tmp_path / 'missing'}" in result.stderr
    result = run_module("evaluate", "n_samples=3")  # a misspelt key is named by the argument schema
    assert result.returncode != 0 and "n_samples" in result.stderr


@pytest.mark.parametrize("command", [[sys.executable, "-m", "ldm_train.sample"], [str(BIN / "ldm-sample")],
                                     [sys.executable, "-m", "ldm_train", "sample"]])
def test_sample_commands_reach_the_sampling_script(command, tmp_path):
    result = run_command([*command, f"ckpt={tmp_path / 'missing'}", "prompt=a bag"])
    assert result.returncode != 0 and f"no checkpoint at {tmp_path / 'missing'}" in result.stderr
    result = run_command([*command, "ckpt=latest"])  # neither prompt nor prompts
    assert result.returncode != 0 and "give exactly one of prompt=" in result.stderr


@pytest.mark.slow
def test_python_m_ldm_train_trains(tmp_path):
    """One batch of phase 1 (debug=fast_dev_run) through `python -m ldm_train`, outside the source tree: a
    run directory with its resolved config, finished."""
    env = {**os.environ, "LDM_TRAIN_ROOT": str(tmp_path), "WANDB_MODE": "offline"}
    result = run_command([sys.executable, "-m", "ldm_train", "stage=autoencoder", "autoencoder=tiny",
                          "module.loss.perceptual=null", "module.loss.perceptual_weight=0", "discriminator.ndf=8",
                          "debug=fast_dev_run", "data.max_train_samples=64", "data.max_val_samples=16",
                          "data.num_workers=0", "data.batch_size=8", "evaluation=none"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path, "autoencoder")
    assert (run / "config_resolved.yaml").is_file() and (run / "FINISHED").is_file()
    assert "Global batch = 8 per device" in result.stdout, "the training run started"
