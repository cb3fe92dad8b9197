"""The samplers solve the right equations: checks against closed forms, independent of diffusers.

For data x_0 ~ N(0, c²) the exact denoiser is D(x, σ) = c²·x/(c² + σ²), the probability-flow ODE
dx/dσ = (x − D)/σ = σ·x/(c² + σ²) has the solution x(σ) ∝ √(c² + σ²), and ancestral sampling
must end with standard deviation c.
"""

from __future__ import annotations

import pytest
import torch

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import get_sampler, make_sigmas

DATA_STD = 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
    return DATA_STD**2 * x / (DATA_STD**2 + sigma**2)


def ode_error(name: str, num_steps: int) -> float:
    sigmas = make_sigmas(NoiseSchedule.scaled_linear(), num_steps, karras=True).double()
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    exact = DATA_STD / (DATA_STD**2 + sigmas[0] ** 2).sqrt()
    return abs(get_sampler(name)(gaussian_denoiser, x, sigmas).item() / exact.item() - 1)


def test_euler_is_first_order():
    assert ode_error("euler", 40) == pytest.approx(ode_error("euler", 20) / 2, rel=0.1)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_second_order_samplers_beat_euler_by_an_order_of_magnitude(name):
    assert ode_error(name, 40) < ode_error("euler", 40) / 10
    assert ode_error(name, 40) < ode_error(name, 20) / 4


@pytest.mark.parametrize("name", ["ddpm", "euler_a"])
def test_ancestral_samplers_reach_the_data_distribution(name):
    sigmas = make_sigmas(NoiseSchedule.scaled_linear(), 300, spacing="trailing")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 256, 256, generator=generator) * (DATA_STD**2 + sigmas[0] ** 2).sqrt()

    def noise_fn(step: int) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator)

    out = get_sampler(name)(gaussian_denoiser, x, sigmas, noise_fn=noise_fn)
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.04)


def test_ddim_eta_zero_is_euler():
    sigmas = make_sigmas(NoiseSchedule.scaled_linear(), 12)
    x = torch.randn(2, 3, 4, 4)
    ddim = get_sampler("ddim")(
        gaussian_denoiser, x, sigmas, noise_fn=lambda step: pytest.fail("no noise at η=0")
    )
    torch.testing.assert_close(ddim, get_sampler("euler")(gaussian_denoiser, x, sigmas))
