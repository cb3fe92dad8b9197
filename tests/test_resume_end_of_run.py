"""A run killed (SIGKILL) at any moment and resumed with the same command ends with the files of a run
that was never stopped (deterministic=true):
- killed right after a checkpoint, metrics.csv keeps every row; an interrupted write's temporary
  file is removed;
- killed right after its final checkpoint, the resumed run still writes the export, latent scale,
  final images, metrics, run summary and FINISHED marker (phase 1 and phase 2);
- killed mid-run, phase 2 resumes to the same UNet, EMA weights, EMA update count, optimizer and
  LR schedule (phase 1 killed mid-run: tests/test_resume.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder
from ldm_train.conditioning import write_tiny_clip
from ldm_train.files import TEMP_GLOB
from ldm_train.lit.checkpoints import AtomicCheckpointIO, LastCheckpoint
from ldm_train.lit.fault_tolerance import finish_when_restored_complete
from ldm_train.resume import prepare_run
from ldm_train.runs import FINISHED_MARKER
from tests.helpers import read_metrics, run_dirs, run_train, series
from tests.lit.test_fault_tolerance import Regression
from tests.test_resume import final_state

BATCHES_PER_EPOCH = 5
COMMON = ["trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
          "callbacks.last.every_n_steps=2", "callbacks.images.every_n_steps=1000", "logger=csv", "deterministic=true",
          "data.num_workers=0", "data.batch_size=16", f"data.max_train_samples={16 * BATCHES_PER_EPOCH}",
          "data.max_val_samples=16"]
# Phase 1 ends with its first epoch (a restored loader then stands at the next epoch), phase 2 one
# batch into its second; final validations at both ends.
PHASE1_STEPS, PHASE2_STEPS = BATCHES_PER_EPOCH, BATCHES_PER_EPOCH + 1
PHASE1 = ["stage=autoencoder", "autoencoder=tiny", "module.loss.perceptual=null", "module.loss.perceptual_weight=0",
          "discriminator.ndf=8", "discriminator.n_layers=2", "module.loss.disc_start=3",
          "module.latent_scale_batches=2", "module.ema_decay=0.9", "trainer.val_check_interval=5",
          f"trainer.max_steps={PHASE1_STEPS}", *COMMON]
PHASE2 = ["stage=ldm", "text_encoder=clip_tiny", "unet=tiny", "optim.warmup_steps=1", "module.ema_decay=0.9",
          "module.sampler.num_steps=2", "module.sample_prompts=[a photo of a bag]", "trainer.val_check_interval=3",
          f"trainer.max_steps={PHASE2_STEPS}", *COMMON]
KILL = "+callbacks.kill._target_=tests.faults.KillAfterCheckpoint"  # right after the final checkpoint
END_OF_RUN = ["export/autoencoder.safetensors", "export/autoencoder.json"]  # phase 1's, besides images


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One root for every run below: the data are prepared once; the commands differ, so
    `resume=auto` continues only the run started with the same one."""
    root = tmp_path_factory.mktemp("end_of_run")
    write_tiny_clip(root / "data" / "clip_tiny")
    return root


def train(args: list[str], root: Path, stage: str, expect_kill: bool = False) -> Path:
    before = set(run_dirs(root, stage))
    result = run_train(args, root)
    if expect_kill:
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    (run,) = set(run_dirs(root, stage)) - before
    return run


def killed_after_final_checkpoint_then_resumed(args: list[str], root: Path, stage: str, steps: int) -> Path:
    killed = train([*args, KILL], root, stage, expect_kill=True)
    assert final_state(killed)["global_step"] == steps, "the kill came before the final checkpoint"
    assert not (killed / FINISHED_MARKER).exists() and not list((killed / "images").glob("*"))
    assert not (killed / "run_summary.json").exists()
    (killed / "checkpoints" / ".last.ckpt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as a killed write leaves
    resumed = run_train([*args, KILL], root)  # the same command: resume=auto continues the killed run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "running the end-of-training work only" in (killed / "train.log").read_text()
    return killed


def files_of(run: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob(pattern)) if p.is_file()}


def assert_same_end(run: Path, reference: Path, steps: int, extra: list[str], losses: tuple[str, str]) -> None:
    assert (run / FINISHED_MARKER).exists() and (reference / FINISHED_MARKER).exists()
    assert files_of(run, "images/*") == files_of(reference, "images/*") != {}, "final images differ or are missing"
    for name in extra:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    rows, reference_rows = read_metrics(run), read_metrics(reference)
    assert [int(r["step"]) for r in rows] == [int(r["step"]) for r in reference_rows]
    for key in losses:
        assert series(rows, key) == series(reference_rows, key) != [], key
    summary = (run / "run_summary.json").read_text()
    assert f'"step": {steps}' in summary
    assert not list(run.rglob(TEMP_GLOB)), "a temporary file was left behind"
    expected, got = final_state(reference)["state_dict"], final_state(run)["state_dict"]
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def phase1_reference(root: Path) -> Path:
    return train(PHASE1, root, "autoencoder")


@pytest.mark.slow
def test_phase1_killed_after_its_final_checkpoint_resumes_to_the_same_export(root, phase1_reference):
    run = killed_after_final_checkpoint_then_resumed(PHASE1, root, "autoencoder", PHASE1_STEPS)
    assert_same_end(run, phase1_reference, PHASE1_STEPS, END_OF_RUN, ("train/rec", "val/rec_loss"))
    scale = load_file(run / "export" / "autoencoder.safetensors")["latent_norm.scale"]
    assert not torch.equal(scale, torch.ones_like(scale)), "the latent scale was not estimated"


@pytest.mark.slow
def test_phase1_killed_right_after_a_checkpoint_keeps_every_metrics_row(root, phase1_reference):
    # The checkpoint of step 2 holds two steps; their rows (steps 0 and 1) must be in metrics.csv when
    # it appears, since the resumed run starts with step 3 (row 2). assert_same_end compares the rows.
    args = [*PHASE1, KILL, "+callbacks.kill.step=2"]
    killed = train(args, root, "autoencoder", expect_kill=True)
    assert final_state(killed)["global_step"] == 2
    assert [int(r["step"]) for r in read_metrics(killed) if r.get("train/rec")] == [0, 1]
    resumed = run_train(args, root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end(killed, phase1_reference, PHASE1_STEPS, END_OF_RUN, ("train/rec", "val/rec_loss"))


def test_a_run_removes_the_temporary_files_a_killed_process_left(tmp_path):
    stale = [tmp_path / "checkpoints" / ".last.ckpt.pending.tmp", tmp_path / "csv" / ".metrics.csv.abc123.tmp",
             tmp_path / "export" / ".autoencoder.safetensors.q9.tmp"]
    kept = [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "notes.tmp"]  # not a temporary name of ours
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    prepare_run(OmegaConf.create({"paths": {"output_dir": str(tmp_path)}}))
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)


class Hooks(L.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.calls.append("start")

    def on_train_batch_end(self, trainer, *args) -> None:
        self.calls.append("step")

    def on_train_end(self, trainer, pl_module) -> None:
        self.calls.append("end")


@pytest.mark.parametrize("finishing", [True, False])
def test_a_run_restored_at_its_end_runs_the_end_of_training_hooks(tmp_path, finishing):
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]

    def fit(ckpt_path: str | None) -> list[str]:
        hooks = Hooks()
        trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                            callbacks=[LastCheckpoint(str(tmp_path), every_n_steps=2), hooks])
        if finishing:
            finish_when_restored_complete(trainer)
        trainer.fit(Regression(), DataLoader(data, batch_size=None), ckpt_path=ckpt_path)
        return hooks.calls

    assert fit(None) == ["start", *["step"] * 4, "end"]
    # Lightning's own loop, restored at max_steps, calls neither hook: the end of the run never happens.
    assert fit(str(tmp_path / "last.ckpt")) == (["start", "end"] if finishing else [])


@pytest.fixture(scope="module")
def first_stage(root: Path, tmp_path_factory) -> str:
    """A phase-1 export for phase 2 (random weights: phase 2's resume does not depend on their quality)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4)
    return str(export_autoencoder(vae, tmp_path_factory.mktemp("vae")))


@pytest.fixture(scope="module")
def phase2_args(first_stage: str) -> list[str]:
    return [*PHASE2, f"first_stage.ckpt={first_stage}"]


@pytest.fixture(scope="module")
def phase2_reference(root: Path, phase2_args: list[str]) -> Path:
    return train(phase2_args, root, "ldm")


@pytest.mark.slow
def test_phase2_killed_after_its_final_checkpoint_resumes_to_the_same_end(root, phase2_args, phase2_reference):
    run = killed_after_final_checkpoint_then_resumed(phase2_args, root, "ldm", PHASE2_STEPS)
    assert_same_end(run, phase2_reference, PHASE2_STEPS, [], ("train/loss", "val/loss"))


@pytest.mark.slow
def test_phase2_killed_mid_run_resumes_to_the_same_unet_ema_and_ema_count(root, phase2_args, phase2_reference):
    # Killed at step 5: the checkpoint of step 4 is the latest; steps 5 and 6 are trained again.
    args = [*phase2_args, "+callbacks.kill._target_=tests.faults.KillAtStep", "+callbacks.kill.step=5"]
    killed = train(args, root, "ldm", expect_kill=True)
    assert final_state(killed)["global_step"] == 4
    resumed = run_train(args, root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = final_state(phase2_reference), final_state(killed)
    assert got["global_step"] == expected["global_step"] == PHASE2_STEPS
    assert int(got["state_dict"]["ema.num_updates"]) == int(expected["state_dict"]["ema.num_updates"]) == PHASE2_STEPS
    for prefix in ("unet.", "ema."):  # the trained UNet and the EMA weights used for samples and export
        keys = [k for k in expected["state_dict"] if k.startswith(prefix)]
        assert keys
        for key in keys:
            assert torch.equal(got["state_dict"][key], expected["state_dict"][key]), key
    for p, state in expected["optimizer_states"][0]["state"].items():
        assert torch.equal(got["optimizer_states"][0]["state"][p]["exp_avg_sq"], state["exp_avg_sq"])
    assert got["lr_schedulers"] == expected["lr_schedulers"] != []
    assert_same_end(killed, phase2_reference, PHASE2_STEPS, [], ("train/loss", "val/loss"))
