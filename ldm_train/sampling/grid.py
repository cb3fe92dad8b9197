"""The N+1 noise levels σ_0 > σ_1 > … > σ_N a sampler steps through, built as diffusers does.

Timestep spacings (Lin et al. 2024, Table 2; diffusers' `timestep_spacing`), for T training steps:
  - "leading":  t_i = (N−1−i)·⌊T/N⌋ + steps_offset. Stable Diffusion 1.x/2.x/XL's scheduler
                configs use leading with steps_offset = 1 (t = 981, 961, …, 1 for N = 50) — our default.
  - "linspace": t_i evenly spaced from T−1 down to 0, fractional t allowed (Euler-family behaviour).
  - "trailing": t_i = round(T − i·T/N) − 1, starting at T−1 — required to sample from zero terminal SNR.
  - karras=True: ignore the spacing, use Karras et al. (2022) eq. 5 between the schedule's σ_min and
    σ_max (DPMSolverMultistepScheduler's `use_karras_sigmas`; the same as Euler's when spacing = linspace).
The last level is 0 (fully denoised, "zero") or σ(t=0) ("sigma_min": diffusers' `final_sigmas_type`,
and DDIM's `set_alpha_to_one=False` from the SD 1.x config).

Deviations: diffusers' DPMSolverMultistepScheduler builds its linspace/leading grids from N+1 points and
drops t = 0, and its DDIMScheduler steps to t − ⌊T/N⌋ whatever the spacing (off its own grid for
linspace, and for trailing when N does not divide T); here every sampler uses the one grid above.
At fractional t diffusers interpolates σ linearly, we interpolate ln σ (discrete.py) so that σ → t → σ
round-trips; the two differ by < 1e-4 relative.

Rectified-flow models (diffusion/flow.py) name noise levels by t ∈ [0, 1] and start from pure noise, t = 1
(`flow_sigmas`): u_i evenly spaced, then shifted, t_i = s·u_i/(1 + (s − 1)·u_i) (SD3 §5.3.2):
  - "linspace": u from 1 down to shift(1/T), N points — SD3's reference sampler and diffusers'
                FlowMatchEuler/HeunDiscreteScheduler (the end point is the *shifted* 1/T, shifted again).
  - "trailing": u_i = (1 − 1/T)·(1 − i/N) — DPMSolverMultistepScheduler(use_flow_sigmas=True).
"leading" (which never reaches t = 1), Karras grids and final_sigma="sigma_min" have no flow counterpart here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ldm_train.diffusion.flow import shift_time
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.discrete import sampling_sigmas, t_to_sigma

Spacing = Literal["leading", "linspace", "trailing"]
FLOW_SPACINGS: tuple[str, ...] = ("linspace", "trailing")
FinalSigma = Literal["zero", "sigma_min"]
KARRAS_RHO = 7.0  # Karras et al. (2022), §3: "ρ = 7 … for all experiments"


def spaced_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 1
) -> Tensor:  # -> N (float64), decreasing
    """The N timesteps visited, as diffusers' `set_timesteps` computes them."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    if spacing == "leading":
        t = (num_steps - 1 - i) * (num_train_timesteps // num_steps) + steps_offset
    elif spacing == "linspace":
        t = torch.linspace(num_train_timesteps - 1, 0, num_steps, dtype=torch.float64)
    elif spacing == "trailing":
        t = torch.round(num_train_timesteps - i * (num_train_timesteps / num_steps)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use 'leading', 'linspace' or 'trailing'")
    if t.min() < 0 or t.max() > num_train_timesteps - 1:
        raise ValueError(
            f"{spacing} spacing with steps_offset={steps_offset} and {num_steps} steps reaches "
            f"t = {t.max():.0f}, outside [0, {num_train_timesteps - 1}]; lower steps_offset or num_steps"
        )
    return t


def karras_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO
) -> Tensor:  # -> N (float64), decreasing
    """Karras et al. (2022) eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def make_sigmas(
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    spacing: str = "leading",
    steps_offset: int = 1,
    karras: bool = False,
    rho: float = KARRAS_RHO,
    final_sigma: str = "zero",
) -> Tensor:  # -> N+1 (float32, CPU), decreasing
    """Noise levels for an N-step sampler, ending at 0 or σ_min."""
    table = sampling_sigmas(schedule)
    if karras:
        if not 1 <= num_steps <= schedule.num_timesteps:
            raise ValueError(f"num_steps must be in [1, {schedule.num_timesteps}], got {num_steps}")
        sigmas = karras_sigmas(num_steps, float(table[0]), float(table[-1]), rho)
    else:
        sigmas = t_to_sigma(table, spaced_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset))
    if final_sigma == "zero":
        last = torch.zeros(1, dtype=torch.float64)
    elif final_sigma == "sigma_min":
        last = table[:1]
    else:
        raise ValueError(f"unknown final_sigma {final_sigma!r}; use 'zero' or 'sigma_min'")
    return torch.cat([sigmas, last]).float()


def flow_sigmas(
    num_train_timesteps: int, num_steps: int, shift: float = 1.0, spacing: str = "linspace"
) -> Tensor:  # -> N+1 (float32, CPU), decreasing from ≤ 1 to 0
    """Noise levels t_0 > … > t_{N−1} > t_N = 0 of an N-step flow sampler, as diffusers' flow schedulers build them."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (1 = no shift), got {shift}")
    if spacing == "linspace":
        u_min = float(shift_time(torch.tensor(1 / num_train_timesteps, dtype=torch.float64), shift))
        u = torch.linspace(1.0, u_min, num_steps, dtype=torch.float64)
    elif spacing == "trailing":
        u = (1 - 1 / num_train_timesteps) * (1 - torch.arange(num_steps, dtype=torch.float64) / num_steps)
    else:
        raise ValueError(
            f"spacing {spacing!r} has no rectified-flow grid; use one of {', '.join(FLOW_SPACINGS)} "
            "(linspace: SD3 / FlowMatchEulerDiscreteScheduler, trailing: DPMSolverMultistepScheduler's flow grid)"
        )
    return torch.cat([shift_time(u, shift), torch.zeros(1, dtype=torch.float64)]).float()
