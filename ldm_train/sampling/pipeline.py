"""Prompt contexts in, latents out: the sampler settings a config chooses, in one typed object."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal, get_args

from torch import Tensor

from ldm_train.diffusion.objective import ModelFn
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.cfg import CFGDenoiser
from ldm_train.sampling.denoiser import Denoiser
from ldm_train.sampling.grid import FinalSigma, Spacing, make_sigmas
from ldm_train.sampling.samplers import get_sampler
from ldm_train.sampling.seeds import PerImageNoise, initial_latents

SamplerName = Literal["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m"]


class GuidedSampler:
    """Sample latents with classifier-free guidance and per-image seeds.

    Defaults follow the Stable Diffusion era: leading spacing with steps_offset 1, final σ = 0.
    `eta` is passed to the samplers that take it (ddim, euler_a); None keeps each one's default.
    """

    def __init__(
        self,
        sampler: SamplerName = "dpmpp_2m",
        num_steps: int = 25,
        guidance_scale: float = 7.5,
        spacing: Spacing = "leading",
        steps_offset: int = 1,
        karras: bool = False,
        final_sigma: FinalSigma = "zero",
        quantize_t: bool = False,
        eta: float | None = None,
    ) -> None:
        self.sample_fn = get_sampler(sampler)
        if eta is not None and "eta" not in inspect.signature(self.sample_fn).parameters:
            raise ValueError(f"sampler {sampler!r} takes no eta; use 'ddim' or 'euler_a', or set eta=null")
        for name, value, choices in (("spacing", spacing, Spacing), ("final_sigma", final_sigma, FinalSigma)):
            if value not in get_args(choices):
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(get_args(choices))}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.options = {} if eta is None else {"eta": eta}
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.grid = dict(spacing=spacing, steps_offset=steps_offset, karras=karras, final_sigma=final_sigma)
        self.quantize_t = quantize_t

    def __call__(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        prediction: str,
        context: Tensor,
        uncond_context: Tensor | None,
        shape: Sequence[int],
        seeds: Sequence[int],
    ) -> Tensor:  # context B×L×D, shape C×H×W -> B×C×H×W
        """Latents for len(seeds) images; image i depends only on (seeds[i], context[i])."""
        if len(seeds) != context.shape[0]:
            raise ValueError(
                f"got {len(seeds)} seeds for {context.shape[0]} contexts; pass one seed per image"
            )
        sigmas = make_sigmas(schedule, self.num_steps, **self.grid)
        denoiser = CFGDenoiser(
            Denoiser(model_fn, schedule, prediction, self.quantize_t),
            context,
            uncond_context,
            self.guidance_scale,
        )
        noise = PerImageNoise(seeds, shape, device=context.device)
        x = initial_latents(noise.draw(), sigmas[0])
        return self.sample_fn(denoiser, x, sigmas, noise_fn=noise, **self.options)
