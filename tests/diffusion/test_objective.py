"""DiffusionObjective: the training loss the LightningModule calls."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ldm_train.diffusion import DiffusionObjective, NoiseSchedule
from ldm_train.diffusion.parameterization import regression_target


def _data(seed: int = 0, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_a_perfect_model_has_zero_loss(prediction):
    schedule = NoiseSchedule.scaled_linear()
    objective = DiffusionObjective(schedule, prediction=prediction, weighting="min_snr")
    x0, noise = _data()
    t = torch.tensor([0, 300, 600, 999])

    def oracle(x_t, t_in, context):
        return regression_target(prediction, x0, noise, schedule.alpha_bar(t_in))

    loss = objective.loss_at(oracle, x0, None, t, noise)
    assert loss.shape == (4,) and loss.abs().max() < 1e-10


def test_loss_at_matches_the_diffusers_training_recipe():
    """diffusers' train_text_to_image.py: add_noise, v target via get_velocity, min-SNR-γ weights."""
    reference = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    objective = DiffusionObjective(
        NoiseSchedule.scaled_linear(), prediction="v", weighting="min_snr", min_snr_gamma=5.0
    )
    x0, noise = _data(1)
    t = torch.tensor([5, 200, 700, 990])
    context = torch.randn(4, 7, 16)

    def model(x_t, t_in, ctx):
        return torch.tanh(x_t * 0.7) + ctx.mean() + t_in.view(-1, 1, 1, 1) / 1000

    output = model(reference.add_noise(x0, noise, t), t, context)
    mse = (output - reference.get_velocity(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))
    alpha_bar = reference.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = mse * torch.clamp(snr, max=5.0) / (snr + 1)
    torch.testing.assert_close(
        objective.loss_at(model, x0, context, t, noise), expected, rtol=1e-4, atol=1e-6
    )


def test_loss_draws_timesteps_and_noise_from_the_generator():
    objective = DiffusionObjective(
        NoiseSchedule.scaled_linear(), offset_noise=0.1, timestep_sampling="log_normal"
    )
    x0, _ = _data(2)
    calls = []

    def model(x_t, t, context):
        calls.append(t)
        return torch.zeros_like(x_t)

    loss, t = objective.loss(model, x0, None, generator=torch.Generator().manual_seed(3))
    loss_again, t_again = objective.loss(model, x0, None, generator=torch.Generator().manual_seed(3))
    assert loss.shape == t.shape == (4,) and t.dtype == torch.int64
    assert torch.equal(t, t_again) and torch.equal(loss, loss_again) and torch.equal(calls[0], t)


def test_bad_settings_fail_at_construction_with_the_fix():
    ztsnr = NoiseSchedule.scaled_linear().rescaled_zero_terminal_snr()
    with pytest.raises(ValueError, match="use prediction='v'"):
        DiffusionObjective(ztsnr, prediction="eps")
    DiffusionObjective(ztsnr, prediction="v", weighting="min_snr")  # the supported combination
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="unknown weighting"):
        DiffusionObjective(schedule, weighting="min-snr")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        DiffusionObjective(schedule, weighting="min_snr", min_snr_gamma=-1.0)
    with pytest.raises(ValueError, match="unknown timestep_sampling"):
        DiffusionObjective(schedule, timestep_sampling="cosine")
    objective = DiffusionObjective(schedule)
    x0, noise = _data(4, batch=2)
    with pytest.raises(ValueError, match="out_channels"):
        objective.loss_at(lambda x, t, c: torch.cat([x, x], 1), x0, None, torch.tensor([1, 2]), noise)
