"""Phase 1: the KL-regularised autoencoder (networks, posterior, latent normalisation, checkpoint conversion)."""

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.decoder import Decoder
from ldm_train.autoencoder.distribution import DiagonalGaussian
from ldm_train.autoencoder.encoder import Encoder
from ldm_train.autoencoder.latent_norm import LatentNorm
from ldm_train.autoencoder.pretrained import autoencoder_from_diffusers, load_autoencoder_init

__all__ = [
    "AutoencoderKL",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "LatentNorm",
    "autoencoder_from_diffusers",
    "load_autoencoder_init",
]
