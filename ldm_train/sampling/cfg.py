"""Classifier-free guidance (Ho & Salimans 2022, eq. 6): D̃ = D_uncond + g·(D_cond − D_uncond).

Guidance is applied to the denoised x̂_0. Because x̂_0 is affine in the network output with the
same coefficients for both halves (same x, same σ), this equals guiding ε or v as diffusers'
pipelines do. Both halves run as ONE batched forward pass of 2B samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm_train.sampling.denoiser import Denoiser


class CFGDenoiser:
    """(x, σ) -> guided x̂_0, binding the prompt context (and the empty-prompt context for g ≠ 1).

    With `guidance_scale == 1` the unconditional half would cancel out, so it is not computed.
    Contexts are tensors batched like x (B×L×D for text); `uncond_context` may have batch 1.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        context: Tensor,
        uncond_context: Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        if guidance_scale != 1.0 and uncond_context is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs an unconditional context (the encoded "
                "empty prompt); pass uncond_context or set guidance_scale=1"
            )
        self.denoiser = denoiser
        self.context = context
        self.uncond_context = uncond_context
        self.guidance_scale = guidance_scale

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:  # B×C×H×W, B -> B×C×H×W
        if self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, self.context)
        batch = x.shape[0]
        uncond = self.uncond_context.expand(batch, *self.uncond_context.shape[1:])
        sigma = sigma.expand(batch)
        denoised = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([uncond, self.context])
        )
        d_uncond, d_cond = denoised.chunk(2)
        return d_uncond + self.guidance_scale * (d_cond - d_uncond)
