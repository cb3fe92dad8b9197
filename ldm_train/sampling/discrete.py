"""A discrete-time schedule seen as a function of the continuous VE noise level σ.

Samplers work in k-diffusion's variance-exploding convention, x = x_t/√ᾱ_t = x_0 + σ·ε with
σ = √((1−ᾱ_t)/ᾱ_t), and only ever name noise levels by σ. The network was trained on integer
t, so σ is mapped back to t by interpolating ln σ between neighbouring timesteps — the inverse
used by k-diffusion's `DiscreteSchedule` and diffusers' `_sigma_to_t`.

Zero terminal SNR (ᾱ_T = 0) makes σ_T infinite, and x = x_t/√ᾱ_t unrepresentable. Like diffusers'
Euler / DPM-Solver schedulers we replace ᾱ_T = 0 by 2⁻²⁴ (σ_T ≈ 4096) when sampling; the network
then sees x_t = x/√(1+σ²) ≈ pure noise, as it did in training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm_train.diffusion.schedules import NoiseSchedule

ZERO_SNR_ALPHA_BAR = 2.0**-24  # diffusers' stand-in for ᾱ_T = 0 (EulerDiscreteScheduler & co.)


def sampling_sigmas(schedule: NoiseSchedule) -> Tensor:  # -> T (float64, CPU), increasing in t
    """σ_VE(t) for t = 0..T−1, finite everywhere (ᾱ = 0 replaced by 2⁻²⁴)."""
    alpha_bar = schedule.alphas_cumprod
    alpha_bar = torch.where(alpha_bar == 0, torch.full_like(alpha_bar, ZERO_SNR_ALPHA_BAR), alpha_bar)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def t_to_sigma(sigmas: Tensor, t: Tensor) -> Tensor:  # table T, t N (float) -> N (float64)
    """σ at possibly fractional t, interpolating ln σ linearly between integer timesteps."""
    log_sigmas = sigmas.log()
    t = t.to(torch.float64).clamp(0, len(sigmas) - 1)
    low = t.floor().long().clamp(max=len(sigmas) - 2)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()


def sigma_to_t(sigmas: Tensor, sigma: Tensor) -> Tensor:  # table T, sigma B -> B (float64)
    """Continuous t with t_to_sigma(t) = σ, clamped to [0, T−1]."""
    log_sigmas = sigmas.to(sigma.device, torch.float64).log()
    log_sigma = sigma.to(torch.float64).clamp(min=torch.finfo(torch.float32).tiny).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
    w = (log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])
    return low + w.clamp(0, 1)
