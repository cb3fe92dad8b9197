"""The denoising training objective: everything between a clean latent batch and a loss.

    t ~ p(t),  ε ~ N(0, I) (+ offset),  x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε,
    loss_i = w(SNR(t_i)) · mean ‖target_i − model_fn(x_t, t, context)_i‖²

where the target and the weight depend on the parameterisation (parameterization.py,
weighting.py). The LightningModule only calls `loss` (training) or `loss_at` (validation at
fixed t and noise, so validation curves are comparable across epochs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ldm_train.diffusion.noise import sample_noise
from ldm_train.diffusion.parameterization import Prediction, check_prediction, q_sample, regression_target
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.diffusion.timesteps import (
    EDM_P_MEAN,
    EDM_P_STD,
    TIMESTEP_SAMPLINGS,
    TimestepSampling,
    sample_timesteps,
)
from ldm_train.diffusion.weighting import WEIGHTINGS, Weighting, loss_weight

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]  # (x_t B×C×H×W, t B, context) -> B×C×H×W


class DiffusionObjective:
    """Noise a batch, call the network, return a weighted per-sample regression loss."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        weighting: Weighting = "uniform",
        min_snr_gamma: float = 5.0,
        sigma_data: float = 1.0,
        timestep_sampling: TimestepSampling = "uniform",
        log_normal_mean: float = EDM_P_MEAN,
        log_normal_std: float = EDM_P_STD,
        offset_noise: float = 0.0,
    ) -> None:
        check_prediction(prediction)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(
                f"unknown timestep_sampling {timestep_sampling!r}; use one of {', '.join(TIMESTEP_SAMPLINGS)}"
            )
        if prediction == "eps" and schedule.has_zero_terminal_snr:
            raise ValueError(
                "ε-prediction cannot learn t = T of a zero-terminal-SNR schedule (x_T carries no "
                "signal, so x_0 = (x_T − ε)/0 is undefined); use prediction='v' (Lin et al. 2024, "
                "§3.2) or a schedule without zero_terminal_snr"
            )
        self.schedule = schedule
        self.prediction = prediction
        self.weighting = weighting
        self.min_snr_gamma = min_snr_gamma
        self.sigma_data = sigma_data
        self.timestep_sampling = timestep_sampling
        self.log_normal_mean = log_normal_mean
        self.log_normal_std = log_normal_std
        self.offset_noise = offset_noise
        # Fail at construction, not on the first batch, for a bad gamma / sigma_data.
        loss_weight(weighting, prediction, torch.ones(1), min_snr_gamma=min_snr_gamma, sigma_data=sigma_data)

    def loss(
        self, model_fn: ModelFn, x0: Tensor, context: Any, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:  # B×C×H×W -> (B, B)
        """Per-sample loss at freshly drawn timesteps and noise; also returns those timesteps
        (for loss-vs-t logging)."""
        t = sample_timesteps(
            self.timestep_sampling,
            self.schedule,
            x0.shape[0],
            x0.device,
            generator=generator,
            log_normal_mean=self.log_normal_mean,
            log_normal_std=self.log_normal_std,
        )
        noise = sample_noise(x0, self.offset_noise, generator)
        return self.loss_at(model_fn, x0, context, t, noise), t

    def loss_at(
        self, model_fn: ModelFn, x0: Tensor, context: Any, t: Tensor, noise: Tensor
    ) -> Tensor:  # B×C×H×W, t B, noise B×C×H×W -> B
        """Per-sample loss at the given timesteps and noise (validation at fixed seeds)."""
        alpha_bar = self.schedule.alpha_bar(t)
        x_t = q_sample(x0, noise, alpha_bar)
        output = model_fn(x_t, t, context)
        if output.shape != x0.shape:
            raise ValueError(
                f"the model returned shape {tuple(output.shape)} for inputs of shape "
                f"{tuple(x0.shape)}; its out_channels must equal the latent channels"
            )
        target = regression_target(self.prediction, x0, noise, alpha_bar)
        mse = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        weight = loss_weight(
            self.weighting,
            self.prediction,
            self.schedule.snr(t),
            min_snr_gamma=self.min_snr_gamma,
            sigma_data=self.sigma_data,
        )
        return weight * mse

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective({self.schedule}, prediction={self.prediction!r}, "
            f"weighting={self.weighting!r}, timestep_sampling={self.timestep_sampling!r}, "
            f"offset_noise={self.offset_noise})"
        )
