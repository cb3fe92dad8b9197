"""Building blocks shared by the autoencoder and the diffusion UNet (weight-compatible with diffusers)."""

from ldm_train.nn.attention import Attention, SpatialSelfAttention
from ldm_train.nn.embeddings import SinusoidalTimestepEmbedding, TimestepMLP, timestep_embedding
from ldm_train.nn.resnet import ResBlock
from ldm_train.nn.updown import Downsample, Upsample

__all__ = [
    "Attention",
    "Downsample",
    "ResBlock",
    "SinusoidalTimestepEmbedding",
    "SpatialSelfAttention",
    "TimestepMLP",
    "Upsample",
    "timestep_embedding",
]
