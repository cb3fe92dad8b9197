"""Training timestep sampling and offset noise."""

from __future__ import annotations

import pytest
import torch

from ldm_train.diffusion.noise import sample_noise
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.diffusion.timesteps import nearest_timestep, sample_timesteps

CPU = torch.device("cpu")


def test_uniform_covers_the_range_and_follows_the_generator():
    schedule = NoiseSchedule.scaled_linear()
    t = sample_timesteps("uniform", schedule, 20000, CPU, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == 999
    assert t.float().mean().item() == pytest.approx(499.5, abs=10)
    again = sample_timesteps("uniform", schedule, 20000, CPU, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_log_normal_has_the_requested_log_sigma_distribution():
    schedule = NoiseSchedule.scaled_linear()
    t = sample_timesteps(
        "log_normal",
        schedule,
        20000,
        CPU,
        generator=torch.Generator().manual_seed(0),
        log_normal_mean=-0.5,
        log_normal_std=0.6,
    )
    log_sigma = schedule.ve_sigmas().log()[t]
    # SD's σ range is [0.029, 14.6], i.e. ln σ in [−3.5, 2.7]: ±3 std of N(−0.5, 0.6²) fits inside.
    assert log_sigma.mean().item() == pytest.approx(-0.5, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(0.6, abs=0.02)


def test_nearest_timestep_snaps_to_the_table():
    schedule = NoiseSchedule.scaled_linear()
    table = schedule.ve_sigmas().log()
    t = torch.tensor([0, 1, 250, 998, 999])
    assert nearest_timestep(schedule, table[t]).tolist() == t.tolist()
    assert nearest_timestep(schedule, torch.tensor([-50.0, 50.0], dtype=torch.float64)).tolist() == [0, 999]


def test_offset_noise_adds_a_per_channel_constant():
    like = torch.zeros(4000, 3, 4, 4)
    plain = sample_noise(like, 0.0, torch.Generator().manual_seed(1))
    offset = sample_noise(like, 0.1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(plain, sample_noise(like, 0.0, torch.Generator().manual_seed(1)))
    shift = offset - plain
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-6), (
        "the offset is constant over H×W"
    )
    assert shift[:, :, 0, 0].std().item() == pytest.approx(0.1, rel=0.05)


def test_bad_sampling_settings_name_the_fix():
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        sample_timesteps("beta", schedule, 2, CPU)
    with pytest.raises(ValueError, match="log_normal_std must be > 0"):
        sample_timesteps("log_normal", schedule, 2, CPU, log_normal_std=0.0)
    with pytest.raises(ValueError, match="offset noise strength"):
        sample_noise(torch.zeros(1, 1, 1, 1), -0.1)
