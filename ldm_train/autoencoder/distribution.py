"""Diagonal Gaussian posterior q(z|x) = N(μ, diag σ²) of the KL-regularised autoencoder."""

import math

import torch

# Clamp log σ² so exp() neither under- nor overflows early in training (CompVis / diffusers use the same range).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
LOG_2PI = math.log(2.0 * math.pi)


class DiagonalGaussian:
    """Built from the encoder's moments B×2C×h×w (first C channels μ, last C channels log σ²)."""

    def __init__(self, moments: torch.Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2 != 0:
            raise ValueError(
                f"DiagonalGaussian expects moments of shape B×2C×h×w (mean and logvar stacked on channels), "
                f"got {tuple(moments.shape)}; build the encoder with double_z=True."
            )
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:  # -> B×C×h×w
        """Reparameterised sample z = μ + σ·ε (Kingma & Welling 2014, eq. 10); differentiable in μ, σ."""
        device = self.mean.device if generator is None else generator.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:  # -> B×C×h×w
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> torch.Tensor:  # -> B
        """KL(q ‖ other), default other = N(0, I), summed over C, h, w (closed form, Kingma & Welling appx. B)."""
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var
                + self.var / other.var
                - 1.0
                - self.logvar
                + other.logvar
            )
        return 0.5 * terms.sum(dim=(1, 2, 3))

    def nll(self, sample: torch.Tensor) -> torch.Tensor:  # B×C×h×w -> B
        """Negative log-likelihood of `sample` under this Gaussian, summed over C, h, w."""
        return 0.5 * (LOG_2PI + self.logvar + (sample - self.mean).pow(2) / self.var).sum(dim=(1, 2, 3))
