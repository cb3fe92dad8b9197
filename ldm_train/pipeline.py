"""A phase-2 model as one object: the networks, the schedule and parameterisation, the latent shape.

    prompts ─► text encoder ─► context ─► guided sampler over the UNet (schedule, prediction) ─► z ─► VAE decoder

The LightningModule (lit/latent_diffusion.py) owns one for its sample grids and in-loop evaluation;
`TextToImage` (text_to_image.py) is one loaded from a checkpoint onto a device. Both sample through
`generate`, the one sampling path. This module knows nothing of Lightning or of checkpoint files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.pipeline import GuidedSampler


class LatentDiffusionPipeline:
    """The five parts that turn prompts into images. It holds references, not copies: the owner's
    networks (and their device, dtype and weights) are the pipeline's."""

    def __init__(
        self,
        unet: nn.Module,  # the network to sample (the EMA copy during training when there is one)
        text_encoder: nn.Module,  # prompts -> B×L×D context; [""] is the unconditional context of CFG
        first_stage: nn.Module,  # the VAE: `decode_latents(z)` undoes the latent scale and decodes
        schedule: NoiseSchedule | FlowSchedule,  # the noise schedule the UNet was trained with
        prediction: str,  # what the UNet predicts: eps / v / x0 (VP) or flow (diffusion/parameterization.py)
        latent_shape: Sequence[int] | None = None,  # C×h×w of one latent; None until known (first training step)
    ) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.first_stage = first_stage
        self.schedule = schedule
        self.prediction = prediction
        self.latent_shape = None if latent_shape is None else tuple(latent_shape)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sampler: GuidedSampler,
        seeds: Sequence[int],
        guide_unet: nn.Module | None = None,
    ) -> torch.Tensor:  # len(prompts) prompts -> B×3×H×W in [-1, 1]
        """Image i depends only on (prompts[i], seeds[i]). `guide_unet`: autoguidance (sampling/cfg.py) with this
        weaker UNet instead of the empty prompt."""
        if self.latent_shape is None:
            raise RuntimeError("the latent shape is known after the first training step (or from a checkpoint)")
        context = self.text_encoder(list(prompts))
        uncond = self.text_encoder([""]) if sampler.guidance_scale != 1.0 and guide_unet is None else None
        z = sampler(self.unet, self.schedule, self.prediction, context, uncond, self.latent_shape, seeds,
                    guide_fn=guide_unet)
        return self.first_stage.decode_latents(z).clamp(-1, 1)
