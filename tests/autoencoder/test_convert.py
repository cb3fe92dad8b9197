"""Weight conversion vs diffusers' AutoencoderKL (parity at 1e-5), SD-layout round trips, strict loading."""

import argparse
import json

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from ldm_train.autoencoder import AutoencoderKL, autoencoder_from_diffusers, load_autoencoder_init
from ldm_train.autoencoder.layouts import (
    from_diffusers_state_dict,
    from_sd_state_dict,
    kwargs_from_diffusers_config,
    to_diffusers_state_dict,
    to_sd_state_dict,
)

TOL = 1e-5
TINY_DIFFUSERS = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=16,
    scaling_factor=0.5,
)
WITH_LEVEL_ATTENTION = dict(
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
)
PLAIN = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def tiny_diffusers(**extra) -> DiffusersAutoencoderKL:
    torch.manual_seed(0)
    model = DiffusersAutoencoderKL(**{**TINY_DIFFUSERS, **extra}).eval()
    with torch.no_grad():  # GroupNorm affine params start at 1/0; randomise so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours_from(reference: DiffusersAutoencoderKL) -> AutoencoderKL:
    model = AutoencoderKL(**kwargs_from_diffusers_config(reference.config)).eval()
    state = from_diffusers_state_dict(reference.state_dict())
    model.load_state_dict(
        {**state, **{f"latent_norm.{k}": v for k, v in model.latent_norm.state_dict().items()}}
    )
    return model


def assert_same_outputs(ours: AutoencoderKL, ref: DiffusersAutoencoderKL) -> None:
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref_post = ref.encode(x).latent_dist
        post = ours.encode(x)
        torch.testing.assert_close(post.mean, ref_post.mean, atol=TOL, rtol=TOL)
        torch.testing.assert_close(post.logvar, ref_post.logvar, atol=TOL, rtol=TOL)
        z = torch.randn_like(post.mean)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("blocks", [WITH_LEVEL_ATTENTION, PLAIN, {**PLAIN, "mid_block_add_attention": False}])
def test_matches_diffusers_autoencoder(blocks):
    ref = tiny_diffusers(**blocks)
    assert_same_outputs(ours_from(ref), ref)


def test_config_translation():
    kwargs = kwargs_from_diffusers_config(tiny_diffusers(**WITH_LEVEL_ATTENTION).config)
    assert kwargs["ch"] == 32 and kwargs["ch_mult"] == [1, 2] and kwargs["num_res_blocks"] == 1
    assert kwargs["attn_resolutions"] == [8] and kwargs["mid_attention"] is True
    assert kwargs["scaling_factor"] == 0.5 and kwargs["shift_factor"] == 0.0
    per_channel = kwargs_from_diffusers_config(
        {**TINY_DIFFUSERS, **PLAIN, "latents_mean": [1, 2, 3, 4], "latents_std": [1, 2, 4, 5]}
    )
    assert per_channel["scaling_factor"] == [0.5, 0.25, 0.125, 0.1]
    assert per_channel["shift_factor"] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="mirror"):
        kwargs_from_diffusers_config(
            {**TINY_DIFFUSERS, **WITH_LEVEL_ATTENTION, "up_block_types": PLAIN["up_block_types"]}
        )


def test_deprecated_diffusers_attention_names_are_accepted():
    state = tiny_diffusers(**PLAIN).state_dict()
    old_names = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    renamed = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert from_diffusers_state_dict(renamed).keys() == from_diffusers_state_dict(state).keys()


def test_round_trips_are_exact():
    model = ours_from(tiny_diffusers(**WITH_LEVEL_ATTENTION))
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("latent_norm.")}
    for there, back in [
        (to_diffusers_state_dict, from_diffusers_state_dict),
        (to_sd_state_dict, from_sd_state_dict),
    ]:
        converted = back(there(model.state_dict()))
        assert converted.keys() == weights.keys()
        for key, value in weights.items():
            assert torch.equal(converted[key], value), key


def test_sd_layout_names_and_parity_through_diffusers_own_converter():
    ref = tiny_diffusers(**PLAIN)
    ours = ours_from(ref)
    sd = to_sd_state_dict(ours.state_dict())
    for key in [
        "encoder.down.0.block.0.norm1.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.1.block.1.conv2.bias",
        "decoder.up.1.upsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "quant_conv.weight",
    ]:
        assert key in sd, key
    assert "decoder.up.0.upsample.conv.weight" not in sd  # CompVis level 0 (full resolution) runs last
    assert sd["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # diffusers' own LDM->diffusers converter (used by from_single_file) is the independent reference.
    rebuilt = DiffusersAutoencoderKL(**ref.config).eval()
    rebuilt.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(ref.config)))
    assert_same_outputs(ours, rebuilt)


def test_load_diffusers_folder(tmp_path):
    ref = tiny_diffusers(**WITH_LEVEL_ATTENTION)
    ref.save_pretrained(tmp_path / "vae")
    model = AutoencoderKL(**{**kwargs_from_diffusers_config(ref.config), "scaling_factor": 1.0})
    load_autoencoder_init(model, tmp_path / "vae")
    assert_same_outputs(model.eval(), ref)
    torch.testing.assert_close(model.latent_norm.scale, torch.full((4,), 0.5))
    assert_same_outputs(autoencoder_from_diffusers(tmp_path / "vae").eval(), ref)


def test_load_sd_safetensors_and_wrapped_ckpt(tmp_path):
    source = ours_from(tiny_diffusers(**WITH_LEVEL_ATTENTION))
    kwargs = kwargs_from_diffusers_config(tiny_diffusers(**WITH_LEVEL_ATTENTION).config)
    sd = to_sd_state_dict(source.state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "vae.safetensors")
    # A full LDM/SD Lightning checkpoint: VAE under first_stage_model., loss modules and the UNet alongside.
    wrapped = {f"first_stage_model.{k}": v for k, v in sd.items()}
    wrapped |= {
        "first_stage_model.loss.discriminator.w": torch.zeros(1),
        "model.diffusion_model.w": torch.zeros(1),
    }
    torch.save({"state_dict": wrapped}, tmp_path / "sd.ckpt")
    for name in ["vae.safetensors", "sd.ckpt"]:
        model = load_autoencoder_init(AutoencoderKL(**{**kwargs, "scaling_factor": 0.25}), tmp_path / name)
        for key, value in source.state_dict().items():
            if not key.startswith("latent_norm."):
                assert torch.equal(model.state_dict()[key], value), key
        torch.testing.assert_close(model.latent_norm.scale, torch.full((4,), 0.25))  # SD files carry no scale


def test_load_own_layout_keeps_latent_norm(tmp_path):
    source = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, scaling_factor=0.3)
    save_file(source.state_dict(), tmp_path / "ours.safetensors")
    # A phase-1 Lightning checkpoint: the VAE under its attribute name, the discriminator alongside.
    lightning = {f"autoencoder.{k}": v for k, v in source.state_dict().items()} | {
        "discriminator.w": torch.ones(1)
    }
    torch.save({"state_dict": lightning, "global_step": 3}, tmp_path / "phase1.ckpt")
    for name, prefix in [("ours.safetensors", ""), ("phase1.ckpt", "autoencoder.")]:
        fresh = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
        model = load_autoencoder_init(fresh, tmp_path / name, prefix=prefix)
        torch.testing.assert_close(model.latent_norm.scale, torch.full((4,), 0.3))
        assert torch.equal(model.last_layer, source.last_layer)
    with pytest.raises(ValueError, match="no tensors under the prefix 'vae.'"):
        load_autoencoder_init(fresh, tmp_path / "phase1.ckpt", prefix="vae.")


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    ref = tiny_diffusers(**PLAIN)
    ref.save_pretrained(tmp_path / "vae")
    kwargs = kwargs_from_diffusers_config(ref.config)
    with pytest.raises(ValueError, match=r"missing: decoder\.up_blocks\.0\.resnets\.2\.conv1\.bias.*22 more"):
        load_autoencoder_init(AutoencoderKL(**{**kwargs, "num_res_blocks": 2}), tmp_path / "vae")
    with pytest.raises(ValueError, match=r"shape .*encoder\.conv_in\.weight \(32, 3, 3, 3\)≠\(16, 3, 3, 3\)"):
        load_autoencoder_init(AutoencoderKL(**{**kwargs, "ch": 16}), tmp_path / "vae")


def test_bad_paths_fail_fast(tmp_path):
    model = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_autoencoder_init(model, tmp_path / "missing.ckpt")
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match="needs config.json and diffusion_pytorch_model.safetensors"):
        load_autoencoder_init(model, tmp_path)
    # Lightning checkpoints may pickle arbitrary objects (here an argparse.Namespace); weights_only refuses them.
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "hparams": argparse.Namespace(lr=1.0)},
        tmp_path / "pickled.ckpt",
    )
    with pytest.raises(ValueError, match="weights_only"):
        load_autoencoder_init(model, tmp_path / "pickled.ckpt")
    save_file({"model.w": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not an AutoencoderKL checkpoint"):
        load_autoencoder_init(model, tmp_path / "other.safetensors")
