"""The phase-2 module's own logic: caption dropout, what is trained and saved, start-up checks, one VAE encode
and at most one text-encoder call per step."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.lit.lr_schedules import warmup_constant
from ldm_train.unet import UNet
from tests.helpers import ForwardCalls


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_tiny_clip(folder)
    return CLIPTextEncoder(pretrained=str(folder))


def make_module(text_encoder, in_channels: int = 4, cond_drop_prob: float = 0.1, lr_scheduler=None) -> LatentDiffusionModule:
    unet = UNet(in_channels=in_channels, out_channels=in_channels, model_channels=32, channel_mult=(1, 2),
                num_res_blocks=1, attention_levels=(1,), num_heads=4, norm_groups=8, context_dim=32)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4)
    return LatentDiffusionModule(unet, vae, text_encoder, DiffusionObjective(NoiseSchedule.scaled_linear()),
                                 optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                                 lr_scheduler=lr_scheduler, cond_drop_prob=cond_drop_prob, ema_decay=0.99)


def test_caption_dropout_rate_matches_config(text_encoder):
    module = make_module(text_encoder, cond_drop_prob=0.1)
    torch.manual_seed(0)
    dropped = module.drop_captions(["a photo of a bag"] * 20000)
    rate = sum(c == "" for c in dropped) / len(dropped)
    assert abs(rate - 0.1) < 0.01
    assert set(dropped) == {"", "a photo of a bag"}


def test_only_the_unet_is_optimised_and_saved(text_encoder):
    module = make_module(text_encoder)
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.unet.parameters()}
    state = module.state_dict()
    assert not any(k.startswith(("first_stage.", "text_encoder.")) for k in state)
    assert any(k.startswith("ema.shadow.") for k in state)
    fresh = make_module(text_encoder)
    fresh.load_state_dict(state, strict=True)  # frozen parts are filled from their own weights
    assert all(torch.equal(a, b) for a, b in zip(fresh.unet.parameters(), module.unet.parameters()))


def test_a_constant_lr_without_warmup_builds_no_scheduler(text_encoder):
    constant = make_module(text_encoder, lr_scheduler=functools.partial(warmup_constant, warmup_steps=0))
    constant.trainer = L.Trainer(accelerator="cpu", max_epochs=-1, max_steps=10, logger=False)  # the run's total steps
    assert isinstance(constant.configure_optimizers(), torch.optim.AdamW)  # the optimizer alone, no scheduler


def test_training_step_leaves_frozen_parts_unchanged(text_encoder):
    module = make_module(text_encoder)
    before = {k: v.clone() for k, v in module.text_encoder.model.state_dict().items()}
    vae_before = {k: v.clone() for k, v in module.first_stage.state_dict().items()}
    optimizer = module.configure_optimizers()
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "caption": ["a photo of a bag"] * 4}
    module.train()
    for _ in range(2):
        z, context = module.encode(batch)
        loss = module.objective.loss(module.unet, z, context)[0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, module.text_encoder.model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, module.first_stage.state_dict()[k]) for k, v in vae_before.items())
    assert not module.text_encoder.training and not module.first_stage.training


def test_mismatched_latent_channels_fail_at_start_up(text_encoder):
    with pytest.raises(ValueError, match="latent channels"):
        make_module(text_encoder, in_channels=3)


def test_duplicate_captions_are_encoded_once_with_the_same_result(text_encoder):
    module = make_module(text_encoder)
    captions = ["a photo of a bag", "", "a photo of a bag", "a photo of a coat", ""]
    calls = []
    handle = module.text_encoder.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    deduped = module.encode_text(captions)
    handle.remove()
    assert calls == [3]
    assert torch.allclose(deduped, module.text_encoder(captions), atol=1e-6)


def test_a_step_encodes_its_batch_once(text_encoder, tmp_path):
    """One VAE encoder pass and one UNet pass per step, no decoder; the text encoder runs once for a batch's new
    captions (repeats inside it encoded once) and not at all when all of them are cached."""
    module = make_module(text_encoder, cond_drop_prob=0.0)
    calls = ForwardCalls(vae_encoder=module.first_stage.encoder, vae_decoder=module.first_stage.decoder,
                         text_encoder=module.text_encoder, unet=module.unet)  # fmt: skip
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "caption": ["a bag", "a coat", "a bag", "a shirt"]}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, callbacks=[calls],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader([batch, batch], batch_size=None))
    assert calls.per_batch == [{"vae_encoder": 1, "vae_decoder": 0, "text_encoder": 1, "unet": 1},
                               {"vae_encoder": 1, "vae_decoder": 0, "text_encoder": 0, "unet": 1}]  # fmt: skip
