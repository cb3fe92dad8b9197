"""Phase 1: how well does the autoencoder reconstruct held-out images? PSNR, SSIM, LPIPS and rFID.

The held-out set is the reference (the first n test images): each rank reconstructs its share as
decode(posterior mode), scores every image (`metrics.reconstruction.per_image_scores`: PSNR of each
image's MSE, averaged over images — the convention of the LDM/SD VAE tables) and extracts Inception
features of the reconstructions; rows are gathered, and rFID is the FID between the reconstructions
and the originals (the reference features).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import torch
import torchvision
from torch import nn

from ldm_train.autoencoder.lpips import LPIPS
from ldm_train.evaluation.reference import RealReference, extract_features, reference_features
from ldm_train.evaluation.results import EvaluationResult, count_label
from ldm_train.evaluation.sharding import gather_rows, gather_selected, rank_and_world, shard
from ldm_train.metrics.distances import fid
from ldm_train.metrics.fashion_data import to_model_range
from ldm_train.metrics.fid import INCEPTION_NAME, InceptionV3Features, to_uint8_levels
from ldm_train.metrics.reconstruction import per_image_scores, reconstruct

log = logging.getLogger(__name__)
SCORES = ("psnr", "ssim", "lpips")


class ReconstructionEvaluator:
    """Scores an autoencoder on `reference.n` held-out images; see the module docstring."""

    def __init__(
        self,
        reference: RealReference,
        # LPIPS backbone for the score (vgg: AlexNet's stride-4 stem leaves 1×1 maps at 32 px); null: skip.
        lpips_net: Literal["vgg", "alex"] | None = "vgg",
        # rFID needs Inception features of every reconstruction (the slow part on a CPU).
        rfid: bool = True,
        batch_size: int = 100,
        feature_batch_size: int = 50,
        # Images in the grid: inputs in the top row(s), reconstructions below.
        grid_images: int = 8,
    ) -> None:
        if batch_size < 1 or feature_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {feature_batch_size}")
        self.reference = reference
        self.lpips_net = lpips_net
        self.rfid = rfid
        self.batch_size = batch_size
        self.feature_batch_size = feature_batch_size
        self.grid_images = min(grid_images, reference.n)
        self._lpips: nn.Module | None = None
        self._inception: nn.Module | None = None
        self._reference_features: torch.Tensor | None = None

    def setup(self, device: torch.device | str) -> None:
        if self.lpips_net is not None and self._lpips is None:
            self._lpips = LPIPS(self.lpips_net).to(device).eval()
        if self.rfid and self._inception is None:
            self._inception = InceptionV3Features().to(device)
            self._reference_features = reference_features(
                self.reference, self._inception, INCEPTION_NAME, self.feature_batch_size, device
            )

    @torch.no_grad()
    def run(self, autoencoder: nn.Module, device: torch.device | str, keep_samples: bool = False) -> EvaluationResult:
        self.setup(device)
        images, _ = self.reference.load()  # uint8 n×1×R×R
        count, mine = len(images), shard(len(images))
        channels = autoencoder.config["in_channels"]  # 3: grey replicated to RGB, as the data loader does
        scores, recon_levels, seconds = [], [], 0.0
        for start in range(0, len(mine), self.batch_size):
            x = to_model_range(images[mine[start : start + self.batch_size]])[:, :channels].to(device)
            begin = time.perf_counter()
            recon = reconstruct(autoencoder, x).clamp(-1, 1)
            seconds += time.perf_counter() - begin
            scores.append(per_image_scores(recon, x, self._lpips).cpu())
            recon_levels.append(to_uint8_levels(recon).to(torch.uint8).cpu())
        local_scores = torch.cat(scores) if scores else torch.zeros(0, len(SCORES))
        local_recon = torch.cat(recon_levels) if recon_levels else torch.zeros(0, dtype=torch.uint8)
        all_scores = gather_rows(local_scores, count, device).double().mean(dim=0)
        n = count_label(count)
        metrics = {name: float(value) for name, value in zip(SCORES, all_scores)}
        if self._lpips is None:
            metrics.pop("lpips")
        else:
            metrics[f"lpips_{self.lpips_net}"] = metrics.pop("lpips")
        if self.rfid:
            features = gather_rows(extract_features(self._inception, local_recon, self.feature_batch_size, device),
                                   count, device)
            metrics[f"rfid@{n}"] = fid(self._reference_features, features)
        details = {
            "n": count, "reference": self.reference.label, "psnr_definition": "mean over images of per-image PSNR",
            "images_per_s": len(mine) * rank_and_world()[1] / max(seconds, 1e-9),
        }
        samples = gather_rows(local_recon, count, device) if keep_samples else None
        grid = self._grid(images, mine, local_recon)
        return EvaluationResult(metrics, details, grid, grid_nrow=self.grid_images, samples=samples)

    def _grid(self, images: torch.Tensor, mine: list[int], local_recon: torch.Tensor) -> torch.Tensor:
        """Inputs over reconstructions for the first `grid_images` items, 3×H×W in [0, 1]."""
        recon = torch.stack(gather_selected(mine, local_recon, range(self.grid_images)))
        inputs = images[: self.grid_images].expand(-1, recon.shape[1], -1, -1)
        both = torch.cat([inputs, recon]).float() / 255
        return torchvision.utils.make_grid(both.expand(-1, 3, -1, -1), nrow=self.grid_images, padding=2)
