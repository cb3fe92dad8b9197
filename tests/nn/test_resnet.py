"""ResBlock matches diffusers' ResnetBlock2D with the same weights (strict load, no renaming)."""

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from ldm_train.nn import ResBlock

TOL = 1e-5


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "temb", "scale_shift"),
    [(8, 8, None, False), (8, 16, None, False), (8, 16, 12, False), (16, 8, 12, True), (8, 8, 12, True)],
)
def test_resblock_matches_diffusers(in_ch, out_ch, temb, scale_shift):
    torch.manual_seed(0)
    ref = ResnetBlock2D(
        in_channels=in_ch,
        out_channels=out_ch,
        temb_channels=temb,
        groups=4,
        eps=1e-6,
        time_embedding_norm="scale_shift" if scale_shift else "default",
    ).eval()
    ours = ResBlock(in_ch, out_ch, temb_channels=temb, groups=4, eps=1e-6, scale_shift=scale_shift).eval()
    ours.load_state_dict(ref.state_dict())  # strict: identical parameter names

    x = torch.randn(2, in_ch, 6, 5)
    emb = None if temb is None else torch.randn(2, temb)
    torch.testing.assert_close(ours(x, emb), ref(x, emb), atol=TOL, rtol=TOL)


def test_resblock_shortcut_only_when_channels_change():
    assert ResBlock(8, 8, groups=4).conv_shortcut is None
    assert ResBlock(8, 16, groups=4).conv_shortcut.kernel_size == (1, 1)


def test_resblock_rejects_missing_or_unexpected_temb():
    with pytest.raises(ValueError, match="temb"):
        ResBlock(8, temb_channels=4, groups=4)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="temb_channels=None"):
        ResBlock(8, groups=4)(torch.randn(1, 8, 4, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="scale_shift"):
        ResBlock(8, groups=4, scale_shift=True)
