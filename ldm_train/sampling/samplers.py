"""Samplers: short pure functions with one signature,

    sampler(denoiser, x, sigmas, *, noise_fn=None, callback=None, **options) -> x at sigmas[-1]

in k-diffusion's convention: x = x_0 + σ·ε starts at σ_0 (x = noise·√(1+σ_0²), see seeds.py),
`denoiser(x, σ_B) -> x̂_0`, `sigmas` decreasing (grid.py). `noise_fn(step) -> tensor like x` supplies
ancestral noise (default torch.randn_like; deterministic samplers never call it), and
`callback(step, x, denoised)` sees every step (previews, trajectory tests).

DDPM, DDIM and Euler-ancestral are one update in VE form. DDIM's step (Song et al. 2021, eq. 12)
with σ_t(η) from eq. 16, divided through by √ᾱ_{t−1}, reads x' = x̂_0 + σ_down·ε̂ + σ_up·z with
σ_up = η·σ'·√(1 − σ'²/σ²) and σ_down = √(σ'² − σ_up²) — Euler to σ_down plus fresh noise of std
σ_up, i.e. k-diffusion's ancestral step. η = 1 is DDPM's posterior q(x_{t−1} | x_t, x̂_0)
(Ho et al. 2020, eqs. 6–7), and η = 0 is deterministic DDIM, which is Euler on this grid.

Rectified-flow models (`FlowDenoiser`, sigmas = t from 1 to 0, x = x_t = (1 − t)·x_0 + t·ε) use the same
signature. There (x − D)/σ = (x_t − x̂_0)/t = v̂, so `sample_euler` and `sample_heun` are, unchanged, Euler and
Heun on the flow ODE dx_t/dt = v (diffusers' FlowMatchEuler/HeunDiscreteScheduler). DPM-Solver++ depends on the
path's α_t = 1 − t and has its own function; the ancestral samplers (ddpm, ddim, euler_a) add noise for the VP
path and do not apply: `get_sampler(name, flow=True)` names the ones that do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]  # (x B×C×H×W, σ B) -> x̂_0 B×C×H×W
NoiseFn = Callable[[int], Tensor]
StepCallback = Callable[[int, Tensor, Tensor], None]
Sampler = Callable[..., Tensor]

# diffusers' DPMSolverMultistepScheduler: with `lower_order_final`, runs shorter than this finish
# with a first-order step, which "stabilizes the sampling of DPMSolver for steps < 15".
LOWER_ORDER_FINAL_MAX_STEPS = 15


def _denoise(denoiser: Denoise, x: Tensor, sigma: Tensor) -> Tensor:
    return denoiser(x, sigma.expand(x.shape[0]))


def _draw(noise_fn: NoiseFn | None, step: int, x: Tensor) -> Tensor:
    return torch.randn_like(x) if noise_fn is None else noise_fn(step).to(x)


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up): deterministic target level and fresh-noise std of one ancestral step."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


@torch.no_grad()
def sample_euler(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, Alg. 1)."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise(denoiser, x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler to σ_down, then add noise of std σ_up (see the module docstring)."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise(denoiser, x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        if sigma_up > 0:
            x = x + _draw(noise_fn, i, x) * sigma_up
    return x


def sample_ddim(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) with stochasticity η; η = 0 is deterministic."""
    return sample_euler_ancestral(denoiser, x, sigmas, noise_fn=noise_fn, callback=callback, eta=eta)


def sample_ddpm(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with the posterior variance β̃_t."""
    return sample_euler_ancestral(denoiser, x, sigmas, noise_fn=noise_fn, callback=callback, eta=1.0)


@torch.no_grad()
def sample_heun(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); the step to σ = 0 is Euler."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise(denoiser, x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            d_next = (x_euler - _denoise(denoiser, x_euler, sigmas[i + 1])) / sigmas[i + 1]
            x = x + (d + d_next) / 2 * dt
    return x


def _multistep_estimate(denoised: Tensor, old_denoised: Tensor | None, h: Tensor, h_last: Tensor | None,
                        first_order: bool) -> Tensor:
    """DPM-Solver++(2M)'s data estimate (Lu et al. 2022, Alg. 2), with r = h_{i−1}/h_i:
    D = (1 + 1/(2r))·x̂_0(t_i) − 1/(2r)·x̂_0(t_{i−1}); just x̂_0(t_i) on a first-order step."""
    if first_order:
        return denoised
    r = h_last / h
    return (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old_denoised


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2) in λ = −ln σ: multistep, one
    network call per step. First order on the first step, on the step to σ = 0, and on the last
    step of short runs when `lower_order_final` (diffusers' defaults)."""
    num_steps = len(sigmas) - 1
    old_denoised, h_last = None, None
    for i in range(num_steps):
        denoised = _denoise(denoiser, x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        h = sigmas[i].log() - sigmas[i + 1].log()  # λ_{i+1} − λ_i; +inf when stepping to σ = 0
        last_low = lower_order_final and i == num_steps - 1 and num_steps < LOWER_ORDER_FINAL_MAX_STEPS
        first_order = old_denoised is None or sigmas[i + 1] == 0 or last_low
        estimate = _multistep_estimate(denoised, old_denoised, h, h_last, first_order)
        x = sigmas[i + 1] / sigmas[i] * x - torch.expm1(-h) * estimate
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_flow_dpmpp_2m(
    denoiser: Denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) on the rectified-flow path x_t = α_t·x_0 + σ_t·ε with α_t = 1 − t,
    σ_t = t, in λ = ln(α_t/σ_t): x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·(e^{−h} − 1)·D, h = λ_{i+1} − λ_i, with D the
    multistep data estimate of `sample_dpmpp_2m` (same first-order steps). `sigmas` are t, from ≤ 1 down to 0."""
    num_steps = len(sigmas) - 1
    lambdas = (1 - sigmas).log() - sigmas.log()  # −inf at t = 1, +inf at t = 0
    old_denoised, h_last = None, None
    for i in range(num_steps):
        denoised = _denoise(denoiser, x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        h = lambdas[i + 1] - lambdas[i]  # +inf from t = 1 or to t = 0
        last_low = lower_order_final and i == num_steps - 1 and num_steps < LOWER_ORDER_FINAL_MAX_STEPS
        first_order = old_denoised is None or sigmas[i + 1] == 0 or last_low or not torch.isfinite(h_last)
        estimate = _multistep_estimate(denoised, old_denoised, h, h_last, first_order)
        x = sigmas[i + 1] / sigmas[i] * x - (1 - sigmas[i + 1]) * torch.expm1(-h) * estimate
        old_denoised, h_last = denoised, h
    return x


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


# The samplers that serve a rectified-flow model (module docstring), under the same names.
FLOW_SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_flow_dpmpp_2m,
}


def get_sampler(name: str, flow: bool = False) -> Sampler:
    """The sampler called `name`: for a discrete-time VP model, or with `flow=True` for a rectified-flow one."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    if not flow:
        return SAMPLERS[name]
    if name not in FLOW_SAMPLERS:
        raise ValueError(
            f"sampler {name!r} cannot sample a rectified-flow model (diffusion=flow): its noise is that of the "
            f"variance-preserving path; use one of {', '.join(FLOW_SAMPLERS)}"
        )
    return FLOW_SAMPLERS[name]
