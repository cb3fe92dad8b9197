"""Autoencoder reconstruction quality: PSNR, SSIM (torchmetrics) and LPIPS, averaged over images.

All three are per-image scores averaged over the set (the convention of the LDM / SD VAE tables),
not the PSNR of the pooled MSE. Reconstructions are clamped to [-1, 1] first: the score is of the
image one would save, not of decoder overshoot.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL

UNIT_RANGE = 1.0  # PSNR/SSIM see images mapped from [-1, 1] to [0, 1]
PER_IMAGE = (1, 2, 3)  # reduce C×H×W per image, then average the images


def to_unit(images: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> [0, 1], clamped
    return images.clamp(-1, 1).add(1).div(2)


@torch.no_grad()
def per_image_scores(
    reconstructions: torch.Tensor, targets: torch.Tensor, lpips: nn.Module | None = None
) -> torch.Tensor:  # B×C×H×W ×2 in [-1, 1] -> B×3: PSNR (dB), SSIM, LPIPS (NaN without a network)
    """Per-image scores (averaged over a set by `ldm_train.evaluation.reconstruction`, after shards of
    the set are gathered): PSNR of the image's MSE on [0, 1], SSIM (torchmetrics' Gaussian window),
    LPIPS."""
    if reconstructions.shape != targets.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and targets {tuple(targets.shape)} differ")
    recon, target = to_unit(reconstructions.float()), to_unit(targets.float())
    mse = (recon - target).square().mean(dim=PER_IMAGE)
    psnr = 10 * torch.log10(UNIT_RANGE**2 / mse)
    ssim = structural_similarity_index_measure(recon, target, data_range=UNIT_RANGE, reduction="none")
    if lpips is None:
        perceptual = torch.full_like(psnr, float("nan"))
    else:
        perceptual = lpips(reconstructions.clamp(-1, 1), targets).flatten()
    return torch.stack([psnr, ssim, perceptual.to(psnr)], dim=1)


@torch.no_grad()
def reconstruct(autoencoder: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:  # B×C×H×W -> B×C×H×W
    """decode(posterior mode): the deterministic reconstruction."""
    return autoencoder.decode(autoencoder.encode(images).mode())
