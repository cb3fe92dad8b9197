"""Attention (self / cross, several heads) and the VAE's spatial self-attention match diffusers' Attention."""

import pytest
import torch
from diffusers.models.attention_processor import Attention as DiffusersAttention

from ldm_train.nn import Attention, SpatialSelfAttention

TOL = 1e-5


@pytest.mark.parametrize(
    ("heads", "dim_head", "context_dim", "bias"),
    [(1, 16, None, False), (4, 8, None, False), (2, 8, 12, False), (4, 4, 12, True)],
)
def test_attention_matches_diffusers(heads, dim_head, context_dim, bias):
    torch.manual_seed(0)
    query_dim = 16
    ref = DiffusersAttention(
        query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim_head, bias=bias, out_bias=True
    ).eval()
    ours = Attention(query_dim, context_dim=context_dim, heads=heads, dim_head=dim_head, bias=bias).eval()
    ours.load_state_dict(ref.state_dict())  # strict: identical parameter names

    x = torch.randn(2, 7, query_dim)
    context = None if context_dim is None else torch.randn(2, 5, context_dim)
    torch.testing.assert_close(ours(x, context), ref(x, encoder_hidden_states=context), atol=TOL, rtol=TOL)


def test_attention_context_mask_ignores_masked_tokens():
    torch.manual_seed(0)
    attn = Attention(8, context_dim=6, heads=2).eval()
    x, context = torch.randn(1, 3, 8), torch.randn(1, 5, 6)
    mask = torch.tensor([[True, True, True, False, False]])
    masked = attn(x, context, context_mask=mask)
    torch.testing.assert_close(masked, attn(x, context[:, :3]), atol=TOL, rtol=TOL)


def test_attention_rejects_wrong_context_width():
    with pytest.raises(ValueError, match="context_dim"):
        Attention(8, context_dim=6)(torch.randn(1, 3, 8), torch.randn(1, 4, 5))


def test_spatial_self_attention_matches_diffusers_vae_attention():
    torch.manual_seed(0)
    channels, groups = 16, 4
    # The configuration diffusers' VAE mid-block uses for its attention.
    ref = DiffusersAttention(
        channels,
        heads=1,
        dim_head=channels,
        rescale_output_factor=1.0,
        eps=1e-6,
        norm_num_groups=groups,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    ).eval()
    ours = SpatialSelfAttention(channels, groups=groups).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers' parameter names, unchanged

    x = torch.randn(2, channels, 5, 3)
    torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=TOL)


def test_every_unet_attention_runs_sdpa_without_a_mask(monkeypatch):
    """README "SDPA attention": every attention of a UNet forward is F.scaled_dot_product_attention, called without
    a mask (a mask would rule out the flash kernel)."""
    from ldm_train.unet import UNet

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    unet = UNet(model_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], num_heads=2,
                norm_groups=8, context_dim=8)  # fmt: skip
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), torch.randn(2, 5, 8))
    assert len(attentions) > 0 and calls == [None] * len(attentions)
