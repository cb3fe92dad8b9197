"""Our UNet computes exactly diffusers' UNet2DConditionModel once its weights are loaded across."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from ldm_train.unet import UNet, from_diffusers_config, to_diffusers_config, unet_from_diffusers

TOL = 1e-5

VARIANTS = {
    "brief": {},
    "linear_projection": dict(use_linear_projection=True),
    "sd2_style": dict(
        use_linear_projection=True,
        attention_head_dim=(4, 8),  # 8 channels per head at both levels -> num_head_channels
        transformer_layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "scale_shift_three_levels": dict(
        resnet_time_scale_shift="scale_shift",
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_diffusers(variant, inputs, tiny_diffusers_config, randomize):
    ref = randomize(UNet2DConditionModel(**{**tiny_diffusers_config, **VARIANTS[variant]})).eval()
    ours = unet_from_diffusers(ref.config, ref.state_dict()).eval()  # strict load
    x, t, context = inputs
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=context).sample
        torch.testing.assert_close(ours(x, t, context), expected, atol=TOL, rtol=TOL)
        # The same through the config translation in the other direction.
        assert (
            from_diffusers_config(UNet2DConditionModel(**to_diffusers_config(ours.config)).config)
            == ours.config
        )


def test_our_random_init_transfers_to_diffusers(inputs, randomize):
    torch.manual_seed(0)
    ours = randomize(UNet(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                           num_heads=2, context_dim=32, norm_groups=8)).eval()  # fmt: skip
    ref = UNet2DConditionModel(**to_diffusers_config(ours.config)).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x, t, context = inputs
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context), ref(x, t, context).sample, atol=TOL, rtol=TOL)


def test_fractional_and_scalar_timesteps_match_diffusers(inputs, tiny_diffusers_config, randomize):
    ref = randomize(UNet2DConditionModel(**tiny_diffusers_config)).eval()
    ours = unet_from_diffusers(ref.config, ref.state_dict()).eval()
    x, _, context = inputs
    with torch.no_grad():
        for t in (torch.tensor([0.25, 417.5]), 250):
            torch.testing.assert_close(ours(x, t, context), ref(x, t, context).sample, atol=TOL, rtol=TOL)
