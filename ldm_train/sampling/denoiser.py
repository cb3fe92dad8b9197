"""The network as a denoiser D(x, σ) ≈ E[x_0 | x_0 + σ·ε] (Karras et al. 2022, §2; k-diffusion).

The UNet was trained on variance-preserving inputs x_t = √ᾱ·x_0 + √(1−ᾱ)·ε at integer t, with
an ε / v / x_0 output. In VE terms x = x_t/√ᾱ and ᾱ = 1/(1+σ²), so the wrapper feeds it
x_t = x/√(1+σ²) (Karras et al.'s c_in) at t = t(σ), then converts the output to x̂_0 with the
same parameterisation code the loss uses.

A rectified-flow network (diffusion/flow.py) is wrapped by `FlowDenoiser` in its own convention instead:
the samplers' noise level is t ∈ [0, 1] and their state is x_t = (1 − t)·x_0 + t·ε itself, so that
k-diffusion's Euler and Heun steps on dx/dσ = (x − D(x, σ))/σ with σ := t are the flow ODE's, dx_t/dt = v
(x_t − x̂_0 = t·v̂), and start at t = 1 (pure noise), where the VE form would need σ = ∞.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.diffusion.objective import ModelFn
from ldm_train.diffusion.parameterization import check_prediction, regression_target, x0_and_eps
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.discrete import sampling_sigmas, sigma_to_t


class Denoiser:
    """D(x, σ, context) -> x̂_0 for a discrete-time VP network `model_fn(x_t, t, context)`.

    `quantize_t` rounds t(σ) to the nearest integer, as k-diffusion's `DiscreteSchedule(quantize=True)`
    and diffusers' DPMSolverMultistepScheduler (Karras sigmas) do; otherwise the network gets the
    fractional t it would see from diffusers' Euler-family schedulers.
    """

    def __init__(self, model_fn: ModelFn, schedule: NoiseSchedule, prediction: str, quantize_t: bool = False):
        check_prediction(prediction)
        self.model_fn = model_fn
        self.prediction = prediction
        self.quantize_t = quantize_t
        self.sigmas = sampling_sigmas(schedule)

    def __call__(self, x: Tensor, sigma: Tensor, context: Any = None) -> Tensor:  # B×C×H×W, B -> B×C×H×W
        # σ → (t, ᾱ) in float64 on the CPU, where the samplers keep their grids (MPS has no float64).
        sigma = sigma.detach().to("cpu", torch.float64).expand(x.shape[0])
        t = sigma_to_t(self.sigmas, sigma)
        t = (t.round() if self.quantize_t else t).to(x.device, torch.float32)
        alpha_bar = (1 / (1 + sigma**2)).to(x.device, x.dtype)
        x_t = x * alpha_bar.sqrt().view(-1, *([1] * (x.ndim - 1)))
        output = self.model_fn(x_t, t, context).to(x.dtype)
        x0, _ = x0_and_eps(self.prediction, x_t, alpha_bar, output)
        return x0

    def denoised_from_output(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:  # B×C×H×W -> B×C×H×W
        """x̂_0 implied by a network output (ε, v or x_0) at (x, σ), as in `__call__`."""
        alpha_bar = (1 / (1 + sigma.detach().to(x.device, torch.float64) ** 2)).to(x.dtype).expand(x.shape[0])
        x_t = x * alpha_bar.sqrt().view(-1, *([1] * (x.ndim - 1)))
        return x0_and_eps(self.prediction, x_t, alpha_bar, output)[0]

    def ve_sigma(self, sigma: Tensor) -> Tensor:  # B -> B: the samplers' σ already is the VE noise level
        return sigma

    def output_from_denoised(self, x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:  # B×C×H×W -> B×C×H×W
        """The network output (ε, v or x_0) that gives `denoised` at (x, σ): the inverse of `__call__`'s last line."""
        sigma = sigma.detach().to(x.device, torch.float64).expand(x.shape[0])
        alpha_bar = (1 / (1 + sigma**2)).to(x.dtype)
        eps = (x - denoised) / sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # x = x̂_0 + σ·ε̂ (VE)
        return regression_target(self.prediction, denoised, eps, alpha_bar)


class FlowDenoiser:
    """D(x_t, t, context) -> x̂_0 = x_t − t·v̂ for a rectified-flow network `model_fn(x_t, t·T, context) -> v̂`.

    `quantize_t` gives the network ⌊t·T⌋, the integer timesteps DPMSolverMultistepScheduler(use_flow_sigmas=True)
    passes; otherwise it gets the fractional t·T of diffusers' FlowMatch schedulers.
    """

    def __init__(self, model_fn: ModelFn, schedule: FlowSchedule, quantize_t: bool = False) -> None:
        self.model_fn = model_fn
        self.schedule = schedule
        self.quantize_t = quantize_t

    def __call__(self, x: Tensor, t: Tensor, context: Any = None) -> Tensor:  # B×C×H×W, B -> B×C×H×W
        t = t.detach().to("cpu", torch.float64).expand(x.shape[0])
        timestep = self.schedule.timestep(t)
        timestep = (timestep.floor() if self.quantize_t else timestep).to(x.device, torch.float32)
        velocity = self.model_fn(x, timestep, context).to(x.dtype)  # B×C×H×W: v̂ = ε̂ − x̂_0
        return self.denoised_from_output(x, t, velocity)

    def ve_sigma(self, t: Tensor) -> Tensor:  # B -> B: σ_VE = t/(1 − t) (+inf at t = 1), the same SNR as t
        return t / (1 - t)

    def output_from_denoised(self, x: Tensor, t: Tensor, denoised: Tensor) -> Tensor:  # B×C×H×W -> B×C×H×W
        """The velocity v̂ = (x_t − x̂_0)/t that gives `denoised` at (x_t, t)."""
        return (x - denoised) / _per_sample(t, x)

    def denoised_from_output(self, x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:  # B×C×H×W -> B×C×H×W
        """x̂_0 = x_t − t·v̂, as in `__call__`."""
        return x - _per_sample(t, x) * velocity


def _per_sample(t: Tensor, like: Tensor) -> Tensor:  # scalar or B -> B×1×…×1, like's device and dtype
    return t.detach().to(like.device, like.dtype).expand(like.shape[0]).view(-1, *([1] * (like.ndim - 1)))
