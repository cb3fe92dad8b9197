"""Per-image seeds and the GuidedSampler that configs instantiate."""

from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import GuidedSampler, PerImageNoise, initial_latents

SHAPE = (4, 8, 8)


def test_draws_equal_diffusers_generator_lists():
    seeds = [0, 1, 42]
    noise = PerImageNoise(seeds, SHAPE)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(3):  # initial latents, then two ancestral steps
        torch.testing.assert_close(
            noise.draw(), randn_tensor((3, *SHAPE), generator=generators), rtol=0, atol=0
        )


def test_initial_latents_have_the_vp_prior_std():
    x = initial_latents(torch.ones(1, 1, 1, 1), torch.tensor(14.6))
    assert x.item() == pytest.approx((1 + 14.6**2) ** 0.5)


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m", "ddpm"])
def test_an_image_does_not_depend_on_its_batch(sampler, toy_unet):
    schedule = NoiseSchedule.scaled_linear()
    model = toy_unet(schedule, "eps")
    guided = GuidedSampler(sampler, num_steps=6, guidance_scale=4.0)
    prompts = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0))
    uncond = torch.zeros(1, 5, 6)
    batch = guided(model, schedule, "eps", prompts, uncond, SHAPE, seeds=[3, 7, 11])
    alone = guided(model, schedule, "eps", prompts[1:2], uncond, SHAPE, seeds=[7])
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-5)
    other_seed = guided(model, schedule, "eps", prompts[1:2], uncond, SHAPE, seeds=[8])
    assert (other_seed - alone).abs().max() > 1e-2


def test_guided_sampler_runs_every_sampler_with_one_batched_call_per_step(toy_unet):
    schedule = NoiseSchedule.scaled_linear()
    # Heun calls the network twice per step, except on the final Euler step to σ = 0.
    for name, expected_calls in [("ddim", 5), ("heun", 9), ("dpmpp_2m", 5), ("euler", 5)]:
        model = toy_unet(schedule, "v")
        out = GuidedSampler(name, num_steps=5)(
            model, schedule, "v", torch.randn(2, 5, 6), torch.zeros(1, 5, 6), SHAPE, seeds=[1, 2]
        )
        assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()
        assert set(model.calls) == {4}, "conditional and unconditional halves share one forward"
        assert len(model.calls) == expected_calls


def test_bad_sampler_settings_name_the_fix(toy_unet):
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        GuidedSampler("lms")
    with pytest.raises(ValueError, match="takes no eta"):
        GuidedSampler("euler", eta=0.5)
    with pytest.raises(ValueError, match="unknown spacing 'uniform'"):
        GuidedSampler("euler", spacing="uniform")
    schedule = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="one seed per image"):
        GuidedSampler("ddim", num_steps=2)(
            toy_unet(schedule, "eps"),
            schedule,
            "eps",
            torch.zeros(2, 1, 1),
            torch.zeros(1, 1, 1),
            SHAPE,
            seeds=[1],
        )
