"""Fault tolerance: non-finite steps are skipped and counted in both phases and a diverged run stops
with its good checkpoints; SIGTERM/SIGUSR1 save exactly where training stopped; random states travel
with checkpoints; a checkpoint write killed with SIGKILL never leaves a truncated file."""

from __future__ import annotations

import copy
import functools
import io
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.losses import AutoencoderLoss
from ldm_train.autoencoder.patchgan import NLayerDiscriminator
from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.lit.autoencoder import AutoencoderModule
from ldm_train.lit.checkpoints import AtomicCheckpointIO, LastCheckpoint
from ldm_train.lit.fault_tolerance import NonFiniteGuard, NonFiniteLossError, RandomStateCheckpoint
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.runs import LAST_CKPT_NAME as LAST
from ldm_train.unet import UNet
from tests.helpers import REPO, compose_config

NAN = float("nan")


class SingleProcess:
    """The one thing NonFiniteGuard needs from a strategy: `reduce` (identity on one process)."""

    @staticmethod
    def reduce(tensor, reduce_op="sum"):
        return tensor


# -- NonFiniteGuard on its own ---------------------------------------------------------------------
def test_guard_skips_a_nonfinite_step_without_touching_weights_or_moments():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    guard = NonFiniteGuard(max_consecutive=2)

    def step(value: float) -> bool:
        loss = net(torch.full((2, 4), value)).pow(2).mean()
        guard.observe(loss)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
        finite = guard.check([optimizer], [norm], SingleProcess)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return finite

    assert step(1.0)
    weights, moments = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert not step(NAN)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items()), "a skipped step changed weights"
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) and a["step"] == b["step"]
               for a, b in zip(moments["state"].values(), optimizer.state_dict()["state"].values()))
    assert (int(guard.skipped), int(guard.consecutive)) == (1, 1)
    assert step(1.0) and (int(guard.skipped), int(guard.consecutive)) == (1, 0), "a good step resets the streak"
    assert not step(NAN)
    with pytest.raises(NonFiniteLossError, match="2 optimizer steps in a row"):
        step(float("inf"))
    assert int(guard.skipped) == 3 and set(guard.state_dict()) == {"skipped", "consecutive"}


# -- both LightningModules in a Trainer -----------------------------------------------------------------
class Snapshots(L.Callback):
    """A copy of the named parameters after every training batch."""

    def __init__(self, *prefixes: str) -> None:
        self.prefixes, self.after_step = prefixes, []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after_step.append({k: v.detach().clone() for k, v in pl_module.named_parameters()
                                if k.startswith(self.prefixes)})


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def fit_until_diverged(module, batches, tmp_path, snapshots) -> dict:
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        plugins=[AtomicCheckpointIO()], callbacks=[LastCheckpoint(str(tmp_path), every_n_steps=1), snapshots])
    with pytest.raises(NonFiniteLossError, match="training has diverged"):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return torch.load(tmp_path / LAST, map_location="cpu", weights_only=False)


def images(value: float | None = None) -> torch.Tensor:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    return x if value is None else torch.full_like(x, value)


def test_phase2_skips_nonfinite_steps_and_stops_keeping_good_checkpoints(tmp_path):
    torch.manual_seed(0)
    write_tiny_clip(tmp_path / "clip")
    unet = UNet(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_levels=(1,), num_heads=4, norm_groups=8, context_dim=32)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4)
    module = LatentDiffusionModule(unet, vae, CLIPTextEncoder(pretrained=str(tmp_path / "clip")),
                                   DiffusionObjective(NoiseSchedule.scaled_linear()),
                                   optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), ema_decay=0.99,
                                   max_nonfinite_steps=3)
    pattern = [None, None, NAN, None, NAN, NAN, NAN, None]  # steps 1..8; the third NaN in a row stops it
    batches = [{"image": images(v), "caption": ["a photo of a bag"] * 2} for v in pattern]
    snapshots = Snapshots("unet.")
    ckpt = fit_until_diverged(module, batches, tmp_path, snapshots)

    after = snapshots.after_step  # steps 1..6 finished (step 7 raised)
    assert len(after) == 6
    assert not same(after[0], after[1]) and same(after[1], after[2]), "NaN step 3 must not move the UNet"
    assert not same(after[2], after[3]) and same(after[3], after[4]) and same(after[4], after[5])
    assert int(module.nonfinite.skipped) == 4 and int(module.ema.num_updates) == 3, "EMA skips bad steps too"
    assert ckpt["global_step"] == 6, "skipped steps count as steps"
    saved = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")}
    assert same(after[5], saved) and all(torch.isfinite(v).all() for v in saved.values())
    assert int(ckpt["state_dict"]["nonfinite.skipped"]) == 3


def test_phase1_skips_both_optimizers_on_a_nonfinite_step(tmp_path):
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4)
    loss = AutoencoderLoss(NLayerDiscriminator(ndf=8, n_layers=2, norm="none"), perceptual=None,
                           perceptual_weight=0.0, disc_start=0)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9))
    module = AutoencoderModule(autoencoder, loss, optimizer=adam, disc_optimizer=adam, max_nonfinite_steps=2)
    batches = [{"image": images(v)} for v in (None, NAN, None, NAN, NAN, None)]
    snapshots = Snapshots("autoencoder.", "loss.discriminator.", "loss.logvar")
    ckpt = fit_until_diverged(module, batches, tmp_path, snapshots)

    after = snapshots.after_step  # steps 1..4 finished (step 5 raised)
    assert len(after) == 4
    assert same(after[0], after[1]) and same(after[2], after[3]), "a NaN step moved the autoencoder or D"
    assert not same(after[1], after[2])
    assert ckpt["global_step"] == 4 and int(ckpt["state_dict"]["nonfinite.skipped"]) == 2


# -- preemption -------------------------------------------------------------------------------------
class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalAt(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_the_step_where_training_stopped(tmp_path, signum):
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(20)]
    trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[LastCheckpoint(str(tmp_path), every_n_steps=100), SignalAt(7, signum)])
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException: the process exits, unfinished
        trainer.fit(Regression(), DataLoader(data, batch_size=None))
    assert torch.load(tmp_path / LAST, weights_only=False)["global_step"] == 7
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "the SIGUSR1 handler must be removed after fit"


# -- random states ------------------------------------------------------------------------------------
def draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_random_states_come_back_on_resume_and_validation_does_not_move_them():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    buffer = io.BytesIO()
    torch.save(RandomStateCheckpoint().state_dict(), buffer)
    expected = draws()
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # as Lightning loads checkpoints

    torch.manual_seed(1), random.seed(1), np.random.seed(1)  # a restarted process, freshly seeded
    restored = RandomStateCheckpoint()
    restored.load_state_dict(saved)
    restored.on_train_start(SimpleNamespace(world_size=1, global_rank=0), None)
    assert draws() == expected

    restored.load_state_dict(saved)
    restored.on_train_start(SimpleNamespace(world_size=1, global_rank=0), None)
    restored.on_validation_start(None, None)
    draws(), draws()  # validation's own randomness
    restored.on_validation_end(None, None)
    assert draws() == expected, "validation shifted the training random stream"


# -- atomic checkpoint files -----------------------------------------------------------------------------
SAVE_FOREVER = """
import sys, torch
from ldm_train.lit.checkpoints import AtomicCheckpointIO
io, weights, version = AtomicCheckpointIO(), torch.zeros(%d), 0
while True:
    version += 1
    io.save_checkpoint({"version": version, "weights": weights.fill_(version)}, sys.argv[1])
    print(version, flush=True)
"""
NUMEL = 16 * 2**20  # 64 MB: a write takes a good fraction of a second


@pytest.mark.slow  # a subprocess
def test_sigkill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_complete_file(tmp_path):
    target = tmp_path / "checkpoints" / LAST
    child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER % NUMEL, str(target)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "1", "the first save did not complete"
        deadline = time.monotonic() + 60
        while not list(target.parent.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.002)  # wait until the next save is being written...
        child.send_signal(signal.SIGKILL)  # ...and kill it mid-write
    finally:
        child.kill()
        child.wait()
    assert list(target.parent.glob(".last.ckpt.*.tmp")), "the kill did not land during a write"
    ckpt = torch.load(target, weights_only=False)  # the previous save, complete: loads, every element there
    assert ckpt["version"] >= 1 and ckpt["weights"].numel() == NUMEL
    assert bool((ckpt["weights"] == ckpt["version"]).all())
    AtomicCheckpointIO().save_checkpoint({"version": 0}, target)
    assert not list(target.parent.glob(".last.ckpt.*.tmp")), "the killed write's temp file must be cleaned up"


class RecordingIO(AtomicCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.saved.append(str(path))
        super().save_checkpoint(checkpoint, path, storage_options)


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_cpu"])
def test_the_trainer_configs_write_checkpoints_atomically(option, tmp_path):
    cfg = compose_config([f"trainer={option}"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_fsdp_full_checkpoints_go_through_the_checkpoint_io(tmp_path):
    # Building an FSDP Trainer needs a GPU; its save path is what matters: rank 0, through checkpoint_io.
    fsdp = FSDPStrategy(state_dict_type="full")
    fsdp.checkpoint_io = RecordingIO()
    fsdp.save_checkpoint({"x": torch.ones(2)}, tmp_path / LAST)
    assert fsdp.checkpoint_io.saved == [str(tmp_path / LAST)]
