"""Reconstruction metrics: per-image PSNR/SSIM equal torchmetrics' functional values, LPIPS per image,
clamping, and the phase-1 evaluator on real test images."""

import math

import pytest
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ldm_train.autoencoder import AutoencoderKL
from ldm_train.evaluation.reconstruction import ReconstructionEvaluator
from ldm_train.evaluation.reference import RealReference
from ldm_train.metrics.fashion_data import fashion_mnist_tensors, to_model_range
from ldm_train.metrics.reconstruction import per_image_scores, reconstruct

TINY_AE = dict(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, resolution=16, z_channels=4, embed_dim=4
)


class L1Distance(nn.Module):
    """A stand-in perceptual distance with a known value: mean |x - y| per image, B×1×1×1."""

    def forward(self, x, y):
        return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)


def random_pairs(seed: int, batches: int = 2, size: int = 24):
    generator = torch.Generator().manual_seed(seed)
    targets = [torch.rand(3, 3, size, size, generator=generator) * 2 - 1 for _ in range(batches)]
    recons = [(t + 0.2 * torch.randn(t.shape, generator=generator)).clamp(-1, 1) for t in targets]
    return recons, targets


def test_per_image_scores_equal_torchmetrics_and_lpips_is_per_image():
    recons, targets = random_pairs(0)
    recon, target = torch.cat(recons), torch.cat(targets)
    scores = per_image_scores(recon, target, L1Distance())
    unit_r, unit_t = (recon + 1) / 2, (target + 1) / 2
    psnr = torch.stack([peak_signal_noise_ratio(r, t, data_range=1.0) for r, t in zip(unit_r, unit_t)])
    torch.testing.assert_close(scores[:, 0], psnr, rtol=1e-5, atol=1e-5)
    # The mean of per-image SSIM is torchmetrics' SSIM of the batch (its default reduction).
    assert scores[:, 1].mean().item() == pytest.approx(
        structural_similarity_index_measure(unit_r, unit_t, data_range=1.0).item(), rel=1e-5)
    torch.testing.assert_close(scores[:, 2], (recon - target).abs().mean(dim=(1, 2, 3)))
    # Closed form: PSNR = 10·log10(1 / MSE) on [0, 1] images.
    mse = (unit_r[0] - unit_t[0]).square().mean().item()
    assert scores[0, 0].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_reconstructions_are_clamped_and_lpips_is_optional():
    target = torch.zeros(2, 3, 16, 16)
    overshoot = torch.full_like(target, 0.5)
    overshoot[:, :, :4] = 3.0  # decoder overshoot past 1 scores as the saved pixel value 1
    scores = per_image_scores(overshoot, target)
    expected = 10 * math.log10(1 / (0.25 * (0.5**2) + 0.75 * (0.25**2)))
    assert scores[:, 0].tolist() == pytest.approx([expected] * 2, rel=1e-5)
    assert torch.isnan(scores[:, 2]).all()  # no LPIPS network: NaN, never a silent 0
    with pytest.raises(ValueError, match="differ"):
        per_image_scores(overshoot, target[:1])


def test_reconstruct_uses_the_posterior_mode():
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(**TINY_AE).eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(
        reconstruct(autoencoder, images), autoencoder.decode(autoencoder.encode(images).mean)
    )


def test_reconstruction_evaluator_on_real_test_images(fashion_mnist):
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(**{**TINY_AE, "resolution": 32}).eval()
    evaluator = ReconstructionEvaluator(RealReference(n=6), lpips_net=None, rfid=False, batch_size=4, grid_images=3)
    result = evaluator.run(autoencoder, "cpu", keep_samples=True)
    images, _ = fashion_mnist_tensors("test", 6)
    expected = per_image_scores(reconstruct(autoencoder, to_model_range(images)), to_model_range(images))
    assert result.metrics["psnr"] == pytest.approx(expected[:, 0].double().mean().item(), rel=1e-5)
    assert result.metrics["ssim"] == pytest.approx(expected[:, 1].double().mean().item(), rel=1e-5)
    assert "lpips" not in result.metrics and result.details["n"] == 6 and result.samples.shape == (6, 3, 32, 32)
    assert result.grid.shape == (3, 2 * 34 + 2, 3 * 34 + 2)  # inputs over reconstructions
