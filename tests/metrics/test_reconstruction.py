"""Reconstruction metrics: PSNR/SSIM equal torchmetrics' functional values, LPIPS averaging, clamping,
and eval_autoencoder end to end on a tiny exported autoencoder."""

import json
import math

import pytest
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ldm_train.autoencoder import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder
from ldm_train.metrics.reconstruction import ReconstructionMetrics, evaluate_reconstruction, reconstruct

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


def test_psnr_ssim_equal_torchmetrics_functional_and_lpips_is_averaged():
    recons, targets = random_pairs(0)
    metrics = ReconstructionMetrics(L1Distance())
    for recon, target in zip(recons, targets):
        metrics.update(recon, target)
    scores = metrics.compute()
    recon, target = (torch.cat(recons) + 1) / 2, (torch.cat(targets) + 1) / 2
    per_image_psnr = [peak_signal_noise_ratio(r, t, data_range=1.0) for r, t in zip(recon, target)]
    assert scores["psnr"] == pytest.approx(torch.stack(per_image_psnr).mean().item(), rel=1e-5)
    assert scores["ssim"] == pytest.approx(
        structural_similarity_index_measure(recon, target, data_range=1.0).item(), rel=1e-5
    )
    assert scores["lpips"] == pytest.approx((recon - target).abs().mul(2).mean().item(), rel=1e-5)
    # Closed form: PSNR = 10·log10(1 / MSE) on [0, 1] images.
    mse = (recon[0] - target[0]).square().mean().item()
    assert per_image_psnr[0].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_reconstructions_are_clamped_and_lpips_is_optional():
    target = torch.zeros(2, 3, 16, 16)
    overshoot = torch.full_like(target, 0.5)
    overshoot[:, :, :4] = 3.0  # decoder overshoot past 1 scores as the saved pixel value 1
    metrics = ReconstructionMetrics()
    metrics.update(overshoot, target)
    expected = 10 * math.log10(1 / (0.25 * (0.5**2) + 0.75 * (0.25**2)))
    assert metrics.compute()["psnr"] == pytest.approx(expected, rel=1e-5)
    assert "lpips" not in metrics.compute()
    metrics.reset()
    metrics.update(target, target + 0.5)
    assert metrics.compute()["psnr"] == pytest.approx(10 * math.log10(1 / 0.25**2), rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        metrics.update(overshoot, target[:1])


def test_evaluate_reconstruction_uses_the_posterior_mode():
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(**TINY_AE).eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    batches = [images[:2], {"image": images[2:]}]  # tensors or datamodule dicts
    scores = evaluate_reconstruction(autoencoder, batches, lpips_net=None)
    expected = ReconstructionMetrics()
    expected.update(autoencoder.decode(autoencoder.encode(images).mean), images)
    assert scores["n"] == 4 and scores["images_per_s"] > 0
    assert scores["psnr"] == pytest.approx(expected.compute()["psnr"], rel=1e-5)
    torch.testing.assert_close(
        reconstruct(autoencoder, images), autoencoder.decode(autoencoder.encode(images).mean)
    )
    with pytest.raises(ValueError, match="no images"):
        evaluate_reconstruction(autoencoder, [], lpips_net=None)


def test_eval_autoencoder_end_to_end(load_script, tmp_path, fashion_mnist, capsys):
    torch.manual_seed(0)
    export_autoencoder(AutoencoderKL(**{**TINY_AE, "resolution": 32}), tmp_path / "run")
    script = load_script("eval_autoencoder")
    assert (
        script.main(["--ckpt", str(tmp_path / "run"), "--n", "6", "--batch-size", "4", "--lpips-net", "none"])
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["n"] == 6 and math.isfinite(scores["psnr"]) and -1 <= scores["ssim"] <= 1
