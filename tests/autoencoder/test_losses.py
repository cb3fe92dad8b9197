"""Phase-1 loss and PatchGAN: closed forms, gradient isolation, taming-transformers parity."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ldm_train.autoencoder.distribution import DiagonalGaussian
from ldm_train.autoencoder.losses import AutoencoderLoss, hinge_d_loss, vanilla_d_loss
from ldm_train.autoencoder.patchgan import NLayerDiscriminator

B, C, H, W, K = 2, 3, 2, 2, 3  # toy: batch, image channels and size, latent width
N = C * H * W


class FixedKL:
    """Stand-in posterior with a known per-sample KL."""

    def __init__(self, kl: torch.Tensor):
        self._kl = kl

    def kl(self) -> torch.Tensor:
        return self._kl


class ConstantPerceptual(nn.Module):
    """Stand-in perceptual distance: a fixed value per sample, B×1×1×1."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def forward(self, x, y):
        return self.values.view(-1, 1, 1, 1)


def toy(seed: int = 0):
    """A linear 'decoder' recon = (z Wᵀ) viewed as B×C×H×W and a linear 1×1-conv discriminator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    z = torch.randn(B, K, generator=g, dtype=torch.float64)
    last_layer = torch.randn(N, K, generator=g, dtype=torch.float64, requires_grad=True)
    disc = nn.Conv2d(C, 1, 1, bias=False).double()
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64).view(1, C, 1, 1))
    recon = (z @ last_layer.T).view(B, C, H, W)
    return x, z, last_layer, disc, recon


def make_loss(disc: nn.Module, **kwargs) -> AutoencoderLoss:
    kwargs.setdefault("perceptual", None)
    kwargs.setdefault("perceptual_weight", 0.0)
    return AutoencoderLoss(disc, **kwargs).double()


def test_adaptive_weight_and_total_match_the_closed_form():
    x, z, last_layer, disc, recon = toy()
    kl = torch.tensor([3.0, 5.0], dtype=torch.float64)
    loss = make_loss(disc, logvar_init=0.3, kl_weight=0.01, disc_start=10, disc_factor=0.7, disc_weight=0.5)
    total, logs = loss.generator_loss(x, recon, FixedKL(kl), global_step=10, last_layer=last_layer)

    xs, rs, zs, lv = (
        x.numpy().reshape(B, N),
        recon.detach().numpy().reshape(B, N),
        z.numpy(),
        loss.logvar.item(),
    )
    nll = (np.abs(xs - rs) / math.exp(lv) + lv).sum() / B
    v = np.repeat([0.5, -1.5, 2.0], H * W)  # D's weight per flattened (c, h, w) pixel
    g_loss = -(rs * v).sum() / (B * H * W)
    grad_nll = (np.sign(rs - xs) / (math.exp(lv) * B)).T @ zs  # ∂nll/∂W = Σ_b ∂nll/∂x̂_b ⊗ z_b
    grad_g = np.tile(-v / (B * H * W), (B, 1)).T @ zs
    d_weight = 0.5 * min(np.linalg.norm(grad_nll) / (np.linalg.norm(grad_g) + 1e-4), 1e4)

    assert logs["nll"].item() == pytest.approx(nll, rel=1e-12)
    assert logs["g_loss"].item() == pytest.approx(g_loss, rel=1e-12)
    assert logs["d_weight"].item() == pytest.approx(d_weight, rel=1e-10)
    assert logs["disc_factor"].item() == pytest.approx(0.7)
    expected_total = nll + 0.01 * kl.mean().item() + d_weight * 0.7 * g_loss
    assert total.item() == pytest.approx(expected_total, rel=1e-10)
    assert logs["total"].item() == pytest.approx(expected_total, rel=1e-10)


def test_adaptive_weight_is_clamped():
    x, _, last_layer, disc, recon = toy()
    loss = make_loss(disc, disc_start=0, disc_weight=0.5, adaptive_weight_max=1e-3)
    _, logs = loss.generator_loss(x, recon, FixedKL(torch.zeros(B)), global_step=0, last_layer=last_layer)
    assert logs["d_weight"].item() == pytest.approx(0.5 * 1e-3)


@pytest.mark.parametrize("pixel_loss", ["l1", "l2"])
def test_nll_with_perceptual_term_and_gaussian_kl(pixel_loss):
    x, _, last_layer, disc, recon = toy()
    p = torch.tensor([0.2, 0.4], dtype=torch.float64)
    moments = torch.randn(B, 8, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    posterior = DiagonalGaussian(moments)
    loss = make_loss(
        disc, perceptual=ConstantPerceptual(p), perceptual_weight=1.5, pixel_loss=pixel_loss, logvar_init=-0.2
    )
    _, logs = loss.generator_loss(x, recon, posterior, global_step=0, last_layer=last_layer)

    diff = (x - recon.detach()).numpy().reshape(B, N)
    rec = np.abs(diff) if pixel_loss == "l1" else diff**2
    # The per-sample LPIPS value is broadcast over all N pixels before the sum (as in LDM).
    lv = loss.logvar.item()  # -0.2 as stored in float32
    nll = ((rec + 1.5 * p.numpy()[:, None]) / math.exp(lv) + lv).sum() / B
    mu, logvar = moments[:, :4].numpy(), moments[:, 4:].numpy()
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).reshape(B, -1).sum(1).mean()
    assert logs["nll"].item() == pytest.approx(nll, rel=1e-12)
    assert logs["rec"].item() == pytest.approx(rec.mean(), rel=1e-12)
    assert logs["perceptual"].item() == pytest.approx(0.3)
    assert logs["kl"].item() == pytest.approx(kl, rel=1e-12)


def test_learned_logvar_receives_its_closed_form_gradient():
    x, _, last_layer, disc, recon = toy()
    loss = make_loss(disc, logvar_init=0.4)
    assert loss.generator_parameters() == [loss.logvar] and isinstance(loss.logvar, nn.Parameter)
    total, _ = loss.generator_loss(x, recon, FixedKL(torch.zeros(B)), global_step=0, last_layer=last_layer)
    total.backward()
    rec_sum = (x - recon.detach()).abs().sum().item()
    # ∂/∂lv of Σ(rec·e^-lv + lv)/B = -Σrec·e^-lv/B + N
    assert loss.logvar.grad.item() == pytest.approx(
        -rec_sum * math.exp(-loss.logvar.item()) / B + N, rel=1e-12
    )


def test_discriminator_and_adaptive_weight_cost_nothing_before_disc_start():
    x, _, last_layer, disc, recon = toy()
    loss = make_loss(disc, disc_start=100, kl_weight=0.1)
    calls = []
    disc.register_forward_hook(lambda *args: calls.append(1))

    def never(*args):
        raise AssertionError("adaptive weight computed before disc_start")

    loss.adaptive_weight = never
    kl = torch.tensor([1.0, 2.0], dtype=torch.float64)
    total, logs = loss.generator_loss(x, recon, FixedKL(kl), global_step=99, last_layer=last_layer)
    d_loss, d_logs = loss.discriminator_loss(x, recon, global_step=99)
    assert calls == [] and not loss.discriminator_active(99)
    assert total.item() == pytest.approx(logs["nll"].item() + 0.1 * 1.5)
    assert logs["g_loss"] == 0 and logs["d_weight"] == 0 and logs["disc_factor"] == 0
    assert d_loss == 0 and d_logs["d_loss"] == 0

    loss.discriminator_loss(x, recon, global_step=100)
    assert len(calls) == 2  # real + fake, once active
    off = make_loss(disc, disc_start=0, disc_factor=0.0)
    off.generator_loss(x, recon, FixedKL(kl), global_step=10**6, last_layer=last_layer)
    off.discriminator_loss(x, recon, global_step=10**6)
    assert len(calls) == 2  # disc_factor 0: never run


def test_generator_and_discriminator_steps_do_not_leak_gradients():
    g = torch.Generator().manual_seed(0)
    decoder = nn.Conv2d(4, 3, 3, padding=1)
    disc = NLayerDiscriminator(in_channels=3, ndf=8, n_layers=2)
    loss = AutoencoderLoss(disc, perceptual=None, perceptual_weight=0.0, disc_start=0)
    x, z = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 4, 32, 32, generator=g)

    total, logs = loss.generator_loss(
        x, decoder(z), FixedKL(torch.zeros(2)), global_step=0, last_layer=decoder.weight
    )
    total.backward()
    assert logs["d_weight"] > 0 and logs["g_loss"] != 0
    assert all(p.grad is None for p in loss.discriminator_parameters())
    assert decoder.weight.grad.abs().sum() > 0 and loss.logvar.grad is not None

    decoder.zero_grad(set_to_none=True)
    d_loss, d_logs = loss.discriminator_loss(x, decoder(z), global_step=0)
    d_loss.backward()
    assert decoder.weight.grad is None and decoder.bias.grad is None
    assert all(p.grad is not None for p in loss.discriminator_parameters())
    assert set(d_logs) == {"d_loss", "logits_real", "logits_fake"}


def test_validation_without_autograd_leaves_out_the_adversarial_term():
    x, _, last_layer, disc, recon = toy()
    loss = make_loss(disc, disc_start=0)
    with torch.no_grad():
        total, logs = loss.generator_loss(x, recon.detach(), FixedKL(torch.zeros(B)), 5, last_layer)
    assert logs["d_weight"] == 0 and logs["g_loss"] != 0
    assert total.item() == pytest.approx(logs["nll"].item())
    assert set(logs) == {
        "total",
        "rec",
        "perceptual",
        "kl",
        "nll",
        "logvar",
        "g_loss",
        "d_weight",
        "disc_factor",
    }


def test_discriminator_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.5, 1.0])
    # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1.5, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    softplus = [math.log1p(math.exp(v)) for v in (-2.0, -0.5, 1.0, -2.0, 0.5, 1.0)]
    assert vanilla_d_loss(real, fake).item() == pytest.approx(
        0.5 * (sum(softplus[:3]) / 3 + sum(softplus[3:]) / 3)
    )

    from taming.modules.losses.vqperceptual import hinge_d_loss as taming_hinge
    from taming.modules.losses.vqperceptual import vanilla_d_loss as taming_vanilla

    logits = torch.randn(2, 4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hinge_d_loss(*logits), taming_hinge(*logits))
    torch.testing.assert_close(vanilla_d_loss(*logits), taming_vanilla(*logits))


def test_disc_loss_scaled_by_disc_factor():
    x, _, _, disc, recon = toy()
    loss = make_loss(disc, disc_start=0, disc_factor=0.25, disc_loss="vanilla")
    d_loss, logs = loss.discriminator_loss(x, recon, global_step=0)
    expected = 0.25 * vanilla_d_loss(disc(x), disc(recon))
    assert d_loss.item() == pytest.approx(expected.item())
    assert logs["logits_real"].item() == pytest.approx(disc(x).mean().item())


def test_bad_arguments_name_the_problem():
    disc = nn.Identity()
    with pytest.raises(ValueError, match="pixel_loss"):
        AutoencoderLoss(disc, None, pixel_loss="l3", perceptual_weight=0.0)
    with pytest.raises(ValueError, match="disc_loss"):
        AutoencoderLoss(disc, None, disc_loss="wgan", perceptual_weight=0.0)
    with pytest.raises(ValueError, match="perceptual module"):
        AutoencoderLoss(disc, None)
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(norm="instance")


def test_patchgan_matches_taming():
    from taming.modules.discriminator.model import NLayerDiscriminator as TamingDiscriminator
    from taming.modules.discriminator.model import weights_init

    torch.manual_seed(0)
    ours = NLayerDiscriminator(in_channels=3, ndf=8, n_layers=3)
    theirs = TamingDiscriminator(input_nc=3, ndf=8, n_layers=3).apply(weights_init)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), theirs(x))  # train mode: batch statistics
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    # The 70×70 PatchGAN of pix2pix: 256 px -> 30×30 logits; 2,765,633 parameters at ndf=64.
    assert ours(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert sum(p.numel() for p in NLayerDiscriminator().parameters()) == 2_765_633


def test_patchgan_init_and_norms():
    torch.manual_seed(0)
    disc = NLayerDiscriminator()
    big_conv = disc.main[8].weight
    assert big_conv.mean().abs() < 1e-3 and big_conv.std().item() == pytest.approx(0.02, rel=0.01)
    scales = torch.cat([m.weight for m in disc.modules() if isinstance(m, nn.BatchNorm2d)])
    shifts = torch.cat([m.bias for m in disc.modules() if isinstance(m, nn.BatchNorm2d)])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005) and scales.std().item() == pytest.approx(
        0.02, rel=0.15
    )
    assert torch.all(shifts == 0)
    for norm, kind in [("group", nn.GroupNorm), ("none", nn.Identity)]:
        other = NLayerDiscriminator(ndf=24, n_layers=2, norm=norm)
        assert isinstance(other.main[3], kind) and other.main[2].bias is not None
        assert other(torch.randn(1, 3, 32, 32)).shape == (1, 1, 6, 6)


def test_one_training_step_with_the_real_parts():
    from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
    from ldm_train.autoencoder.lpips import LPIPS

    torch.manual_seed(0)
    vae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32, mid_attention=False)
    loss = AutoencoderLoss(
        NLayerDiscriminator(ndf=8, n_layers=2), LPIPS("alex"), disc_start=0, kl_weight=1e-6
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, posterior = vae(x)
    total, logs = loss.generator_loss(x, recon, posterior, global_step=0, last_layer=vae.last_layer)
    total.backward()
    assert torch.isfinite(total) and logs["perceptual"] > 0 and 0 < logs["d_weight"] < 0.5 * 1e4
    assert vae.last_layer.grad is not None and loss.logvar.grad is not None
    assert all(p.grad is None for p in loss.discriminator_parameters())
    assert all(p.grad is None for p in loss.perceptual.parameters())
    d_loss, _ = loss.discriminator_loss(x, recon, global_step=0)
    d_loss.backward()
    assert all(p.grad is not None for p in loss.discriminator_parameters())


def test_a_compiled_autoencoder_takes_the_adaptive_gan_weight_and_matches_eager():
    """module.compile=true in phase 1: once the discriminator starts, the adaptive weight differentiates two losses
    with respect to the decoder's output layer with retain_graph=True, which a compiled graph's backward refuses
    once it has donated its buffers (it did, from the first step's backward). AutoencoderKL.compile keeps that
    layer eager. aot_eager: the same autograd graphs as inductor, without code generation (seconds on a CPU)."""
    from ldm_train.autoencoder import AutoencoderKL

    torch.manual_seed(0)
    eager = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, resolution=16, norm_groups=4)
    compiled = AutoencoderKL(**eager.config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend="aot_eager", dynamic=False)
    loss = AutoencoderLoss(NLayerDiscriminator(ndf=8, n_layers=1), None, perceptual_weight=0.0, disc_start=2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    grads, weights = [], []
    for net in (compiled, eager):
        for step in (1, 2):  # before disc_start (plain backward), then with the adaptive weight
            net.zero_grad(set_to_none=True)
            recon, posterior = net(x, sample=False)
            g_loss, logs = loss.generator_loss(x, recon, posterior, step, net.last_layer)
            g_loss.backward()
        grads.append([p.grad for p in net.parameters()])
        weights.append(logs["d_weight"])
    torch.testing.assert_close(weights[0], weights[1])
    for compiled_grad, eager_grad in zip(*grads):
        torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)
