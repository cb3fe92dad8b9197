"""Converters: diffusers configs, the original SD checkpoint layout (checked against diffusers' own
converter and SD 1.5's real key names), round trips, strict loads and the pretrained loaders."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import save_file

from ldm_train.unet import (
    UNet,
    from_diffusers_config,
    load_diffusers_unet,
    load_sd_unet,
    ours_to_sd,
    sd_to_ours,
    to_diffusers_config,
    unet_from_diffusers,
)

SD15_UNET_TENSORS = 686  # len() of the UNet part of v1-5-pruned.ckpt
SD15_KEYS = [  # a sample of real SD 1.x checkpoint keys
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
    "model.diffusion_model.middle_block.1.proj_in.weight",
    "model.diffusion_model.middle_block.2.out_layers.3.bias",
    "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.out.2.weight",
]


def tiny_unet(**overrides) -> UNet:
    kwargs = dict(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(0, 2),
                  num_heads=None, num_head_channels=8, context_dim=32, norm_groups=8)  # fmt: skip
    return UNet(**{**kwargs, **overrides})


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_round_trip_ours_diffusers_sd_is_exact(use_linear_projection, randomize):
    ours = randomize(tiny_unet(use_linear_projection=use_linear_projection))
    diffusers_unet = UNet2DConditionModel(**to_diffusers_config(ours.config))
    diffusers_unet.load_state_dict(ours.state_dict(), strict=True)  # ours -> diffusers: same keys

    sd = ours_to_sd(diffusers_unet.state_dict(), ours.config)  # diffusers -> SD
    back = UNet(**from_diffusers_config(diffusers_unet.config))
    back.load_state_dict(sd_to_ours(sd, back.config), strict=True)  # SD -> ours
    restored = back.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(restored[key], value), key


def test_sd_layout_agrees_with_diffusers_single_file_converter(randomize):
    ours = randomize(tiny_unet())
    sd = ours_to_sd(ours.state_dict(), ours.config)
    reference = convert_ldm_unet_checkpoint(sd, to_diffusers_config(ours.config))
    assert reference.keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(reference[key], value), key


def test_sd15_and_sd2_layouts_match_diffusers_and_the_real_checkpoint(sd_unets_on_meta):
    sd15, sd2 = sd_unets_on_meta
    with torch.device("meta"):  # full size, no memory
        ref15 = UNet2DConditionModel(cross_attention_dim=768)
        ref2 = UNet2DConditionModel(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True)  # fmt: skip
    for ours, ref in ((sd15, ref15), (sd2, ref2)):
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in ref.state_dict().items()
        }
        assert from_diffusers_config(ref.config) == ours.config
    keys = ours_to_sd(sd15.state_dict(), sd15.config)
    assert len(keys) == SD15_UNET_TENSORS
    assert set(SD15_KEYS) <= set(keys)


def test_sd_checkpoint_with_other_models_and_ema_loads_only_the_unet(tmp_path, randomize):
    ours = randomize(tiny_unet())
    checkpoint = ours_to_sd(ours.state_dict(), ours.config)
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    checkpoint["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(1)
    path = tmp_path / "sd.safetensors"
    save_file(checkpoint, path)
    loaded = load_sd_unet(path, ours.config).state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_diffusers_folder_loads_through_save_pretrained(tmp_path, randomize, tiny_diffusers_config, inputs):
    ref = randomize(UNet2DConditionModel(**tiny_diffusers_config)).eval()
    ref.save_pretrained(tmp_path)
    ours = load_diffusers_unet(tmp_path).eval()
    x, t, context = inputs
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context), ref(x, t, context).sample, atol=1e-5, rtol=1e-5)


def test_strict_loads_name_the_offending_keys(randomize, tiny_diffusers_config):
    ref = UNet2DConditionModel(**tiny_diffusers_config)
    state = ref.state_dict()
    state.pop("conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        RuntimeError, match=r"conv_out\.bias(.|\n)*extra\.weight|extra\.weight(.|\n)*conv_out\.bias"
    ):
        unet_from_diffusers(ref.config, state)
    ours = tiny_unet()
    with pytest.raises(ValueError, match="Unexpected UNet keys"):
        ours_to_sd({**ours.state_dict(), "down_blocks.7.resnets.0.norm1.weight": torch.zeros(1)}, ours.config)
    with pytest.raises(ValueError, match="model.diffusion_model"):
        sd_to_ours(ours.state_dict(), ours.config)


def test_unsupported_diffusers_configs_are_named(tiny_diffusers_config):
    config = dict(UNet2DConditionModel(**tiny_diffusers_config).config)
    with pytest.raises(ValueError, match="class_embed_type"):
        from_diffusers_config({**config, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="layers_per_block"):
        from_diffusers_config({**config, "layers_per_block": [1, 2]})
    with pytest.raises(ValueError, match="different levels"):
        from_diffusers_config({**config, "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")})
    with pytest.raises(ValueError, match="neither the count nor the width"):
        from_diffusers_config({**config, "attention_head_dim": [8, 2], "block_out_channels": [32, 32]})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet("/nonexistent/unet")
