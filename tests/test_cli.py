"""`python -m ldm_train` / `ldm-train`: training by default, `evaluate` and `sample` as subcommands."""

import subprocess
import sys

from tests.helpers import REPO


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldm_train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_module_trains_by_default():
    result = run_module("stage=autoencoder", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stage_name: autoencoder" in result.stdout


def test_evaluate_subcommand_reaches_the_evaluation_script(tmp_path):
    result = run_module("evaluate", f"ckpt={tmp_path / 'missing'}")
    assert result.returncode != 0 and f"no checkpoint at {tmp_path / 'missing'}" in result.stderr
    result = run_module("evaluate", "n_samples=3")  # a misspelt key is named by the argument schema
    assert result.returncode != 0 and "n_samples" in result.stderr
