"""The phase-1 module's optimisation set-up: the LR scheduler its config builds (none for a constant LR),
resuming a checkpoint written with the identity scheduler that a constant LR used to build, and one encoder and
one decoder pass per step for both optimizers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.losses import AutoencoderLoss
from ldm_train.autoencoder.patchgan import NLayerDiscriminator
from ldm_train.lit.autoencoder import AutoencoderModule
from tests.helpers import ForwardCalls, compose_config

RESOLUTION = 16
MAX_STEPS = 10


def make_module(overrides: list[str], root) -> AutoencoderModule:
    """A tiny autoencoder (no perceptual loss) with the optimizers and schedule of phase 1's composed config."""
    module_cfg = compose_config(["stage=autoencoder", *overrides], root).module
    autoencoder = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, resolution=RESOLUTION,
                                norm_groups=4)
    loss = AutoencoderLoss(NLayerDiscriminator(ndf=8, n_layers=1), perceptual=None, perceptual_weight=0.0,
                           disc_start=1)
    return AutoencoderModule(autoencoder, loss, optimizer=instantiate(module_cfg.optimizer),
                             disc_optimizer=instantiate(module_cfg.disc_optimizer),
                             lr_scheduler=instantiate(module_cfg.lr_scheduler), latent_scale_batches=1)


def make_trainer(root, max_steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=-1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=root)


def test_default_optim_builds_no_lr_scheduler(tmp_path):
    module = make_module([], tmp_path)
    module.trainer = make_trainer(tmp_path, MAX_STEPS)
    optimizers = module.configure_optimizers()
    assert [type(o) for o in optimizers] == [torch.optim.Adam, torch.optim.Adam]  # no scheduler list


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_builds_a_scheduler_on_the_autoencoder_optimizer(schedule, tmp_path):
    module = make_module(["optim.warmup_steps=4", f"optim.schedule={schedule}"], tmp_path)
    module.trainer = make_trainer(tmp_path, MAX_STEPS)
    (opt_ae, opt_d), (config,) = module.configure_optimizers()
    assert config["scheduler"].optimizer is opt_ae and config["interval"] == "step"
    assert opt_ae.param_groups[0]["lr"] == pytest.approx(4.5e-4 / 4)  # warm-up step 0: lr·1/4
    assert opt_d.param_groups[0]["lr"] == pytest.approx(4.5e-4)


def identity_scheduler(optimizer, total_steps: int) -> LambdaLR:
    """What `warmup_constant(warmup_steps=0)` built before it returned None: a factor of 1 at every step."""
    return LambdaLR(optimizer, lambda step: 1.0)


def test_a_checkpoint_with_the_old_identity_scheduler_resumes(tmp_path):
    images = [{"image": torch.rand(3, RESOLUTION, RESOLUTION) * 2 - 1} for _ in range(8)]
    old = make_module([], tmp_path)
    old.lr_scheduler_factory = identity_scheduler
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(old, DataLoader(images, batch_size=4))
    ckpt = tmp_path / "old.ckpt"
    trainer.save_checkpoint(ckpt)
    assert len(torch.load(ckpt, weights_only=False)["lr_schedulers"]) == 1

    new = make_module([], tmp_path)
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.fit(new, DataLoader(images, batch_size=4), ckpt_path=ckpt)
    assert trainer.global_step == 4 and new.lr_schedulers() is None
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == pytest.approx([4.5e-4, 4.5e-4])


def test_a_step_runs_the_encoder_and_decoder_once_for_both_optimizers(tmp_path):
    """Step 0 trains the autoencoder alone, step 1 (disc_start=1) both: still one encoder and one decoder pass;
    the discriminator sees the reconstruction once for the generator loss, then real and detached fake once each."""
    module = make_module([], tmp_path)
    calls = ForwardCalls(encoder=module.autoencoder.encoder, decoder=module.autoencoder.decoder,
                         discriminator=module.loss.discriminator)  # fmt: skip
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.callbacks.append(calls)
    trainer.fit(module, DataLoader([{"image": torch.rand(3, RESOLUTION, RESOLUTION) * 2 - 1} for _ in range(8)],
                                   batch_size=4))  # fmt: skip
    assert calls.per_batch == [{"encoder": 1, "decoder": 1, "discriminator": 0},
                               {"encoder": 1, "decoder": 1, "discriminator": 3}]  # fmt: skip
