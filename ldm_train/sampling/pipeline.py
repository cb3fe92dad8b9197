"""Prompts in, images out.

`GuidedSampler`: contexts in, latents out — the sampler settings a config chooses, in one typed object. A
rectified-flow model starts from pure noise x_1 = ε (diffusers' flow pipelines do so even when the grid starts
just below t = 1); a VP model from x = ε·√(1 + σ_0²) (seeds.py).

`LatentDiffusionPipeline`: a phase-2 model as one object — networks, schedule, parameterisation, latent shape —
and `generate`, the one sampling path:

    prompts ─► text encoder ─► context ─► GuidedSampler over the UNet (schedule, prediction) ─► z ─► VAE decoder

The LightningModule (lit/latent_diffusion.py) owns one for its sample grids and in-loop evaluation;
`TextToImage` (text_to_image.py) is one loaded from a checkpoint onto a device. Nothing here knows Lightning or
checkpoint files.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ldm_train.constraints import PositiveFloat, PositiveInt, UnitInterval
from ldm_train.diffusion.flow import FLOW_PREDICTION, FlowSchedule
from ldm_train.diffusion.objective import ModelFn
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.cfg import CFGDenoiser, check_guidance_options
from ldm_train.sampling.denoiser import Denoiser, FlowDenoiser
from ldm_train.sampling.grid import FLOW_SPACINGS, FinalSigma, Spacing, flow_sigmas, make_sigmas
from ldm_train.sampling.samplers import FLOW_SAMPLERS, get_sampler
from ldm_train.sampling.seeds import PerImageNoise, initial_latents
from ldm_train.speed import full_precision

SamplerName = Literal["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m"]


VP_DEFAULT_SPACING = "leading"  # Stable Diffusion 1.x/2.x/XL's scheduler configs
FLOW_DEFAULT_SPACING = "linspace"  # SD3's sampler (FlowMatchEulerDiscreteScheduler)


class GuidedSampler:
    """Sample latents with guidance (cfg.py) and per-image seeds, for discrete-time VP and rectified-flow models.

    Defaults follow each family's reference: leading spacing with steps_offset 1 and final σ = 0 for VP models
    (Stable Diffusion), SD3's linspace grid with the model's own shift for flow models. `eta` is passed to the
    samplers that take it (ddim, euler_a); None keeps each one's default.
    """

    def __init__(
        self,
        sampler: SamplerName = "dpmpp_2m",  # samplers.py; flow models take euler, heun or dpmpp_2m
        num_steps: PositiveInt = 25,  # sampler steps: one network call each (heun: two, but on the last step)
        guidance_scale: float = 3.0,  # g of classifier-free guidance (or autoguidance); 1 is none
        spacing: Spacing | None = None,  # grid.py; None: leading for VP models, linspace for flow models
        steps_offset: int = 1,  # added to leading timesteps (VP only)
        karras: bool = False,  # Karras et al. (2022) σ grid instead of the spacing (VP only)
        final_sigma: FinalSigma = "zero",  # the last level: 0, or σ(t = 0) (VP only)
        quantize_t: bool = False,  # integer network timesteps, as some diffusers schedulers pass (denoiser.py)
        eta: float | None = None,  # stochasticity of ddim / euler_a; None keeps each one's default
        shift: PositiveFloat | None = None,  # flow models: SD3's timestep shift for sampling; None: the model's
        guidance_interval: Sequence[float] | None = None,  # [σ_lo, σ_hi] (VE σ): guide only there (cfg.py)
        guidance_rescale: UnitInterval = 0.0,  # φ of Lin et al.'s guidance rescale (cfg.py); 0 is off, 0.7 typical
    ) -> None:
        self.sampler = sampler
        self.sample_fn = get_sampler(sampler)
        if eta is not None and "eta" not in inspect.signature(self.sample_fn).parameters:
            raise ValueError(f"sampler {sampler!r} takes no eta; use 'ddim' or 'euler_a', or set eta=null")
        for name, value, choices in (("spacing", spacing, Spacing), ("final_sigma", final_sigma, FinalSigma)):
            if value is not None and value not in get_args(choices):
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(get_args(choices))}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if shift is not None and shift <= 0:
            raise ValueError(f"shift must be > 0 (1 = no shift), got {shift}")
        self.options = {} if eta is None else {"eta": eta}
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.spacing = spacing
        self.grid = dict(steps_offset=steps_offset, karras=karras, final_sigma=final_sigma)
        self.quantize_t = quantize_t
        self.shift = shift
        self.guidance = dict(
            interval=None if guidance_interval is None else list(guidance_interval), rescale=guidance_rescale
        )
        check_guidance_options(guidance_interval, guidance_rescale)  # here, not at the first sample

    def check(self, schedule: NoiseSchedule | FlowSchedule) -> None:
        """Raise, naming the valid choices, for settings that cannot sample a model of this schedule."""
        if not isinstance(schedule, FlowSchedule):
            if self.shift is not None:
                raise ValueError("shift applies to rectified-flow models (diffusion=flow) only; set shift=null")
            return
        get_sampler(self.sampler, flow=True)
        if self.spacing is not None and self.spacing not in FLOW_SPACINGS:
            raise ValueError(
                f"spacing {self.spacing!r} has no rectified-flow grid; use one of {', '.join(FLOW_SPACINGS)} or null"
            )
        if self.grid["karras"] or self.grid["final_sigma"] != "zero" or self.options:
            raise ValueError(
                "karras, final_sigma and eta apply to VP models only; a flow model is sampled from t = 1 to 0 "
                f"with {', '.join(FLOW_SAMPLERS)}"
            )

    def __call__(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        prediction: str,
        context: Tensor,
        uncond_context: Tensor | None,
        shape: Sequence[int],
        seeds: Sequence[int],
        guide_fn: ModelFn | None = None,
    ) -> Tensor:  # context B×L×D, shape C×H×W -> B×C×H×W
        """Latents for len(seeds) images; image i depends only on (seeds[i], context[i]). With `guide_fn` (a weaker
        network of the same schedule and prediction) the guidance is autoguidance instead of CFG."""
        if len(seeds) != context.shape[0]:
            raise ValueError(
                f"got {len(seeds)} seeds for {context.shape[0]} contexts; pass one seed per image"
            )
        self.check(schedule)
        if isinstance(schedule, FlowSchedule):
            if prediction != FLOW_PREDICTION:
                raise ValueError(f"a FlowSchedule's network predicts {FLOW_PREDICTION!r}, got prediction={prediction!r}")
            shift = schedule.shift if self.shift is None else self.shift
            spacing = self.spacing or FLOW_DEFAULT_SPACING
            sigmas = flow_sigmas(schedule.num_timesteps, self.num_steps, shift, spacing)
            sample_fn = get_sampler(self.sampler, flow=True)

            def wrap(fn: ModelFn) -> FlowDenoiser:
                return FlowDenoiser(fn, schedule, self.quantize_t)
        else:
            sigmas = make_sigmas(schedule, self.num_steps, spacing=self.spacing or VP_DEFAULT_SPACING, **self.grid)
            sample_fn = self.sample_fn

            def wrap(fn: ModelFn) -> Denoiser:
                return Denoiser(fn, schedule, prediction, self.quantize_t)
        denoiser = CFGDenoiser(
            wrap(model_fn),
            context,
            uncond_context,
            self.guidance_scale,
            guide=None if guide_fn is None else wrap(guide_fn),
            **self.guidance,
        )
        noise = PerImageNoise(seeds, shape, device=context.device)
        x = noise.draw() if isinstance(schedule, FlowSchedule) else initial_latents(noise.draw(), sigmas[0])
        return sample_fn(denoiser, x, sigmas, noise_fn=noise, **self.options)


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
        with full_precision(z.device.type):  # the VAE decodes in fp32 also under bf16 autocast (speed.py)
            return self.first_stage.decode_latents(z.float()).clamp(-1, 1)
