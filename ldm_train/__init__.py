"""ldm-train: config-driven training of text-to-image latent diffusion models."""

__version__ = "0.1.0"
