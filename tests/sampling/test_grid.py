"""Noise-level grids: the timesteps and σ's diffusers' schedulers step through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.discrete import sampling_sigmas, sigma_to_t, t_to_sigma
from ldm_train.sampling.grid import karras_sigmas, make_sigmas, spaced_timesteps

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("num_steps", [1, 7, 10, 25, 50, 999])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_timesteps_match_euler_scheduler(spacing, num_steps):
    if spacing == "linspace" and num_steps == 1:
        # diffusers' np.linspace(0, T-1, 1) is [0]: one "step" from the clean end. We start at T-1.
        assert spaced_timesteps(1000, 1, "linspace").tolist() == [999.0]
        return
    scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=1)
    scheduler.set_timesteps(num_steps)
    ours = spaced_timesteps(1000, num_steps, spacing, steps_offset=1)
    np.testing.assert_allclose(ours.numpy(), scheduler.timesteps.numpy(), rtol=0, atol=1e-3)


def test_sd_leading_timesteps_golden():
    assert spaced_timesteps(1000, 50)[:3].tolist() == [981, 961, 941]
    assert spaced_timesteps(1000, 50)[-1].item() == 1


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_integer_timesteps_match_ddim(spacing, num_steps):
    scheduler = DDIMScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=1)
    scheduler.set_timesteps(num_steps)
    assert spaced_timesteps(1000, num_steps, spacing, 1).long().tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("num_steps", [10, 30])
def test_sigmas_match_dpm_solver(karras, final, num_steps):
    scheduler = DPMSolverMultistepScheduler(
        **SD_BETAS, use_karras_sigmas=karras, timestep_spacing="trailing", final_sigmas_type=final
    )
    scheduler.set_timesteps(num_steps)
    ours = make_sigmas(
        NoiseSchedule.scaled_linear(), num_steps, spacing="trailing", karras=karras, final_sigma=final
    )
    torch.testing.assert_close(ours, scheduler.sigmas, rtol=1e-5, atol=1e-7)


def test_karras_closed_form():
    sigmas = karras_sigmas(5, 0.1, 10.0, rho=7.0)
    assert sigmas[0].item() == pytest.approx(10.0) and sigmas[-1].item() == pytest.approx(0.1)
    middle = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    assert sigmas[2].item() == pytest.approx(middle)
    assert (sigmas.diff() < 0).all()


def test_sigma_t_round_trip():
    table = sampling_sigmas(NoiseSchedule.scaled_linear())
    t = torch.tensor([0.0, 1.0, 17.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(table, t_to_sigma(table, t)), t)
    integer = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(t_to_sigma(table, integer), table)
    # σ outside the table clamps to the ends instead of extrapolating.
    outside = sigma_to_t(table, torch.tensor([1e-6, 1e6]))
    assert outside.tolist() == [0.0, 999.0]


def test_bad_grid_requests_name_the_fix():
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="num_steps must be in"):
        make_sigmas(schedule, 0)
    with pytest.raises(ValueError, match="lower steps_offset"):
        make_sigmas(schedule, 1000, spacing="leading", steps_offset=1)
    with pytest.raises(ValueError, match="'leading', 'linspace' or 'trailing'"):
        make_sigmas(schedule, 10, spacing="uniform")
    with pytest.raises(ValueError, match="'zero' or 'sigma_min'"):
        make_sigmas(schedule, 10, final_sigma="min")
