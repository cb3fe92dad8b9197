"""Rectified flow (flow matching with straight paths): the training objective of Stable Diffusion 3.

Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3);
Liu et al. (2023), "Flow Straight and Fast"; Lipman et al. (2023), "Flow Matching for Generative Modeling".
With t ∈ [0, 1] the noise level,

    x_t = (1 − t)·x_0 + t·ε,  ε ~ N(0, I)     (SD3 §2 with a_t = 1 − t, b_t = t)
    v   = dx_t/dt = ε − x_0                   the velocity the network regresses (SD3 §3.1, "rf")
    x̂_0 = x_t − t·v̂,  ε̂ = x_t + (1 − t)·v̂

and the loss is w(t)·‖v̂ − v‖². In variance-exploding terms x_t/(1 − t) = x_0 + σ·ε with σ = t/(1 − t), so
SNR(t) = ((1 − t)/t)²: a flow model is a denoiser like any other, only with a different path (sampling/).

Which t a batch sees (SD3 §3.1, "Tailored SNR samplers for RF models"; diffusers'
`compute_density_for_timestep_sampling`), u drawn then shifted:
  - "uniform":      u ~ U(0, 1).
  - "logit_normal": u = sigmoid(m + s·n), n ~ N(0, 1): density π_ln(u; m, s) ∝ exp(−(logit u − m)²/2s²)/(u(1 − u)),
                    SD3's best formulation (rf/lognorm(0.00, 1.00)) concentrates training on the middle noise levels.
  - "mode":         u = f_mode(w) = 1 − w − s·(cos²(πw/2) − 1 + w), w ~ U(0, 1), a heavy-tailed alternative; s ∈
                    [−1, 2/(π − 2)] keeps f_mode monotone (SD3 uses s = 1.29).
Shift (SD3 §5.3.2, "Resolution-dependent shifting of timestep schedules"): t = s·u/(1 + (s − 1)·u). The paper
derives s = √(m/n) for m pixels instead of a base resolution's n (s = 3 at 1024² for SD3): more noise for larger
images, which keep more signal at a given t. The same shift is applied at training and, by default, sampling.

Loss weighting (diffusers' `compute_loss_weighting_for_sd3`), on the v error:
  - "uniform":    w = 1 — rectified flow's own loss (SD3's w_t^RF = t/(1 − t) in ε terms).
  - "sigma_sqrt": w = t⁻². Since x̂_0 − x_0 = −t·(v̂ − v), this is ‖x̂_0 − x_0‖²/t⁴: it stresses low noise levels
                  strongly (diffusers pairs it with an x_0 target, where it equals the uniform v loss).
  - "cosmap":     w = 2/(π·(1 − 2t + 2t²)) — the density of SD3's "cosmap" sampler (eq. 21: cos-mapped log-SNR),
                  used as an importance weight with uniform t instead of as a sampling density.

The network is conditioned on the timestep t·T (diffusers' `timesteps = sigmas * num_train_timesteps`), so the
UNet's sinusoidal embedding sees the same range as in the discrete-time objectives, and loss buckets and
validation timesteps (integers in [0, T)) mean the same noise-level quantiles.

diffusers' SD3/Flux training scripts map u to the noise level through the descending table of their scheduler,
σ = shift(1 − ⌊u·T⌋/T). That is our t = shift(u) up to the 1/T grid for the symmetric densities (uniform, mode,
logit-normal with m = 0); with m ≠ 0 they sample logit-normal(−m, s). Here u is the noise level, as in the paper
(tests/diffusion/test_flow.py checks both statements).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from ldm_train.constraints import Ge, Le, NonNegativeFloat, PositiveFloat
from ldm_train.diffusion.noise import sample_noise
from ldm_train.diffusion.objective import ModelFn

FlowTimestepSampling = Literal["uniform", "logit_normal", "mode"]
FLOW_TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal", "mode")
FlowWeighting = Literal["uniform", "sigma_sqrt", "cosmap"]
FLOW_WEIGHTINGS: tuple[str, ...] = ("uniform", "sigma_sqrt", "cosmap")
FLOW_PREDICTION = "flow"  # the network predicts v = ε − x_0 (diffusers: prediction_type="flow_prediction")

SD3_LOGIT_MEAN = 0.0  # SD3 Table 1 / §5: rf/lognorm(0.00, 1.00) ranks first
SD3_LOGIT_STD = 1.0
SD3_MODE_SCALE = 1.29  # SD3 §3.1, rf/mode(1.29)
MODE_SCALE_MAX = 2 / (math.pi - 2)  # SD3 §3.1: f_mode is monotone for s in [−1, 2/(π − 2)]


def shift_time(t: Tensor, shift: float) -> Tensor:  # any shape -> same shape
    """SD3 §5.3.2: t' = s·t/(1 + (s − 1)·t), which maps [0, 1] onto itself and moves the mass towards noise for s > 1."""
    return shift * t / (1 + (shift - 1) * t)


class FlowSchedule:
    """The rectified-flow path x_t = (1 − t)·x_0 + t·ε, t ∈ [0, 1], and how the network names t."""

    def __init__(
        self,
        num_timesteps: Annotated[int, Ge(2)] = 1000,  # T: the network sees the timestep t·T (diffusers' num_train_timesteps)
        shift: PositiveFloat = 1.0,  # SD3's resolution-dependent shift s (1 = none, 3 = SD3 at 1024²), training and sampling
    ) -> None:
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2 (the timestep scale, 1000 usually), got {num_timesteps}")
        if shift <= 0:
            raise ValueError(f"shift must be > 0 (1 = no shift; SD3 uses 3 at 1024²), got {shift}")
        self.num_timesteps = num_timesteps
        self.shift = shift

    def time(self, timesteps: Tensor) -> Tensor:  # B network timesteps in [0, T] -> B noise levels t in [0, 1] (float32)
        t = timesteps.to(torch.float64) / self.num_timesteps
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise ValueError(
                f"flow timesteps must lie in [0, {self.num_timesteps}], got "
                f"[{float(timesteps.min())}, {float(timesteps.max())}]"
            )
        return t.float()

    def timestep(self, t: Tensor) -> Tensor:  # B noise levels in [0, 1] -> B network timesteps t·T
        return t * self.num_timesteps

    def __repr__(self) -> str:
        return f"FlowSchedule(T={self.num_timesteps}, shift={self.shift})"


def sample_flow_time(
    kind: str,
    batch_size: int,
    device: torch.device | str,
    *,
    generator: torch.Generator | None = None,
    logit_mean: float = SD3_LOGIT_MEAN,
    logit_std: float = SD3_LOGIT_STD,
    mode_scale: float = SD3_MODE_SCALE,
) -> Tensor:  # -> B (float32, on `device`), unshifted u in [0, 1]
    """u from SD3's timestep densities, drawn exactly as diffusers' `compute_density_for_timestep_sampling`
    (same generator calls, so the same numbers). A `generator` draws on its own device."""
    draw_device = generator.device if generator is not None else torch.device(device)
    if kind == "logit_normal":
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0 (SD3 uses {SD3_LOGIT_STD}), got {logit_std}")
        n = torch.normal(logit_mean, logit_std, size=(batch_size,), device=draw_device, generator=generator)
        u = torch.sigmoid(n)
    elif kind == "mode":
        if not -1 <= mode_scale <= MODE_SCALE_MAX:
            raise ValueError(f"mode_scale must lie in [-1, {MODE_SCALE_MAX:.4f}] (SD3 uses 1.29), got {mode_scale}")
        w = torch.rand(batch_size, device=draw_device, generator=generator)
        u = 1 - w - mode_scale * (torch.cos(math.pi * w / 2) ** 2 - 1 + w)
    elif kind == "uniform":
        u = torch.rand(batch_size, device=draw_device, generator=generator)
    else:
        raise ValueError(f"unknown flow timestep sampling {kind!r}; use one of {', '.join(FLOW_TIMESTEP_SAMPLINGS)}")
    return u.to(device)


def flow_loss_weight(weighting: str, t: Tensor, t_min: float) -> Tensor:  # B -> B
    """SD3's weights on the v error (module docstring); t is clamped at `t_min` where the weight has a pole."""
    if weighting == "uniform":
        return torch.ones_like(t)
    if weighting == "sigma_sqrt":
        return t.clamp(min=t_min) ** -2
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * t + 2 * t**2))
    raise ValueError(f"unknown flow weighting {weighting!r}; use one of {', '.join(FLOW_WEIGHTINGS)}")


class FlowObjective:
    """Rectified-flow training loss, with the interface of `DiffusionObjective` (`loss`, `loss_at`, `schedule`,
    `prediction`): the LightningModule and the UNet cannot tell the two apart."""

    def __init__(
        self,
        schedule: FlowSchedule,  # the path, the timestep scale T and the shift
        timestep_sampling: FlowTimestepSampling = "logit_normal",  # density of u (module docstring)
        logit_mean: float = SD3_LOGIT_MEAN,  # m of logit_normal: > 0 trains more on noisy inputs
        logit_std: PositiveFloat = SD3_LOGIT_STD,  # s of logit_normal: smaller concentrates on t = sigmoid(m)
        mode_scale: Annotated[float, Ge(-1), Le(MODE_SCALE_MAX)] = SD3_MODE_SCALE,  # s of mode: 0 is uniform, larger puts more mass mid-way
        weighting: FlowWeighting = "uniform",  # loss weight on the v error (module docstring)
        offset_noise: NonNegativeFloat = 0.0,  # offset-noise strength (noise.py); rarely needed: t = 1 is pure noise
    ) -> None:
        if timestep_sampling not in FLOW_TIMESTEP_SAMPLINGS:
            raise ValueError(
                f"unknown timestep_sampling {timestep_sampling!r} for diffusion=flow; use one of "
                f"{', '.join(FLOW_TIMESTEP_SAMPLINGS)}"
            )
        if weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r} for diffusion=flow; use one of {', '.join(FLOW_WEIGHTINGS)}")
        self.schedule = schedule
        self.prediction = FLOW_PREDICTION
        self.timestep_sampling = timestep_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.mode_scale = mode_scale
        self.weighting = weighting
        self.offset_noise = offset_noise
        # Fail at construction, not on the first batch, for a bad std / scale / offset.
        self._draw(1, torch.device("cpu"), None)
        sample_noise(torch.zeros(1, 1), offset_noise)

    def _draw(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        u = sample_flow_time(
            self.timestep_sampling,
            batch_size,
            device,
            generator=generator,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
        )
        return shift_time(u, self.schedule.shift)

    def loss(
        self, model_fn: ModelFn, x0: Tensor, context: Any, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:  # B×C×H×W -> (B, B)
        """Per-sample loss at freshly drawn noise levels; also returns the network timesteps t·T (loss buckets)."""
        timesteps = self.schedule.timestep(self._draw(x0.shape[0], x0.device, generator))
        noise = sample_noise(x0, self.offset_noise, generator)
        return self.loss_at(model_fn, x0, context, timesteps, noise), timesteps

    def loss_at(
        self, model_fn: ModelFn, x0: Tensor, context: Any, t: Tensor, noise: Tensor
    ) -> Tensor:  # B×C×H×W, t B (network timesteps in [0, T]), noise B×C×H×W -> B
        """Per-sample loss w(t)·mean ‖v̂ − (ε − x_0)‖² at the given timesteps and noise (validation at fixed seeds)."""
        time = self.schedule.time(t).to(x0.device)  # B, in [0, 1]
        t_b = time.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        x_t = (1 - t_b) * x0 + t_b * noise  # B×C×H×W
        output = model_fn(x_t, self.schedule.timestep(time), context)  # B×C×H×W: v̂
        if output.shape != x0.shape:
            raise ValueError(
                f"the model returned shape {tuple(output.shape)} for inputs of shape "
                f"{tuple(x0.shape)}; its out_channels must equal the latent channels"
            )
        target = noise - x0
        mse = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        return flow_loss_weight(self.weighting, time, 1 / self.schedule.num_timesteps) * mse

    def __repr__(self) -> str:
        return (
            f"FlowObjective({self.schedule}, timestep_sampling={self.timestep_sampling!r}, "
            f"weighting={self.weighting!r}, offset_noise={self.offset_noise})"
        )
