"""Fixtures of the UNet tests: the tiny diffusers configuration, a randomiser, inputs."""

import pytest
import torch

# The brief's reference configuration: two levels, attention at the first only.
TINY_DIFFUSERS = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random weights everywhere (the reference inits zero some layers, which would hide mismatches)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([3, 871])
    context = torch.randn(2, 5, 32, generator=generator)
    return x, t, context


@pytest.fixture
def tiny_diffusers_config():
    return dict(TINY_DIFFUSERS)


@pytest.fixture
def randomize():
    return _randomize


@pytest.fixture(scope="session")
def sd_unets_on_meta():
    """Full-size SD 1.x and 2.x UNets without memory (parameters on the meta device)."""
    from ldm_train.unet import UNet

    with torch.device("meta"):
        sd15 = UNet(context_dim=768)
        sd2 = UNet(num_heads=None, num_head_channels=64, context_dim=1024, use_linear_projection=True)
    return sd15, sd2
