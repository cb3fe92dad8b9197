"""The network as a denoiser D(x, σ) ≈ E[x_0 | x_0 + σ·ε] (Karras et al. 2022, §2; k-diffusion).

The UNet was trained on variance-preserving inputs x_t = √ᾱ·x_0 + √(1−ᾱ)·ε at integer t, with
an ε / v / x_0 output. In VE terms x = x_t/√ᾱ and ᾱ = 1/(1+σ²), so the wrapper feeds it
x_t = x/√(1+σ²) (Karras et al.'s c_in) at t = t(σ), then converts the output to x̂_0 with the
same parameterisation code the loss uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldm_train.diffusion.objective import ModelFn
from ldm_train.diffusion.parameterization import check_prediction, x0_and_eps
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
