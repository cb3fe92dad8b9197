"""Run layout (ldm_train/runs.py): which phase-1 export `first_stage.ckpt=latest` takes, a phase-2
run's own copy of its VAE (recorded by relative path + SHA-256, found again after the run moved), and
the export's one record of the latent scale."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm_train import runs
from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder, load_first_stage
from ldm_train.config_check import ConfigError
from ldm_train.config_rules import validate_config
from tests.helpers import compose_config

LATENT_SCALE = [0.5, 0.25, 2.0, 1.5]


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, resolution=16, mid_attention=False)
    vae.latent_norm.scale.copy_(torch.tensor(LATENT_SCALE))
    return vae


def phase1_run(stage_dir: Path, stamp: str, group: str | None, finished: bool = True) -> Path:
    run = stage_dir / stamp
    export_autoencoder(tiny_vae(), run)
    OmegaConf.save(OmegaConf.create({"group": group}), run / runs.RESOLVED_CONFIG)
    if finished:
        runs.mark_finished(run)
    return run


# -- first_stage.ckpt=latest -------------------------------------------------------------------------
def test_latest_is_the_newest_finished_phase1_run_of_the_same_group(tmp_path, caplog):
    stage = tmp_path / "outputs" / "autoencoder"
    phase1_run(stage, "2026-01-01/10-00-00", "fashion_mnist")
    chosen = phase1_run(stage, "2026-01-02/10-00-00", "fashion_mnist")
    phase1_run(stage, "2026-01-03/10-00-00", "fashion_mnist", finished=False)  # still training, or killed
    phase1_run(stage, "2026-01-04/10-00-00", "demo")  # another experiment
    phase1_run(stage, "2026-01-05/10-00-00", None)
    with caplog.at_level(logging.INFO):
        found = runs.latest_finished_export([str(stage)], "fashion_mnist")  # as the config check looks it up
        load_first_stage(runs.LATEST, [str(stage)], group="fashion_mnist")
    assert found == chosen / "export" / "autoencoder.safetensors"
    assert caplog.text.count(f"first_stage.ckpt=latest: {chosen}") == 1, "the choice is logged once, by its loader"
    assert runs.latest_finished_export([str(stage)], None).parent.parent.name == "10-00-00"
    assert runs.latest_finished_export([str(stage)], None).parts[-4] == "2026-01-05"


def test_latest_without_a_finished_run_fails_in_the_config_check(tmp_path):
    phase1_run(tmp_path / "outputs" / "autoencoder", "2026-01-01/10-00-00", None, finished=False)
    cfg = compose_config(["stage=ldm", "text_encoder=minilm"], tmp_path)
    with pytest.raises(ConfigError, match=r"first_stage.ckpt=latest: no phase-1 export .* FINISHED run of group None"):
        validate_config(cfg, machine=False)
    runs.mark_finished(tmp_path / "outputs" / "autoencoder" / "2026-01-01" / "10-00-00")
    validate_config(cfg, machine=False)


def test_sweep_jobs_are_never_latest(tmp_path):
    cfg = compose_config(["stage=ldm", "text_encoder=minilm"], tmp_path)
    assert list(cfg.first_stage.search_dirs) == [str(tmp_path / "outputs" / "autoencoder")]
    phase1_run(tmp_path / "multirun" / "autoencoder" / "2026-01-01" / "10-00-00", "0", None)
    with pytest.raises(FileNotFoundError, match="no phase-1 export"):
        runs.latest_finished_export(list(cfg.first_stage.search_dirs), cfg.first_stage.group)


def test_the_configs_write_checkpoints_where_runs_py_says(tmp_path):
    cfg = compose_config(["stage=ldm", "text_encoder=minilm"], tmp_path)
    out = Path(cfg.paths.output_dir)
    assert Path(cfg.callbacks.last.dirpath) == out / runs.CHECKPOINTS_DIR
    assert Path(cfg.callbacks.checkpoint.dirpath) == out / runs.CHECKPOINTS_DIR


# -- the export: one record of the latent scale ---------------------------------------------------------
def test_export_json_holds_the_latent_scale_once(tmp_path):
    weights = export_autoencoder(tiny_vae(), tmp_path)
    meta = json.loads((weights.parent / runs.EXPORT_CONFIG).read_text())
    assert "scaling_factor" not in meta["config"] and "shift_factor" not in meta["config"]
    assert meta["latent_scale"] == LATENT_SCALE and meta["latent_shift"] == [0.0] * 4
    loaded = load_first_stage(str(tmp_path))
    assert loaded.latent_norm.scale.tolist() == LATENT_SCALE
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode_latents(x, sample=False), tiny_vae().encode_latents(x, sample=False))


def test_an_export_with_the_old_json_still_loads(tmp_path):
    weights = export_autoencoder(tiny_vae(), tmp_path)
    meta = json.loads((weights.parent / runs.EXPORT_CONFIG).read_text())
    meta["config"].update(scaling_factor=1.0, shift_factor=0.0)  # what exports held before
    (weights.parent / runs.EXPORT_CONFIG).write_text(json.dumps(meta))
    assert load_first_stage(str(weights)).latent_norm.scale.tolist() == LATENT_SCALE


# -- a phase-2 run holds its VAE -----------------------------------------------------------------------
def test_a_moved_phase2_run_finds_its_own_copy_of_the_vae(tmp_path):
    phase1 = phase1_run(tmp_path / "autoencoder", "2026-01-01/10-00-00", None)
    source = phase1 / "export" / "autoencoder.safetensors"
    phase2 = tmp_path / "ldm" / "2026-01-02" / "10-00-00"
    runs.adopt_first_stage(source, phase2)
    runs.adopt_first_stage(source, phase2)  # a resumed run: the same VAE, nothing to do
    record = runs.first_stage_record(source)
    assert record == {"path": "first_stage/autoencoder.safetensors", "sha256": runs.file_sha256(source),
                      "copied_from": str(source.resolve())}
    ckpt = phase2 / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    moved = tmp_path / "elsewhere"
    shutil.move(phase2, moved)
    shutil.rmtree(phase1)
    found = runs.first_stage_path({"first_stage": record}, moved / "checkpoints" / "last.ckpt")
    assert found == moved / "first_stage" / "autoencoder.safetensors"
    assert load_first_stage(str(found)).latent_norm.scale.tolist() == LATENT_SCALE
    # A lone .ckpt with first_stage/ next to it also works; one without names what is missing.
    (tmp_path / "lone").mkdir()
    shutil.copytree(moved / "first_stage", tmp_path / "lone" / "first_stage")
    assert runs.first_stage_path({"first_stage": record}, tmp_path / "lone" / "x.ckpt").is_file()
    with pytest.raises(FileNotFoundError, match="Copy the run directory whole"):
        runs.first_stage_path({"first_stage": record}, tmp_path / "x.ckpt")


def test_another_vae_under_the_recorded_name_is_refused(tmp_path):
    phase1 = phase1_run(tmp_path / "autoencoder", "2026-01-01/10-00-00", None)
    source = phase1 / "export" / "autoencoder.safetensors"
    phase2 = tmp_path / "ldm"
    runs.adopt_first_stage(source, phase2)
    record = runs.first_stage_record(source)
    other = phase1_run(tmp_path / "other", "2026-01-01/10-00-00", None)
    vae = tiny_vae()
    vae.latent_norm.scale.fill_(3.0)
    export_autoencoder(vae, other)
    (phase2 / "first_stage" / "autoencoder.safetensors").unlink()
    shutil.copy(other / "export" / "autoencoder.safetensors", phase2 / "first_stage" / "autoencoder.safetensors")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        runs.first_stage_path({"first_stage": record}, phase2 / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="started on another VAE"):  # resuming on another first stage
        runs.adopt_first_stage(source, phase2)


def test_checkpoints_of_before_keep_loading_by_absolute_path(tmp_path):
    source = phase1_run(tmp_path, "2026-01-01/10-00-00", None) / "export" / "autoencoder.safetensors"
    assert runs.first_stage_path({"first_stage_source": str(source)}, tmp_path / "x.ckpt") == source
    diffusers_folder = tmp_path / "vae"  # not an export: recorded as given, not copied
    diffusers_folder.mkdir()
    assert runs.first_stage_record(diffusers_folder) == {"path": str(diffusers_folder), "sha256": None,
                                                         "copied_from": None}
