"""Resume: which run and checkpoint `resume=auto|never|<path>` continues, what the run records for it
(W&B id, git sha, a continuing metrics.csv), and the must-show case: a run killed with SIGKILL and
resumed through `python train.py` ends with the same weights and loss curve as one never stopped."""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm_train.lit.csv_logger import ContinuingCSVLogger
from ldm_train.loggers import finish_loggers, make_wandb_logger
from ldm_train.resume import (
    WANDB_ID_FILE,
    choose_run_dir,
    find_unfinished_run,
    prepare_run,
    resolve_ckpt_path,
)
from ldm_train.runs import FINISHED_MARKER, LOCK_FILE
from tests.helpers import REPO, read_metrics, run_dirs, run_train, series, without_evaluation


def make_run(stage_dir: Path, stamp: str, overrides: list[str], name: str = "autoencoder", finished: bool = False) -> Path:
    run = stage_dir / stamp
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"name": name}), run / "config_resolved.yaml")
    if finished:
        (run / FINISHED_MARKER).touch()
    return run


def root_config(tmp_path: Path, resume: str, overrides: list[str]):
    return OmegaConf.create({"resume": resume, "stage_name": "autoencoder", "name": "autoencoder",
                             "paths": {"log_dir": str(tmp_path)}, "hydra": {"overrides": {"task": overrides}}})


# -- which run continues -----------------------------------------------------------------------------
def test_auto_continues_the_newest_unfinished_run_of_the_same_command(tmp_path):
    stage = tmp_path / "autoencoder"
    command = ["optim.lr=1e-3", "trainer.max_steps=100"]
    older = make_run(stage, "2026-01-01/10-00-00", command)
    newer = make_run(stage, "2026-01-02/10-00-00", command)
    make_run(stage, "2026-01-03/10-00-00", command, finished=True)
    make_run(stage, "2026-01-04/10-00-00", ["optim.lr=3e-3"])  # another command
    make_run(stage, "2026-01-05/10-00-00", command, name="other")
    new = str(stage / "2026-01-06" / "10-00-00")
    # Running longer (max_steps) or saying resume=auto explicitly is still the same run.
    again = ["resume=auto", "optim.lr=1e-3", "trainer.max_steps=200"]
    assert choose_run_dir(new, root_config(tmp_path, "auto", again)) == newer
    assert choose_run_dir(new, root_config(tmp_path, "auto", ["optim.lr=5e-3"])) == Path(new)
    assert choose_run_dir(new, root_config(tmp_path, "never", command)) == Path(new)
    assert choose_run_dir(new, root_config(tmp_path, str(older), command)) == older
    assert choose_run_dir(new, root_config(tmp_path, str(older / "checkpoints" / "last.ckpt"), command)) == older


def test_auto_never_takes_over_a_run_that_is_still_going(tmp_path):
    stage = tmp_path / "autoencoder"
    idle = make_run(stage, "2026-01-01/10-00-00", [])
    busy = make_run(stage, "2026-01-02/10-00-00", [])
    with (busy / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the live run holds it
        assert find_unfinished_run(stage, "autoencoder", stage / "new", []) == idle / "checkpoints" / "last.ckpt"
    assert find_unfinished_run(stage, "autoencoder", stage / "new", []) == busy / "checkpoints" / "last.ckpt"


def test_the_checkpoint_restored_is_this_run_directory_s_unfinished_last_ckpt(tmp_path, caplog):
    run = make_run(tmp_path, "run", [])
    torch.save({"global_step": 7}, run / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"resume": "auto", "paths": {"output_dir": str(run)}})
    with caplog.at_level(logging.INFO, logger="ldm_train.resume"):
        assert resolve_ckpt_path(cfg) == str(run / "checkpoints" / "last.ckpt")
    # One line at start: which run continues, from which step.
    assert caplog.messages == [f"resume=auto: continuing {run} from step 7 ({run / 'checkpoints' / 'last.ckpt'})"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ldm_train.resume"):
        resolve_ckpt_path(OmegaConf.create({"resume": "auto", "paths": {"output_dir": str(tmp_path / "new")}}))
    assert caplog.messages == [f"resume=auto: starting fresh in {tmp_path / 'new'} (no unfinished run of this command "
                               "to continue)"]
    (run / FINISHED_MARKER).touch()
    assert resolve_ckpt_path(cfg) is None, "finished work is never resumed by auto"
    cfg.resume = str(run)  # asked for by name: it continues (e.g. with more steps) and is unfinished again
    assert resolve_ckpt_path(cfg) == str(run / "checkpoints" / "last.ckpt")
    assert not (run / FINISHED_MARKER).exists()
    cfg.resume = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="resume=auto / resume=never"):
        resolve_ckpt_path(cfg)


# -- what a run records for its continuation -----------------------------------------------------
def test_a_continued_run_keeps_its_wandb_id_and_records_the_code_version(tmp_path):
    def prepared():
        cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "logger": {"wandb": {"id": None}}})
        prepare_run(cfg)
        return cfg

    first, again = prepared(), prepared()
    assert first.logger.wandb.id == again.logger.wandb.id == (tmp_path / WANDB_ID_FILE).read_text()
    assert len(first.git_sha) >= 40 or first.git_sha == "unknown"


def test_the_resumed_run_logs_to_the_same_wandb_run_with_the_code_version_in_its_config(tmp_path):
    def segment() -> str:  # one process's part of the run: prepare, log the config, finish
        cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)},
                                "logger": {"wandb": {"project": "test", "name": "run", "save_dir": str(tmp_path)}}})
        prepare_run(cfg)
        logger = make_wandb_logger(mode="offline", **cfg.logger.wandb)
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg)})  # what Lightning logs at fit start
        run_id = logger.experiment.id
        assert logger.experiment.config["config"]["git_sha"] == cfg.git_sha
        finish_loggers([logger])
        return run_id

    first, resumed = segment(), segment()
    assert first == resumed == (tmp_path / WANDB_ID_FILE).read_text()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{first}")), "the offline run carries that id"


def test_metrics_csv_continues_and_drops_the_rows_being_redone(tmp_path):
    killed = ContinuingCSVLogger(str(tmp_path), name="csv", version="")
    for step in range(10):
        killed.log_metrics({"train/loss": float(step)}, step=step)
    killed.save()
    resumed = ContinuingCSVLogger(str(tmp_path), name="csv", version="")  # checkpoint was at step 6
    for step in range(6, 12):
        resumed.log_metrics({"train/loss": 100.0 + step, "val/loss": 1.0}, step=step)
    resumed.save()
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert [float(r["train/loss"]) for r in rows] == [*range(6), *(100.0 + s for s in range(6, 12))]
    assert rows[0]["val/loss"] == "" and rows[-1]["val/loss"] == "1.0"


# -- the must-show case: SIGKILL mid-run, resume=auto, same end ---------------------------------------
STEPS = 16
ARGS = ["stage=autoencoder", "autoencoder=tiny", "perceptual=lpips_alex", "discriminator.ndf=8",
        "discriminator.n_layers=2", "module.loss.disc_start=10", "module.latent_scale_batches=1",
        f"trainer.max_steps={STEPS}", "trainer.val_check_interval=6", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", "callbacks.last.every_n_steps=4", "callbacks.images.every_n_steps=1000",
        "logger=csv", "deterministic=true", "data.num_workers=0", "data.batch_size=16",
        "data.max_train_samples=80", "data.max_val_samples=16"]  # 5 batches an epoch: the kill lands mid-epoch


def start_train(root: Path) -> subprocess.Popen:
    """`python train.py ARGS` as `run_train` runs it, in the background; stderr in root/stderr.txt."""
    root.mkdir(parents=True)
    env = {**os.environ, "LDM_TRAIN_ROOT": str(root), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    with (root / "stderr.txt").open("w") as stderr:
        return subprocess.Popen([sys.executable, str(REPO / "train.py"), *without_evaluation(ARGS)], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def kill_after_second_checkpoint(root: Path) -> int:
    """Start the run and SIGKILL it once its last.ckpt has been replaced once (step 8 or later)."""
    child = start_train(root)
    seen: set[int] = set()
    deadline = time.monotonic() + 300
    while len(seen) < 2 and child.poll() is None and time.monotonic() < deadline:
        for ckpt in (root / "outputs").glob("autoencoder/*/*/checkpoints/last.ckpt"):
            seen.add(ckpt.stat().st_ino)  # each atomic save is a new file
        time.sleep(0.02)
    assert child.poll() is None, (root / "stderr.txt").read_text()[-3000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    (ckpt,) = (root / "outputs").glob("autoencoder/*/*/checkpoints/last.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights_and_loss_curve(tmp_path):
    reference = start_train(tmp_path / "reference")  # alongside the run that gets killed
    killed_at = kill_after_second_checkpoint(tmp_path / "killed")
    assert reference.wait() == 0, (tmp_path / "reference" / "stderr.txt").read_text()[-3000:]
    (uninterrupted,) = run_dirs(tmp_path / "reference", "autoencoder")
    assert 8 <= killed_at < STEPS, f"the kill should land mid-run, not at step {killed_at}"
    (run,) = run_dirs(tmp_path / "killed", "autoencoder")
    assert not (run / FINISHED_MARKER).exists()
    resumed = run_train(ARGS, tmp_path / "killed")  # the same command: resume=auto is the default
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume=auto: continuing {run} from step {killed_at} " in resumed.stdout, "said at start, in one line"
    assert run_dirs(tmp_path / "killed", "autoencoder") == [run], "the resumed run continues in its own directory"
    assert (run / FINISHED_MARKER).exists()

    expected, got = final_state(uninterrupted), final_state(run)
    assert got["global_step"] == expected["global_step"] == STEPS
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    for want, have in zip(expected["optimizer_states"], got["optimizer_states"]):
        for p, state in want["state"].items():
            torch.testing.assert_close(have["state"][p]["exp_avg_sq"], state["exp_avg_sq"], rtol=0, atol=1e-6)

    # One loss curve: every step once, in order, equal to the uninterrupted run's.
    rows, reference_rows = read_metrics(run), read_metrics(uninterrupted)
    steps = [int(r["step"]) for r in rows if r.get("train/rec")]
    assert steps == sorted(set(steps)) == [int(r["step"]) for r in reference_rows if r.get("train/rec")]
    torch.testing.assert_close(torch.tensor(series(rows, "train/rec")), torch.tensor(series(reference_rows, "train/rec")),
                               rtol=0, atol=1e-6)
    assert series(rows, "train/d_loss"), "the discriminator phase (from step 10) was reached after the resume"
