"""Autoencoder reconstruction quality: PSNR, SSIM (torchmetrics) and LPIPS, averaged over images.

All three are per-image scores averaged over the set (the convention of the LDM / SD VAE tables),
not the PSNR of the pooled MSE. Reconstructions are clamped to [-1, 1] first: the score is of the
image one would save, not of decoder overshoot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.lpips import LPIPS

UNIT_RANGE = 1.0  # PSNR/SSIM see images mapped from [-1, 1] to [0, 1]
PER_IMAGE = (1, 2, 3)  # reduce C×H×W per image, then average the images


def to_unit(images: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> [0, 1], clamped
    return images.clamp(-1, 1).add(1).div(2)


class ReconstructionMetrics(nn.Module):
    """Accumulates mean PSNR (dB), SSIM and LPIPS of reconstructions vs targets, both in [-1, 1]."""

    def __init__(self, lpips: nn.Module | None = None) -> None:
        super().__init__()
        self.psnr = PeakSignalNoiseRatio(data_range=UNIT_RANGE, reduction="elementwise_mean", dim=PER_IMAGE)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=UNIT_RANGE)
        self.lpips_net = lpips  # None: skip LPIPS (e.g. no converted backbone)
        self.lpips = MeanMetric()

    @torch.no_grad()
    def update(self, reconstructions: torch.Tensor, targets: torch.Tensor) -> None:  # B×C×H×W ×2 in [-1, 1]
        if reconstructions.shape != targets.shape:
            raise ValueError(
                f"reconstructions {tuple(reconstructions.shape)} and targets {tuple(targets.shape)} differ"
            )
        recon, target = to_unit(reconstructions), to_unit(targets)
        self.psnr.update(recon, target)
        self.ssim.update(recon, target)
        if self.lpips_net is not None:
            self.lpips.update(self.lpips_net(reconstructions.clamp(-1, 1), targets).flatten())

    def compute(self) -> dict[str, float]:
        scores = {"psnr": self.psnr.compute().item(), "ssim": self.ssim.compute().item()}
        if self.lpips_net is not None:
            scores["lpips"] = self.lpips.compute().item()
        return scores

    def reset(self) -> None:  # e.g. at the start of each validation epoch
        for metric in (self.psnr, self.ssim, self.lpips):
            metric.reset()


@torch.no_grad()
def per_image_scores(
    reconstructions: torch.Tensor, targets: torch.Tensor, lpips: nn.Module | None = None
) -> torch.Tensor:  # B×C×H×W ×2 in [-1, 1] -> B×3: PSNR (dB), SSIM, LPIPS (NaN without a network)
    """The scores `ReconstructionMetrics` averages, per image, so shards of a set can be gathered first."""
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


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":  # accelerators run asynchronously; wait before reading the clock
        torch.accelerator.synchronize(device)


@torch.no_grad()
def evaluate_reconstruction(
    autoencoder: AutoencoderKL,
    batches: Iterable[torch.Tensor | dict],
    lpips_net: str | None = "vgg",
) -> dict[str, float]:
    """PSNR, SSIM, LPIPS and images/s of `autoencoder` (eval mode, on its own device) over image batches.

    `batches` yields B×C×H×W tensors in [-1, 1] or datamodule dicts with an "image" entry. images/s
    counts encode + decode only, not the metrics.
    """
    device = next(autoencoder.parameters()).device
    metrics = ReconstructionMetrics(LPIPS(lpips_net) if lpips_net else None).to(device)
    count, seconds = 0, 0.0
    for batch in batches:
        images = (batch["image"] if isinstance(batch, dict) else batch).to(device)
        _synchronize(device)
        start = time.perf_counter()
        recon = reconstruct(autoencoder, images)
        _synchronize(device)
        seconds += time.perf_counter() - start
        metrics.update(recon, images)
        count += images.shape[0]
    if count == 0:
        raise ValueError("evaluate_reconstruction got no images")
    return {**metrics.compute(), "images_per_s": count / seconds, "n": count}
