"""ε / v / x_0 parameterisations: round trips, and agreement with diffusers' forward process."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ldm_train.diffusion.parameterization import q_sample, regression_target, x0_and_eps
from ldm_train.diffusion.schedules import NoiseSchedule

T = torch.tensor([0, 10, 500, 999])


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_target_round_trips_to_x0_and_eps(prediction):
    schedule = NoiseSchedule.scaled_linear()
    x0, noise = _batch()
    alpha_bar = schedule.alpha_bar(T)
    x_t = q_sample(x0, noise, alpha_bar)
    target = regression_target(prediction, x0, noise, alpha_bar)
    x0_hat, eps_hat = x0_and_eps(prediction, x_t, alpha_bar, target)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_output_round_trips_through_x0_and_eps(prediction):
    """Any network output is reproduced by the target of the (x̂_0, ε̂) it implies."""
    schedule = NoiseSchedule.scaled_linear()
    x_t, output = _batch(1)
    alpha_bar = schedule.alpha_bar(T[1:])
    x_t, output = x_t[1:], output[1:]
    x0_hat, eps_hat = x0_and_eps(prediction, x_t, alpha_bar, output)
    torch.testing.assert_close(q_sample(x0_hat, eps_hat, alpha_bar), x_t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        regression_target(prediction, x0_hat, eps_hat, alpha_bar), output, rtol=1e-4, atol=1e-4
    )


def test_forward_process_and_velocity_match_diffusers():
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = NoiseSchedule.scaled_linear()
    x0, noise = _batch(2)
    alpha_bar = schedule.alpha_bar(T)
    torch.testing.assert_close(q_sample(x0, noise, alpha_bar), reference.add_noise(x0, noise, T))
    torch.testing.assert_close(
        regression_target("v", x0, noise, alpha_bar), reference.get_velocity(x0, noise, T)
    )


def test_v_at_zero_terminal_snr_is_minus_x0():
    schedule = NoiseSchedule.scaled_linear().rescaled_zero_terminal_snr()
    x0, noise = _batch(3)
    alpha_bar = schedule.alpha_bar(torch.full((4,), 999))
    torch.testing.assert_close(q_sample(x0, noise, alpha_bar), noise)
    torch.testing.assert_close(regression_target("v", x0, noise, alpha_bar), -x0)
    x0_hat, eps_hat = x0_and_eps("v", noise, alpha_bar, -x0)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)


def test_unknown_prediction_names_the_options():
    with pytest.raises(ValueError, match="'epsilon', 'v_prediction'"):
        regression_target("epsilon", torch.zeros(1), torch.zeros(1), torch.ones(1))
