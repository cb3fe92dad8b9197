"""Tiny end-to-end runs of the real entry point on real Fashion-MNIST: phase 1 → export → phase 2
on that export → scripts/sample.py. Each run goes through `python train.py` as a user's would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldm_train.conditioning import write_tiny_clip
from ldm_train.evaluate_cli import main as evaluate_main
from ldm_train.runs import file_sha256
from tests.helpers import REPO, read_metrics, run_dirs, run_train, series

pytestmark = pytest.mark.slow
STEPS = 60
# The in-loop evaluation at tiny N (real Inception, classifier and test images): 16 held-out images in
# phase 1, one sample per class prompt against 10 reference images in phase 2.
EVAL_PHASE1 = ["evaluation=fashion_mnist_autoencoder", "evaluation.evaluator.reference.n=16",
               "evaluation.evaluator.batch_size=16"]
EVAL_PHASE2 = ["evaluation=fashion_mnist_ldm", "evaluation.evaluator.per_prompt=1", "evaluation.evaluator.reference.n=10"]
DATA = ["trainer.log_every_n_steps=5", "data.max_train_samples=512", "data.max_val_samples=128", "data.num_workers=0", "data.batch_size=16"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def phase1(root: Path) -> Path:
    result = run_train(
        ["stage=autoencoder", "autoencoder=tiny", "perceptual=lpips_alex", "discriminator.ndf=8",
         "discriminator.n_layers=2", "module.loss.disc_start=40", "optim.lr=2e-3", f"trainer.max_steps={STEPS}",
         "trainer.val_check_interval=30", "trainer.limit_val_batches=2", "callbacks.images.every_n_steps=30",
         "module.latent_scale_batches=2", *DATA, *EVAL_PHASE1],
        root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(root, "autoencoder")
    return run


def test_phase1_lowers_reconstruction_loss_and_counts_steps_right(phase1: Path):
    rows = read_metrics(phase1)
    rec = series(rows, "train/rec")
    assert mean(rec[-3:]) < 0.8 * mean(rec[:3]), rec
    steps = [int(r["step"]) for r in rows if r.get("train/rec")]
    # global_step counts autoencoder steps only, although the discriminator also steps from 40 on.
    assert max(steps) == STEPS - 1
    d_steps = [int(r["step"]) for r in rows if r.get("train/d_loss")]
    assert d_steps and min(d_steps) >= 40, "the discriminator must not run before disc_start"
    assert series(rows, "val/rec_loss")
    # The evaluation callback: after step 30 and at the end, with N in the FID key.
    evaluated = [int(r["step"]) for r in rows if r.get("val/psnr")]
    assert evaluated == [30, STEPS], evaluated
    assert len(series(rows, "val/ssim")) == len(series(rows, "val/lpips_vgg")) == len(series(rows, "val/rfid@16")) == 2
    assert 10 < series(rows, "val/psnr")[-1] < 40
    summary = json.loads((phase1 / "run_summary.json").read_text())
    assert summary["step"] == STEPS and summary["images"] == STEPS * 16 and summary["peak_rss_mib"] > 100


def test_phase1_evaluate_script_matches_the_in_loop_evaluation(phase1: Path, tmp_path: Path):
    """One code path: the offline script scores the exported EMA weights exactly as the callback did."""
    in_loop = json.loads((phase1 / "evaluation" / f"step{STEPS:07d}.json").read_text())
    out = evaluate_main([f"ckpt={phase1}", "n=16", f"out_dir={tmp_path}"])
    offline = json.loads((out / "evaluation.json").read_text())
    assert offline["metrics"].keys() == in_loop["metrics"].keys()
    for name, value in in_loop["metrics"].items():
        assert offline["metrics"][name] == pytest.approx(value, rel=1e-4), name
    assert offline["stage"] == "autoencoder" and (out / "grid.png").is_file()


def test_phase1_exports_weights_with_latent_scale(phase1: Path):
    meta = json.loads((phase1 / "export" / "autoencoder.json").read_text())
    state = load_file(phase1 / "export" / "autoencoder.safetensors")
    assert torch.allclose(state["latent_norm.scale"], torch.tensor(meta["latent_scale"]))
    assert not torch.allclose(state["latent_norm.scale"], torch.ones(4)), "latent scale was never estimated"
    assert (phase1 / "checkpoints" / "last.ckpt").is_file() and (phase1 / "FINISHED").is_file()
    # Tensors and plain data only, so the safe `weights_only=True` loading works.
    ckpt = torch.load(phase1 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("loss.perceptual.") for k in ckpt["state_dict"]), "frozen LPIPS saved"
    assert ckpt["hyper_parameters"]["config"]["stage_name"] == "autoencoder"
    assert sorted(p.name for p in (phase1 / "images").glob("reconstructions_*.png"))


def test_wandb_offline_run_holds_metrics_and_images(phase1: Path):
    (run_dir,) = (phase1 / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")  # offline runs keep their history in this record file
    data = records.read_bytes()
    assert b"train/rec" in data and b"val/psnr" in data and b"trainer/global_step" in data
    assert list((run_dir / "files" / "media" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def phase2(root: Path, phase1: Path) -> Path:
    write_tiny_clip(root / "data" / "clip_tiny")
    result = run_train(
        ["stage=ldm", "text_encoder=clip_tiny", "unet=tiny", "optim.lr=1e-3", "optim.warmup_steps=5",
         "module.ema_decay=0.9", "module.sampler.num_steps=3", f"trainer.max_steps={STEPS}",
         "trainer.val_check_interval=30", "trainer.limit_val_batches=1", "callbacks.images.every_n_steps=30", *DATA,
         *EVAL_PHASE2],
        root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(root, "ldm")
    return run


def test_phase2_lowers_loss_on_the_phase1_export(phase2: Path, phase1: Path):
    rows = read_metrics(phase2)
    loss = series(rows, "train/loss")
    assert mean(loss[-3:]) < 0.7 * mean(loss[:3]), loss
    assert series(rows, "val/loss") and series(rows, "train/grad_norm") and series(rows, "train/ema_decay")
    ckpt = torch.load(phase2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("ema.shadow.") for k in keys) and any(k.startswith("unet.") for k in keys)
    # The EMA is updated with each optimizer step, before any callback saves: the final checkpoint
    # holds all STEPS updates (it held STEPS - 1 when the update ran after the callbacks' hooks).
    assert int(ckpt["state_dict"]["ema.num_updates"]) == STEPS
    assert not any(k.startswith(("first_stage.", "text_encoder.")) for k in keys), "frozen parts saved"
    # The VAE by content and by a path inside the run: the run's own copy of the phase-1 export.
    export = phase1 / "export" / "autoencoder.safetensors"
    assert ckpt["first_stage"] == {"path": "first_stage/autoencoder.safetensors", "sha256": file_sha256(export),
                                   "copied_from": str(export)}
    assert (phase2 / "first_stage" / "autoencoder.safetensors").read_bytes() == export.read_bytes()
    assert list((phase2 / "images").glob("samples_*.png"))


def test_phase2_evaluation_in_loop_and_offline_agree(phase2: Path, tmp_path: Path):
    rows = read_metrics(phase2)
    fid = [(int(r["step"]), float(r["val/fid@10"])) for r in rows if r.get("val/fid@10")]
    assert [step for step, _ in fid] == [30, STEPS] and all(value > 0 for _, value in fid)
    assert len(series(rows, "val/class_accuracy")) == 2 and series(rows, "val/class_accuracy/sneaker")
    in_loop = json.loads((phase2 / "evaluation" / f"step{STEPS:07d}.json").read_text())
    assert in_loop["reference"] == "fashion_mnist test[:10] @32px" and in_loop["work_per_rank"] == [10]
    assert (phase2 / "evaluation" / f"step{STEPS:07d}_grid.png").is_file()
    # The script on the final checkpoint, with the run's sampler settings and seeds: the same numbers.
    out = evaluate_main([f"ckpt={phase2}", "n=10", "reference_n=10", "steps=3", "guidance=3.0", f"out_dir={tmp_path}"])
    offline = json.loads((out / "evaluation.json").read_text())
    assert offline["step"] == STEPS
    for name, value in in_loop["metrics"].items():
        assert offline["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    manifest = [json.loads(line) for line in (out / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in manifest] == list(range(10)) and manifest[7]["prompt"] == "a photo of a sneaker"
    assert (out / "grid.png").is_file() and (out / "samples" / "00009.png").is_file()


def _sample(args: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "sample.py"), *args], cwd=root,
                          capture_output=True, text=True, timeout=300)


def test_sample_script_writes_manifest_and_is_batch_size_invariant(phase2: Path, root: Path):
    common = [f"ckpt={phase2}", "prompt=a photo of a bag", "n_per_prompt=3", "steps=4", "seed=7", "guidance=2.0"]
    first = _sample([*common, f"out_dir={root / 's1'}"], root)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [json.loads(x) for x in (root / "s1" / "manifest.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in lines] == [7, 8, 9]
    assert {x["prompt"] for x in lines} == {"a photo of a bag"}
    assert all(x["sampler"] == "dpmpp_2m" and x["steps"] == 4 and x["guidance"] == 2.0 for x in lines)
    assert (root / "s1" / "grid.png").is_file()
    second = _sample([*common, "batch_size=1", f"out_dir={root / 's2'}"], root)
    assert second.returncode == 0, second.stderr[-3000:]
    for line in lines:
        a = np.asarray(Image.open(root / "s1" / line["file"]), dtype=np.int16)
        b = np.asarray(Image.open(root / "s2" / line["file"]), dtype=np.int16)
        # Same seed, same image: batched and single convolutions round differently in the last
        # float bits, which can move a pixel across an 8-bit rounding boundary, never further.
        diff = np.abs(a - b)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, f"{line['file']} changed with the batch size"


def test_a_moved_phase2_run_samples_without_the_phase1_run(phase2: Path, phase1: Path, root: Path):
    """A run directory is self-contained: moved elsewhere, with its phase-1 run gone, it still samples (through
    the `ldm-sample` console script, which exits 0)."""
    moved = root / "elsewhere" / "my-model"
    shutil.copytree(phase2, moved)
    hidden = phase1.with_name(phase1.name + ".hidden")
    phase1.rename(hidden)  # no VAE at the path the training read it from
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "ldm-sample"), f"ckpt={moved}", "prompt=a photo of a bag",
                                 "n_per_prompt=2", "steps=3", f"out_dir={root / 'moved_samples'}"], cwd=root,
                                capture_output=True, text=True, timeout=300)
    finally:
        hidden.rename(phase1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"First stage: {moved / 'first_stage' / 'autoencoder.safetensors'}" in result.stderr
    assert (root / "moved_samples" / "00001.png").is_file()


def test_sample_script_rejects_misspelt_key(phase2: Path, root: Path):
    result = _sample([f"ckpt={phase2}", "prompt=x", "n_per_promt=2"], root)
    assert result.returncode != 0 and "n_per_promt" in result.stderr


@pytest.mark.parametrize("stage", ["autoencoder", "ldm"])
def test_debug_fast_dev_run_runs_one_batch_without_logging(stage: str, phase1: Path, tmp_path: Path):
    args = [f"stage={stage}", "debug=fast_dev_run", *DATA]
    if stage == "autoencoder":
        args += ["autoencoder=tiny", "perceptual=lpips_alex", "discriminator.ndf=8"]
    else:
        args += ["text_encoder=minilm", "unet=tiny", f"first_stage.ckpt={phase1}", "module.sampler.num_steps=2"]
    result = run_train(args, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path, stage)
    assert not (run / "csv").exists() and not (run / "wandb").exists()
