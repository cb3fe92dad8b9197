"""Noise schedules: golden values against diffusers' DDPMScheduler, and closed-form identities."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ldm_train.diffusion.schedules import NoiseSchedule, build_schedule

DIFFUSERS_CONFIG = {
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize("kind", ["scaled_linear", "linear", "cosine"])
def test_alphas_cumprod_match_diffusers(kind, zero_terminal_snr):
    reference = DDPMScheduler(**DIFFUSERS_CONFIG[kind], rescale_betas_zero_snr=zero_terminal_snr)
    ours = build_schedule(kind, zero_terminal_snr=zero_terminal_snr)
    torch.testing.assert_close(ours.alphas_cumprod, reference.alphas_cumprod.double(), rtol=0, atol=1e-6)
    # diffusers recovers rescaled betas as ᾱ_t/ᾱ_{t−1} in float32, losing digits near t = T; we use float64.
    torch.testing.assert_close(ours.betas, reference.betas.double(), rtol=5e-5, atol=1e-6)


def test_stable_diffusion_golden_values():
    schedule = NoiseSchedule.scaled_linear()
    t = torch.tensor([0, 999])
    assert schedule.alpha_bar(t)[0].item() == pytest.approx(1 - 0.00085)
    # Lin et al. (2024), Table 1: SD's √ᾱ_T = 0.068265, SNR(T) = 0.004682.
    assert schedule.alpha(t)[1].item() == pytest.approx(0.068265, abs=1e-6)
    assert schedule.snr(t)[1].item() == pytest.approx(0.004682, abs=1e-6)
    # k-diffusion's sigma_min / sigma_max for SD checkpoints.
    assert schedule.ve_sigmas()[[0, 999]].tolist() == pytest.approx([0.0291672, 14.6146412], rel=1e-5)


def test_zero_terminal_snr_rescale_lin_et_al_algorithm_1():
    base = NoiseSchedule.scaled_linear()
    rescaled = base.rescaled_zero_terminal_snr()
    assert rescaled.alphas_cumprod[-1] == 0 and rescaled.betas[-1] == 1 and rescaled.has_zero_terminal_snr
    torch.testing.assert_close(rescaled.alphas_cumprod[0], base.alphas_cumprod[0])  # √ᾱ_1 is kept
    # √ᾱ is an affine map of the original √ᾱ (shift then scale), so second differences are proportional.
    ratio = rescaled.alphas_cumprod.sqrt().diff() / base.alphas_cumprod.sqrt().diff()
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
    assert torch.isinf(rescaled.ve_sigmas()[-1]) and rescaled.snr(torch.tensor([999])).item() == 0


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine"])
def test_accessor_identities(kind):
    schedule = build_schedule(kind)
    t = torch.arange(0, 1000, 37)
    alpha, sigma, snr = schedule.alpha(t), schedule.sigma(t), schedule.snr(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    torch.testing.assert_close(snr, alpha**2 / sigma**2, rtol=1e-5, atol=0)
    torch.testing.assert_close(schedule.ve_sigmas()[t].float(), snr.rsqrt(), rtol=1e-5, atol=0)
    assert alpha.dtype == torch.float32 and (snr.diff() < 0).all()


def test_bad_input_names_the_problem():
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="must be integers"):
        schedule.alpha(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        schedule.alpha(torch.tensor([1000]))
    with pytest.raises(ValueError, match="unknown schedule kind"):
        build_schedule("sigmoid")
    with pytest.raises(ValueError, match="no beta_start"):
        build_schedule("cosine", beta_start=0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))


def test_build_schedule_defaults_per_kind():
    assert build_schedule("linear").betas[-1].item() == pytest.approx(0.02)
    assert build_schedule("scaled_linear").betas[-1].item() == pytest.approx(0.012)
    assert build_schedule("linear", num_timesteps=50, beta_end=0.05).num_timesteps == 50
