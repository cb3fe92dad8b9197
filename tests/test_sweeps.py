"""Sweeps through `python train.py -m` (Hydra's sweepers and launchers): a grid with one directory and
one returned metric per job; a sweep of DDP jobs whose ranks each run their own job's overrides; a
seeded Optuna search whose SQLite study resumes and survives a failing (OOM) trial; SLURM geometry
checked before anything is submitted."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder
from ldm_train.conditioning import write_tiny_clip
from ldm_train.distributed import check_submitit_geometry, is_launch_rank_zero
from tests.helpers import CONFIG_DIR, read_metrics, run_train, series


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A phase-1 export (tiny random VAE, the file phase 2 loads) and the tiny CLIP, made in-process."""
    root = tmp_path_factory.mktemp("sweeps")
    torch.manual_seed(0)
    export_autoencoder(AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=32, norm_groups=4,
                                     mid_attention=False), root / "vae")
    write_tiny_clip(root / "data" / "clip_tiny")
    return root


def ldm_args(root: Path) -> list[str]:
    return ["stage=ldm", "text_encoder=clip_tiny", "unet=tiny", f"first_stage.ckpt={root / 'vae'}",
            "logger=csv", "callbacks=none", "+callbacks.probe._target_=tests.ddp_probe.RankProbe",
            "+hydra.callbacks.returns._target_=tests.ddp_probe.ReturnRecorder", "module.ema_decay=null",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "optim.warmup_steps=1", "data.max_train_samples=64", "+data.samples_per_shard=16",
            "data.max_val_samples=32", "data.num_workers=0", "data.batch_size=4"]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def returned(job: Path) -> float:
    record = json.loads((job / "return.json").read_text())
    assert record["status"] == "COMPLETED", record
    return record["value"]


@pytest.mark.slow
def test_grid_sweep_runs_every_job_in_its_own_directory_and_returns_the_metric(root: Path):
    sweep = root / "grid"
    result = run_train(["-m", *ldm_args(root), "optim.lr=1e-4,3e-4", "unet.model_channels=32",
                        f"hydra.sweep.dir={sweep}"], root)
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, lr in zip(jobs, (1e-4, 3e-4)):
        probe = json.loads((job / "probe_rank0.json").read_text())
        assert probe["lr"] == lr and probe["world_size"] == 1
        assert returned(job) == pytest.approx(series(read_metrics(job), "val/loss")[-1], rel=1e-5)


@pytest.mark.slow
def test_sweep_of_ddp_jobs_runs_each_jobs_overrides_on_both_ranks_and_outlives_a_failed_job(root: Path):
    """Lightning re-launches rank 1 with the script's command line; in a sweep that must become this
    job's overrides, or rank 1 would run a sweep of its own. Job 0 fails on rank 0 (a simulated OOM)
    while its rank 1 trains on: that rank is ended, and the sweep goes on to job 1."""
    result = run_train(["-m", *ldm_args(root), "trainer=ddp_cpu", "optim.lr=1e-3,2e-3",
                        "+callbacks.probe.fail_on_job=0"], root)
    assert result.returncode == 1 and "simulated out-of-memory" in result.stderr  # a grid reports it at the end
    (sweep,) = (root / "multirun" / "ldm").glob("*/*")  # one sweep directory ...
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]  # ... holding exactly the two jobs
    assert not (root / "outputs").exists(), "a child rank made a run directory of its own"
    for job, lr in zip(jobs, (1e-3, 2e-3)):
        probes = [json.loads((job / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
        assert [(p["rank"], p["world_size"], p["lr"]) for p in probes] == [(0, 2, lr), (1, 2, lr)]
    assert json.loads((jobs[0] / "return.json").read_text())["status"] == "FAILED"
    assert not set(probes[0]["samples"]) & set(probes[1]["samples"])
    assert returned(jobs[1]) == pytest.approx(probes[0]["val"]["val/loss"])
    assert (jobs[1] / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.slow
def test_optuna_search_is_seeded_survives_a_failed_trial_and_resumes_its_study(root: Path):
    storage = f"sqlite:///{root / 'optuna.db'}"
    search = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=ldm-test"]
    first = run_train([*ldm_args(root), *search, "hydra.sweeper.n_trials=2", "+callbacks.probe.fail_on_job=0",
                       f"hydra.sweep.dir={root / 'optuna1'}"], root)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "simulated out-of-memory" in first.stdout + first.stderr
    second = run_train([*ldm_args(root), *search, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={root / 'optuna2'}"],
                       root)
    assert second.returncode == 0, second.stderr[-4000:]

    study = optuna.load_study(study_name="ldm-test", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2], "the second run must continue the stored study"
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    best = yaml.safe_load((root / "optuna2" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(study.best_value)
    assert set(best["best_params"]) == {"optim.lr"} and 1e-5 <= best["best_params"]["optim.lr"] <= 3e-3
    assert returned(root / "optuna1" / "1") == pytest.approx(study.trials[1].value)


def slurm_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", *overrides],
                       return_hydra_config=True)


@pytest.mark.parametrize(("overrides", "error"), [
    ([], None),
    (["trainer.devices=4", "trainer.num_nodes=2"], None),
    (["hydra.launcher.tasks_per_node=2"], "tasks_per_node=2 but trainer.devices=8"),
    (["hydra.launcher.nodes=2"], "nodes=2 but trainer.num_nodes=1"),
    (["hydra.launcher.gpus_per_node=4"], "gpus_per_node=4 is less than trainer.devices=8"),
    (["trainer.devices=auto"], "as an integer"),
    (["trainer.devices=4,8"], "trainer.devices is swept"),
])
def test_slurm_launcher_starts_one_task_per_device(overrides, error):
    cfg = slurm_config([o for o in overrides if "," not in o])
    task = [o for o in overrides if not o.startswith("hydra.")]
    if error is None:
        check_submitit_geometry(cfg.hydra.launcher, cfg.trainer, task)
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == cfg.trainer.devices
    else:
        with pytest.raises(ValueError, match=error):
            check_submitit_geometry(cfg.hydra.launcher, cfg.trainer, task)


def test_slurm_mismatch_fails_when_the_sweep_starts():
    """Hydra calls on_multirun_start before its sweeper or launcher exist, so nothing is submitted. The
    callback exits: Hydra only warns about an exception raised in a callback, and launches anyway."""
    cfg = slurm_config(["hydra.launcher.tasks_per_node=4"])
    callback = instantiate(cfg.hydra.callbacks.sweep_start)
    with pytest.raises(SystemExit, match="hydra.launcher.tasks_per_node=4 but trainer.devices=8"):
        callback.on_multirun_start(cfg)


def test_srun_tasks_are_ranks_for_lightning(monkeypatch):
    """What submitit's srun gives each task: Lightning's SLURMEnvironment turns it into ranks."""
    for key, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_NODEID": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "1234",
                       "SLURM_NODELIST": "gpu[01-02]"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RANK", raising=False)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 1, 1, 4)
    assert env.main_address == "gpu01" and not is_launch_rank_zero()
    with pytest.raises(ValueError, match="ntasks-per-node"):
        env.validate_settings(num_devices=4, num_nodes=2)  # Lightning's own check, inside the job
