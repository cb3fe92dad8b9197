"""AutoencoderKL, its posterior and latent normalisation: shapes, closed forms, behaviour."""

import json
import math

import pytest
import torch

from ldm_train.autoencoder import AutoencoderKL, DiagonalGaussian, LatentNorm

TINY = dict(ch=8, num_res_blocks=1, norm_groups=4, resolution=32)

# The LDM model-zoo layouts (ch_mult, z/embed channels, attention levels) at tiny width.
LAYOUTS = {
    "kl_f4": dict(ch_mult=(1, 2, 4), z_channels=3, embed_dim=3, attn_levels=()),
    "kl_f8": dict(ch_mult=(1, 2, 4, 4), z_channels=4, embed_dim=4, attn_levels=()),
    "kl_f16": dict(ch_mult=(1, 1, 2, 2, 4), z_channels=16, embed_dim=16, attn_levels=(4,)),
    "tiny": dict(ch_mult=(1, 2, 2), z_channels=4, embed_dim=4, attn_levels=()),
}


def build(layout: str, **overrides) -> AutoencoderKL:
    spec = dict(LAYOUTS[layout])
    attn_levels = spec.pop("attn_levels")
    kwargs = {
        **TINY,
        **spec,
        "attn_resolutions": [TINY["resolution"] // 2**lvl for lvl in attn_levels],
        **overrides,
    }
    return AutoencoderKL(**kwargs)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_encode_decode_shapes(layout):
    torch.manual_seed(0)
    model = build(layout).eval()
    f = 2 ** (len(LAYOUTS[layout]["ch_mult"]) - 1)
    assert model.downsampling_factor == f
    x = torch.randn(2, 3, 32, 32)
    posterior = model.encode(x)
    c = LAYOUTS[layout]["embed_dim"]
    assert posterior.mean.shape == posterior.logvar.shape == (2, c, 32 // f, 32 // f)
    recon, post = model(x)
    assert recon.shape == x.shape
    assert post.kl().shape == (2,)


def test_embed_dim_differs_from_z_channels_and_single_channel_images():
    model = AutoencoderKL(in_channels=1, ch_mult=(1, 2), z_channels=6, embed_dim=2, **TINY)
    recon, posterior = model(torch.randn(1, 1, 16, 16))
    assert posterior.mean.shape == (1, 2, 8, 8) and recon.shape == (1, 1, 16, 16)


def test_attention_placement_and_switches():
    with_attn = AutoencoderKL(ch_mult=(1, 2), attn_resolutions=[16], **TINY)
    assert len(with_attn.encoder.down_blocks[1].attentions) == TINY["num_res_blocks"]
    assert len(with_attn.encoder.down_blocks[0].attentions) == 0
    # The decoder runs the lowest resolution first; it has one block more per level.
    assert len(with_attn.decoder.up_blocks[0].attentions) == TINY["num_res_blocks"] + 1
    without = AutoencoderKL(ch_mult=(1, 2), mid_attention=False, **TINY)
    assert len(without.encoder.mid_block.attentions) == len(without.decoder.mid_block.attentions) == 0
    assert len(with_attn.encoder.mid_block.attentions) == len(with_attn.decoder.mid_block.attentions) == 1


def test_unknown_attention_resolution_is_rejected():
    with pytest.raises(ValueError, match=r"attn_resolutions \[24\].*levels are \[32, 16\]"):
        AutoencoderKL(ch_mult=(1, 2), attn_resolutions=[24], **TINY)


def test_no_quant_conv_requires_equal_channels():
    with pytest.raises(ValueError, match="embed_dim == z_channels"):
        AutoencoderKL(ch_mult=(1, 2), z_channels=4, embed_dim=3, use_quant_conv=False, **TINY)
    model = AutoencoderKL(ch_mult=(1, 2), use_quant_conv=False, **TINY)
    assert model.quant_conv is None and model(torch.randn(1, 3, 8, 8))[0].shape == (1, 3, 8, 8)


def test_config_rebuilds_the_architecture():
    model = build("kl_f16", scaling_factor=[0.5] * 16)
    config = json.loads(json.dumps(model.config))
    assert config["ch_mult"] == [1, 1, 2, 2, 4] and config["attn_resolutions"] == [2]
    rebuilt = AutoencoderKL(**config)
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameter names and shapes


def test_last_layer_is_decoder_output_conv():
    model = build("tiny")
    assert model.last_layer is model.decoder.conv_out.weight


def test_mode_forward_is_deterministic_and_generator_reproducible():
    torch.manual_seed(0)
    model = build("tiny").eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x, sample=False)[0], model(x, sample=False)[0])
    a = model(x, generator=torch.Generator().manual_seed(1))[0]
    b = model(x, generator=torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(a, b)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = build("tiny", attn_resolutions=[16])
    ckpt = build("tiny", attn_resolutions=[16], gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    for model in (plain, ckpt):
        model(x, sample=False)[0].square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_gaussian_kl_nll_match_torch_distributions():
    torch.manual_seed(0)
    moments = torch.randn(3, 4, 2, 2)
    post, other = DiagonalGaussian(moments), DiagonalGaussian(torch.randn(3, 4, 2, 2))
    q = torch.distributions.Normal(post.mean, post.std)
    p0 = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    p1 = torch.distributions.Normal(other.mean, other.std)
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, p0).sum((1, 2, 3)))
    torch.testing.assert_close(post.kl(other), torch.distributions.kl_divergence(q, p1).sum((1, 2, 3)))
    z = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(post.nll(z), -q.log_prob(z).sum((1, 2, 3)))
    assert post.mode() is post.mean


def test_gaussian_logvar_clamp_and_sample_statistics():
    moments = torch.cat([torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 100.0)], dim=1)
    assert DiagonalGaussian(moments).logvar.item() == 20.0
    moments = torch.cat([torch.full((1, 1, 64, 64), 2.0), torch.full((1, 1, 64, 64), math.log(0.25))], dim=1)
    z = DiagonalGaussian(moments).sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02


def test_gaussian_rejects_odd_channel_moments():
    with pytest.raises(ValueError, match="double_z"):
        DiagonalGaussian(torch.randn(1, 3, 2, 2))


def test_latent_norm_round_trip_and_statistics():
    torch.manual_seed(0)
    z = torch.randn(64, 4, 8, 8) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5.0
    norm = LatentNorm(4)
    assert norm.is_identity
    norm.set_from_statistics(std=z.std(dim=(0, 2, 3)), mean=z.mean(dim=(0, 2, 3)))
    n = norm.normalize(z)
    torch.testing.assert_close(n.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(n), z, atol=1e-5, rtol=1e-5)
    norm.set_from_statistics(std=4.0)  # LDM/SD convention: one scalar, no shift
    torch.testing.assert_close(norm.scale, torch.full((4,), 0.25))
    assert not norm.is_identity and set(norm.state_dict()) == {"scale", "shift"}


def test_latent_norm_rejects_bad_statistics():
    norm = LatentNorm(4)
    with pytest.raises(ValueError, match="positive"):
        norm.set_from_statistics(std=0.0)
    with pytest.raises(ValueError, match="4 entries"):
        norm.set_from_statistics(std=[1.0, 2.0])
    with pytest.raises(ValueError, match="4 latent channels"):
        norm.normalize(torch.zeros(1, 3, 2, 2))


def test_encode_decode_latents_use_the_latent_norm_and_it_is_saved():
    torch.manual_seed(0)
    model = build("tiny", scaling_factor=0.5, shift_factor=1.0).eval()
    x = torch.randn(1, 3, 16, 16)
    latents = model.encode_latents(x, sample=False)
    torch.testing.assert_close(latents, (model.encode(x).mean - 1.0) * 0.5)
    torch.testing.assert_close(
        model.decode_latents(latents), model.decode(model.encode(x).mean), atol=1e-5, rtol=1e-5
    )
    state = model.state_dict()
    torch.testing.assert_close(state["latent_norm.scale"], torch.full((4,), 0.5))
