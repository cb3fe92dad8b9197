"""Zero terminal SNR (Lin et al. 2024): σ_T = ∞ must not reach the samplers as inf or NaN."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import SAMPLERS, Denoiser, PerImageNoise, get_sampler, initial_latents, make_sigmas
from ldm_train.sampling.discrete import ZERO_SNR_ALPHA_BAR, sampling_sigmas

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SEEDS = [5, 6]
SHAPE = (4, 8, 8)


@pytest.fixture
def ztsnr():
    return NoiseSchedule.scaled_linear().rescaled_zero_terminal_snr()


def test_schedule_reports_infinite_sigma_but_sampling_table_is_finite(ztsnr):
    assert torch.isinf(ztsnr.ve_sigmas()[-1])
    table = sampling_sigmas(ztsnr)
    assert torch.isfinite(table).all()
    expected = ((1 - ZERO_SNR_ALPHA_BAR) / ZERO_SNR_ALPHA_BAR) ** 0.5  # ≈ 4096
    assert table[-1].item() == pytest.approx(expected)
    sigmas = make_sigmas(ztsnr, 10, spacing="trailing")
    assert sigmas[0].item() == pytest.approx(expected) and torch.isfinite(sigmas).all()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_stays_finite_from_t_equals_T(name, ztsnr, toy_unet):
    sigmas = make_sigmas(ztsnr, 8, spacing="trailing")
    noise = PerImageNoise(SEEDS, SHAPE)
    denoiser = Denoiser(toy_unet(ztsnr, "v"), ztsnr, "v")
    out = get_sampler(name)(denoiser, initial_latents(noise.draw(), sigmas[0]), sigmas, noise_fn=noise)
    assert torch.isfinite(out).all()
    assert out.abs().max() < 10


@pytest.mark.parametrize(
    "scheduler_cls,name",
    [
        (EulerDiscreteScheduler, "euler"),
        (EulerAncestralDiscreteScheduler, "euler_a"),
        (DPMSolverMultistepScheduler, "dpmpp_2m"),
    ],
)
def test_matches_diffusers_rescaled_schedulers(scheduler_cls, name, ztsnr, toy_unet, diffusers_loop):
    """diffusers' Euler-family and DPM-Solver schedulers clamp ᾱ_T = 2⁻²⁴ exactly as we do."""
    num_steps = 10
    model = toy_unet(ztsnr, "v")
    scheduler = scheduler_cls(
        **SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True
    )
    scheduler.set_timesteps(num_steps)
    sigmas = make_sigmas(ztsnr, num_steps, spacing="trailing")
    noise = PerImageNoise(SEEDS, SHAPE)
    x_start = initial_latents(noise.draw(), sigmas[0])
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    for g in generators:
        torch.randn((1, *SHAPE), generator=g)
    vp = scheduler_cls is DPMSolverMultistepScheduler
    start = x_start / (1 + sigmas[0] ** 2).sqrt() if vp else x_start
    ref = diffusers_loop(scheduler, model, start, num_steps, generators if name == "euler_a" else None)[-1]
    ours = get_sampler(name)(Denoiser(model, ztsnr, "v"), x_start, sigmas, noise_fn=noise)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_ddpm_close_to_diffusers_exact_zero_snr(ztsnr, toy_unet, diffusers_loop):
    """diffusers' DDPM works in VP space with ᾱ_T = 0 exactly; our VE clamp changes the first step by
    O(√2⁻²⁴) ≈ 2.4e-4 relative, which stays small over the trajectory."""
    num_steps = 10
    model = toy_unet(ztsnr, "v")
    scheduler = DDPMScheduler(
        **SD_BETAS,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        clip_sample=False,
    )
    scheduler.set_timesteps(num_steps)
    sigmas = make_sigmas(ztsnr, num_steps, spacing="trailing")
    noise = PerImageNoise(SEEDS, SHAPE)
    x_start = initial_latents(noise.draw(), sigmas[0])
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    for g in generators:
        torch.randn((1, *SHAPE), generator=g)
    ref = diffusers_loop(scheduler, model, x_start / (1 + sigmas[0] ** 2).sqrt(), num_steps, generators)[-1]
    ours = get_sampler("ddpm")(Denoiser(model, ztsnr, "v"), x_start, sigmas, noise_fn=noise)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-2)
