"""The network-as-denoiser wrapper and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from ldm_train.diffusion.parameterization import q_sample, regression_target
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import CFGDenoiser, Denoiser, initial_latents, make_sigmas, sample_ddim
from ldm_train.sampling.discrete import sampling_sigmas

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_oracle_network_denoises_exactly(prediction):
    """A network that outputs the true target makes D(x, σ) return the true x_0 (VE scaling)."""
    schedule = NoiseSchedule.scaled_linear()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 400, 990])
    alpha_bar = schedule.alpha_bar(t)
    seen_t = []

    def oracle(x_t, t_in, context):
        seen_t.append(t_in)
        torch.testing.assert_close(x_t, q_sample(x0, noise, alpha_bar), rtol=1e-5, atol=1e-5)
        return regression_target(prediction, x0, noise, alpha_bar)

    sigma = sampling_sigmas(schedule)[t].float()
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(Denoiser(oracle, schedule, prediction)(x, sigma), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen_t[0], t.float(), rtol=0, atol=1e-3)


def test_quantize_t_rounds_timesteps():
    schedule = NoiseSchedule.scaled_linear()
    table = sampling_sigmas(schedule)
    sigma = ((table[100] * table[101]).sqrt()).float().view(1)  # halfway in ln σ: t ≈ 100.5
    seen = []

    def model(x, t, context):
        seen.append(t)
        return torch.zeros_like(x)

    Denoiser(model, schedule, "eps")(torch.zeros(1, 1, 2, 2), sigma)
    Denoiser(model, schedule, "eps", quantize_t=True)(torch.zeros(1, 1, 2, 2), sigma * 1.001)
    assert seen[0].item() == pytest.approx(100.5, abs=1e-3)
    assert seen[1].item() == 101.0


def test_cfg_is_one_batched_forward_with_the_guidance_formula(toy_unet):
    schedule = NoiseSchedule.scaled_linear()
    model = toy_unet(schedule, "v")
    denoiser = Denoiser(model, schedule, "v")
    x, sigma = torch.randn(2, 4, 8, 8) * 3, torch.tensor([2.5, 2.5])
    cond, uncond = torch.randn(2, 5, 6), torch.zeros(1, 5, 6)
    guided = CFGDenoiser(denoiser, cond, uncond, guidance_scale=7.5)(x, sigma)
    assert model.calls == [4]
    d_cond = denoiser(x, sigma, cond)
    d_uncond = denoiser(x, sigma, uncond.expand(2, -1, -1))
    torch.testing.assert_close(guided, d_uncond + 7.5 * (d_cond - d_uncond))
    model.calls.clear()
    torch.testing.assert_close(CFGDenoiser(denoiser, cond, uncond, guidance_scale=1.0)(x, sigma), d_cond)
    assert model.calls == [2], "guidance 1 must skip the unconditional half"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cfg_on_x0_equals_diffusers_guidance_on_model_output(prediction, toy_unet, diffusers_loop):
    """diffusers' pipelines guide ε (or v) and then step DDIM; we guide x̂_0. Linearity makes them equal."""
    schedule, scale, steps = NoiseSchedule.scaled_linear(), 5.0, 10
    model = toy_unet(schedule, prediction)
    cond, uncond = torch.randn(2, 5, 6), torch.zeros(2, 5, 6)

    def guided_model(x, t):
        out_uncond, out_cond = model(torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    scheduler = DDIMScheduler(
        **SD_BETAS,
        clip_sample=False,
        steps_offset=1,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction],
    )
    scheduler.set_timesteps(steps)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = diffusers_loop(scheduler, guided_model, z, steps)[-1]
    sigmas = make_sigmas(schedule, steps)
    ours = sample_ddim(
        CFGDenoiser(Denoiser(model, schedule, prediction), cond, uncond, scale),
        initial_latents(z, sigmas[0]),
        sigmas,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_guidance_without_unconditional_context_is_an_error():
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="uncond_context"):
        CFGDenoiser(
            Denoiser(lambda x, t, c: x, schedule, "eps"), torch.zeros(1, 2, 3), None, guidance_scale=3.0
        )
    with pytest.raises(ValueError, match="prediction type"):
        Denoiser(lambda x, t, c: x, schedule, "epsilon")
