"""Which noise levels a training batch sees.

- "uniform": t ~ U{0, …, T−1} (Ho et al. 2020, Alg. 1).
- "log_normal": ln σ_VE ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1: P_mean = −1.2,
  P_std = 1.2), equivalently log-SNR = −2 ln σ ~ N(−2·P_mean, (2·P_std)²), snapped to the
  discrete t whose ln σ is nearest. It concentrates training on the mid-noise levels that matter
  most for sample quality, at the cost of rarely visiting the extremes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ldm_train.diffusion.schedules import NoiseSchedule

TimestepSampling = Literal["uniform", "log_normal"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "log_normal")

EDM_P_MEAN = -1.2
EDM_P_STD = 1.2


def sample_timesteps(
    kind: str,
    schedule: NoiseSchedule,
    batch_size: int,
    device: torch.device,
    *,
    generator: torch.Generator | None = None,
    log_normal_mean: float = EDM_P_MEAN,
    log_normal_std: float = EDM_P_STD,
) -> Tensor:  # -> B (int64, on `device`)
    """Draw one training timestep per sample. A `generator` draws on its own device (results are
    then moved to `device`), so a CPU generator gives the same timesteps on every accelerator."""
    draw_device = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator, device=draw_device)
    elif kind == "log_normal":
        if log_normal_std <= 0:
            raise ValueError(f"log_normal_std must be > 0 (EDM uses {EDM_P_STD}), got {log_normal_std}")
        z = torch.randn(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        t = nearest_timestep(schedule, log_normal_mean + log_normal_std * z)
    else:
        raise ValueError(f"unknown timestep sampling {kind!r}; use one of {', '.join(TIMESTEP_SAMPLINGS)}")
    return t.to(device)


def nearest_timestep(schedule: NoiseSchedule, log_sigma: Tensor) -> Tensor:  # B (float) -> B (int64)
    """The discrete t whose ln σ_VE(t) is closest to `log_sigma` (ln σ_VE increases with t)."""
    table = schedule.ve_sigmas().log().to(log_sigma.device)  # +inf at zero terminal SNR: never nearest
    midpoints = (table[1:] + table[:-1]) / 2
    return torch.bucketize(log_sigma.to(torch.float64), midpoints)
