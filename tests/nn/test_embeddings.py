"""Timestep embeddings match diffusers' get_timestep_embedding / Timesteps / TimestepEmbedding."""

import pytest
import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_timestep_embedding

from ldm_train.nn import SinusoidalTimestepEmbedding, TimestepMLP, timestep_embedding

TOL = 1e-5


@pytest.mark.parametrize("dim", [8, 9, 320])
@pytest.mark.parametrize(("flip", "shift"), [(True, 0.0), (False, 1.0)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_embedding(t, dim, flip, shift), ref, atol=TOL, rtol=TOL)


def test_sd_convention_module_matches_diffusers_timesteps():
    t = torch.tensor([3, 500, 999])
    ref = Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    torch.testing.assert_close(SinusoidalTimestepEmbedding(32)(t), ref, atol=TOL, rtol=TOL)


def test_closed_form_at_t1():
    # SD convention: first half cos(ω_i), second half sin(ω_i), ω_i = 10000^(-i/half).
    emb = timestep_embedding(torch.tensor([1.0]), 4)
    w = torch.tensor([1.0, 10_000 ** (-1 / 2)])
    torch.testing.assert_close(emb[0], torch.cat([torch.cos(w), torch.sin(w)]))


def test_timestep_embedding_rejects_non_1d():
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_timestep_mlp_matches_diffusers():
    torch.manual_seed(0)
    ref = TimestepEmbedding(16, 64)
    ours = TimestepMLP(16, 64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=TOL)
