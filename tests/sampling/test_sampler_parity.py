"""Each sampler's whole trajectory matches the corresponding diffusers scheduler loop.

Settings used (all on SD's scaled_linear betas 0.00085..0.012, T = 1000):
  - ddpm      DDPMScheduler(clip_sample=False, variance_type="fixed_small"), leading+offset 1 / trailing
  - ddim      DDIMScheduler(clip_sample=False), leading+offset 1 with set_alpha_to_one False (SD 1.x
              config, our final_sigma="sigma_min") and True (final_sigma="zero"), eta 0 / 0.5; trailing eta 1
  - euler     EulerDiscreteScheduler: leading+offset 1, linspace (fractional t at 25 steps), trailing, karras
  - euler_a   EulerAncestralDiscreteScheduler: leading+offset 1, trailing
  - heun      HeunDiscreteScheduler: leading+offset 1, linspace
  - dpmpp_2m  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
              lower_order_final=True): trailing with final σ 0 and σ_min; karras (quantize_t=True,
              as diffusers rounds Karras timesteps)
Both loops start from the same state; stochastic samplers draw from the same per-image generators.
States are compared in VP space, x_t = x/√(1+σ²), where both are O(1).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import Denoiser, PerImageNoise, get_sampler, initial_latents, make_sigmas

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}
VP_SCHEDULERS = (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler)
STOCHASTIC = {"ddpm", "euler_a"}
SEEDS = [3, 11]
SHAPE = (4, 8, 8)
LEADING = dict(timestep_spacing="leading", steps_offset=1)

# (id, sampler, sampler options, grid options, quantize_t, diffusers class, its config, its step() kwargs)
CASES = [
    (
        "ddpm-leading",
        "ddpm",
        {},
        dict(spacing="leading"),
        False,
        DDPMScheduler,
        dict(LEADING, clip_sample=False),
        {},
    ),
    (
        "ddpm-trailing",
        "ddpm",
        {},
        dict(spacing="trailing"),
        False,
        DDPMScheduler,
        dict(timestep_spacing="trailing", clip_sample=False),
        {},
    ),
    (
        "ddim-sd1-config",
        "ddim",
        {},
        dict(spacing="leading", final_sigma="sigma_min"),
        False,
        DDIMScheduler,
        dict(LEADING, clip_sample=False, set_alpha_to_one=False),
        {},
    ),
    (
        "ddim-alpha-to-one",
        "ddim",
        {},
        dict(spacing="leading"),
        False,
        DDIMScheduler,
        dict(LEADING, clip_sample=False),
        {},
    ),
    (
        "ddim-eta0.5",
        "ddim",
        dict(eta=0.5),
        dict(spacing="leading"),
        False,
        DDIMScheduler,
        dict(LEADING, clip_sample=False),
        dict(eta=0.5),
    ),
    (
        "ddim-eta1-trailing",
        "ddim",
        dict(eta=1.0),
        dict(spacing="trailing"),
        False,
        DDIMScheduler,
        dict(timestep_spacing="trailing", clip_sample=False),
        dict(eta=1.0),
    ),
    ("euler-leading", "euler", {}, dict(spacing="leading"), False, EulerDiscreteScheduler, LEADING, {}),
    (
        "euler-linspace",
        "euler",
        {},
        dict(spacing="linspace"),
        False,
        EulerDiscreteScheduler,
        dict(timestep_spacing="linspace"),
        {},
    ),
    (
        "euler-trailing",
        "euler",
        {},
        dict(spacing="trailing"),
        False,
        EulerDiscreteScheduler,
        dict(timestep_spacing="trailing"),
        {},
    ),
    (
        "euler-karras",
        "euler",
        {},
        dict(karras=True),
        False,
        EulerDiscreteScheduler,
        dict(timestep_spacing="linspace", use_karras_sigmas=True),
        {},
    ),
    (
        "euler_a-leading",
        "euler_a",
        {},
        dict(spacing="leading"),
        False,
        EulerAncestralDiscreteScheduler,
        LEADING,
        {},
    ),
    (
        "euler_a-trailing",
        "euler_a",
        {},
        dict(spacing="trailing"),
        False,
        EulerAncestralDiscreteScheduler,
        dict(timestep_spacing="trailing"),
        {},
    ),
    ("heun-leading", "heun", {}, dict(spacing="leading"), False, HeunDiscreteScheduler, LEADING, {}),
    (
        "heun-linspace",
        "heun",
        {},
        dict(spacing="linspace"),
        False,
        HeunDiscreteScheduler,
        dict(timestep_spacing="linspace"),
        {},
    ),
    (
        "dpmpp_2m-trailing",
        "dpmpp_2m",
        {},
        dict(spacing="trailing"),
        False,
        DPMSolverMultistepScheduler,
        dict(timestep_spacing="trailing"),
        {},
    ),
    (
        "dpmpp_2m-sigma_min",
        "dpmpp_2m",
        {},
        dict(spacing="trailing", final_sigma="sigma_min"),
        False,
        DPMSolverMultistepScheduler,
        dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"),
        {},
    ),
    (
        "dpmpp_2m-karras",
        "dpmpp_2m",
        {},
        dict(karras=True),
        True,
        DPMSolverMultistepScheduler,
        dict(use_karras_sigmas=True),
        {},
    ),
]


def _is_stochastic(name: str, options: dict) -> bool:
    return name in STOCHASTIC or options.get("eta", 0) > 0


@pytest.mark.parametrize("num_steps", [10, 25])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_diffusers(case, prediction, num_steps, toy_unet, diffusers_loop, diffusers_grid):
    _, name, options, grid, quantize_t, scheduler_cls, config, step_kwargs = case
    schedule = NoiseSchedule.scaled_linear()
    model = toy_unet(schedule, prediction)
    scheduler = scheduler_cls(**SD_BETAS, prediction_type=DIFFUSERS_PREDICTION[prediction], **config)
    scheduler.set_timesteps(num_steps)
    sigmas = make_sigmas(schedule, num_steps, **grid)
    torch.testing.assert_close(sigmas, diffusers_grid(scheduler), rtol=1e-4, atol=1e-6)

    noise = PerImageNoise(SEEDS, SHAPE)
    x_start = initial_latents(noise.draw(), sigmas[0])
    stochastic = _is_stochastic(name, options)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS] if stochastic else None
    for g in generators or []:
        torch.randn((1, *SHAPE), generator=g)  # the pipeline's initial-latents draw
    theirs_start = x_start / (1 + sigmas[0] ** 2).sqrt() if scheduler_cls in VP_SCHEDULERS else x_start
    theirs = diffusers_loop(scheduler, model, theirs_start, num_steps, generators, **step_kwargs)
    if scheduler_cls not in VP_SCHEDULERS:
        theirs = [x / (1 + s**2).sqrt() for x, s in zip(theirs, sigmas[1:])]

    ours = []
    denoiser = Denoiser(model, schedule, prediction, quantize_t=quantize_t)
    final = get_sampler(name)(
        denoiser,
        x_start,
        sigmas,
        noise_fn=noise if stochastic else None,
        callback=lambda i, x, d: ours.append(x),
        **options,
    )
    ours = [x / (1 + s**2).sqrt() for x, s in zip(ours[1:] + [final], sigmas[1:])]

    assert final.abs().max() < 10, "the toy model should give O(1) samples"
    for step, (mine, ref) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(
            mine, ref, rtol=1e-4, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}"
        )
