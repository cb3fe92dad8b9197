"""Downsample / Upsample match diffusers' Downsample2D / Upsample2D (VAE and UNet padding)."""

import pytest
import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D

from ldm_train.nn import Downsample, Upsample

TOL = 1e-5


@pytest.mark.parametrize(("pad_mode", "padding"), [("asymmetric", 0), ("symmetric", 1)])
@pytest.mark.parametrize("out_channels", [None, 12])
def test_downsample_matches_diffusers(pad_mode, padding, out_channels):
    torch.manual_seed(0)
    ref = Downsample2D(8, use_conv=True, out_channels=out_channels, padding=padding, name="op")
    ours = Downsample(8, out_channels=out_channels, pad_mode=pad_mode)
    ours.load_state_dict(ref.state_dict())

    x = torch.randn(2, 8, 8, 6)
    out = ours(x)
    assert out.shape == (2, out_channels or 8, 4, 3)
    torch.testing.assert_close(out, ref(x), atol=TOL, rtol=TOL)


def test_downsample_rejects_unknown_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        Downsample(8, pad_mode="reflect")


def test_upsample_matches_diffusers():
    torch.manual_seed(0)
    ref = Upsample2D(8, use_conv=True)
    ours = Upsample(8)
    ours.load_state_dict(ref.state_dict())

    x = torch.randn(2, 8, 3, 5)
    out = ours(x)
    assert out.shape == (2, 8, 6, 10)
    torch.testing.assert_close(out, ref(x), atol=TOL, rtol=TOL)
