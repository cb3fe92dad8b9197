"""Every bad command line fails before anything is built, naming the key, the value and the fix.

Most cases go through train.py's checks in-process (command line → Hydra → validate_config) with
constructors of networks, data modules and Trainers counted; a handful run `python train.py` as a
user would and are timed. scripts/report_bad_command_lines.py prints the summary figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bad_command_lines import (
    CASES,
    LDM,
    BuildCounter,
    Case,
    applies_here,
    args_for,
    check_in_process,
    prepare_root,
    warm_up,
)
from tests.helpers import REPO, run_train

# What building prints or leaves behind: Lightning's model summary, the data preparation's folder.
BUILD_MARKERS = re.compile(r"Total params|\| Name\s+\| Type|Trainable params")
# A failed `python train.py`: start-up (torch + Lightning imports) and checks, on a loaded 2-core CPU;
# building the models and preparing Fashion-MNIST takes longer than this before the first step.
SUBPROCESS_LIMIT_S = 60
SUBPROCESS_CASES = ["root_added", "z_channels_zero", "pixel_loss", "batch_zero", "shards_unquoted",
                    "unet_context", "ddp_no_gpu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad_command_lines")
    prepare_root(path)
    warm_up(path)
    return path


def test_there_are_enough_cases_across_both_stages():
    ldm = [c for c in CASES if "stage=ldm" in c.args]
    assert len(CASES) >= 60 and len(ldm) >= 20 and len(CASES) - len(ldm) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("args", [[], LDM, [*LDM, "unet=tiny"], ["experiment=fashion_mnist"],
                                  [*LDM, "experiment=fashion_mnist"], ["+extra.note=baseline"],
                                  ["data=webdataset", "data.train_shards=/x.tar", "data.resolution=32"]])
def test_the_base_command_lines_pass(args, root):
    if "data=webdataset" in args:
        (root / "x.tar").write_bytes(b"")
        args = [a.replace("/x.tar", str(root / "x.tar")) for a in args]
    assert check_in_process(list(args), root) is None


@pytest.mark.parametrize("bad", CASES, ids=lambda c: c.id)
def test_bad_command_line_fails_at_composition(bad: Case, root: Path):
    if not applies_here(bad):
        pytest.skip("this machine has the hardware or the cached weights the case asks for")
    counter = BuildCounter().install()
    try:
        message = check_in_process(args_for(bad, root), root)
    finally:
        counter.remove()
    assert message is not None, f"accepted: {' '.join(bad.args)}"
    missing = [word for word in bad.expected if word not in message]
    assert not missing, f"{missing} not in the message:\n{message}"
    assert not counter.built, f"built before failing: {counter.built}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_train_py_fails_fast_naming_the_problem(name: str, tmp_path: Path):
    bad = next(c for c in CASES if c.name == name)
    if not applies_here(bad):
        pytest.skip("this machine has the hardware or the cached weights the case asks for")
    prepare_root(tmp_path)
    start = time.perf_counter()
    result = run_train(args_for(bad, tmp_path), tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    missing = [word for word in bad.expected if word not in output]
    assert not missing, f"{missing} not in the output:\n{output[-3000:]}"
    assert not BUILD_MARKERS.search(output), "a model summary was printed: the run got past building"
    assert not (tmp_path / "data").exists(), "failed after data preparation had started"
    assert elapsed < SUBPROCESS_LIMIT_S, f"took {elapsed:.1f} s to fail"


@pytest.mark.slow
def test_check_only_prints_the_config_and_builds_nothing(tmp_path: Path):
    result = run_train(["check=only", "trainer=cpu"], tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Config check (check=only): OK" in result.stdout and "stage_name" in result.stdout
    assert not BUILD_MARKERS.search(result.stdout + result.stderr)
    assert not (tmp_path / "data").exists()
    assert not list((tmp_path / "outputs").glob("*/*/*")), "check=only left a run directory"


@pytest.mark.slow
def test_check_only_with_errors_exits_non_zero(tmp_path: Path):
    result = run_train(["check=only", "+optim.lrr=1e-3", "data.batch_size=0"], tmp_path,
                       timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode != 0
    assert "optim.lrr=0.001" in result.stderr and "data.batch_size (for" in result.stderr
    assert "Invalid config (2 problems)" in result.stderr


@pytest.mark.slow
def test_sweep_jobs_are_all_checked_before_the_first_starts(tmp_path: Path):
    result = run_train(["optim.lr=1e-3,-1", "-m"], tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode != 0
    assert "sweep job optim.lr=-1" in result.stderr and "optim.lr (read as optim.optimizer.lr" in result.stderr
    assert "got -1, must be >= 0" in result.stderr and "Nothing was launched" in result.stderr
    assert not (tmp_path / "data").exists(), "the first job started"


def _fake_sbatch(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """`sbatch` that records being called and refuses (submission attempted or not); submitit also
    looks for `srun` before it submits."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "sbatch_called"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text(f"#!/bin/sh\ntouch {marker}.{tool}\necho '{tool}: test stub' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, marker.with_suffix(".sbatch")


@pytest.mark.slow
@pytest.mark.parametrize("args,submitted", [
    (["+optim.lrr=1e-3"], False),
    (["trainer.devices=2", "data.batch_size=0"], False),
    # ddp on a login node without GPUs is fine: the jobs run on the cluster's nodes.
    (["trainer=ddp", "trainer.devices=2"], True),
])
def test_slurm_sweeps_are_checked_on_the_submitting_machine(args, submitted, tmp_path: Path, monkeypatch):
    env, marker = _fake_sbatch(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    result = run_train(["hydra/launcher=slurm", *args, "-m"], tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode != 0  # the stub refuses every submission
    assert marker.exists() == submitted, result.stderr[-3000:]
    if not submitted:
        assert "Invalid config" in result.stderr and args[-1].split("=")[0] in result.stderr


@pytest.mark.slow
def test_check_only_on_a_slurm_sweep_checks_every_job_and_queues_nothing(tmp_path: Path, monkeypatch):
    env, marker = _fake_sbatch(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    result = run_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2", "optim.lr=1e-3,2e-3", "check=only",
                        "-m"], tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 sweep jobs OK" in result.stdout and not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["data.resolution=${nope}"], ["train.py: data.resolution=${nope}: refers to ${nope}", "reference an existing key"]),
    (["trainer=gpux"], ["Could not find 'trainer/gpux'", "ddp_cpu"]),
    (["optim.lrr=1"], ["Could not override 'optim.lrr'", "+optim.lrr=1"]),
])
def test_hydra_errors_show_their_cause_without_hydra_full_error(args, expected, tmp_path: Path):
    """What a user sees by default (no HYDRA_FULL_ERROR): the key, the override and the fix, not only
    Hydra's hint to set the variable."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(LDM_TRAIN_ROOT=str(tmp_path), WANDB_MODE="offline")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "evaluation=none", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S * 2)
    assert result.returncode != 0
    missing = [word for word in expected if word not in result.stderr]
    assert not missing, f"{missing} not in:\n{result.stderr[-3000:]}"
