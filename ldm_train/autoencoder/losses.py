"""Phase-1 loss: reconstruction + perceptual + KL + PatchGAN adversarial (Rombach et al. 2022, App. G).

Generator step (the autoencoder's optimizer, which must also receive `generator_parameters()`):

    nll   = sum((|x - x̂| + w_p·LPIPS(x, x̂)) / exp(logvar) + logvar) / B     learned scalar logvar
    total = nll + w_kl·KL + λ·disc_factor·(-mean D(x̂))
    λ     = disc_weight · clamp(‖∇_L nll‖ / (‖∇_L g‖ + δ), 0, max)        Esser et al. 2021, eq. 7

with ∇_L the gradient w.r.t. the decoder's last layer. Discriminator step (its own optimizer, on
`discriminator_parameters()`): hinge or vanilla loss on real vs detached reconstructions.
Before `disc_start` (or with disc_factor 0) the discriminator never runs and λ is never computed.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ldm_train.constraints import NonNegativeFloat, NonNegativeInt, PositiveFloat, check_arguments

PixelLoss = Literal["l1", "l2"]
DiscLoss = Literal["hinge", "vanilla"]
PIXEL_LOSSES = get_args(PixelLoss)
DISC_LOSSES = get_args(DiscLoss)
_ADAPTIVE_EPS = 1e-4  # δ in eq. 7: keeps λ finite when the adversarial gradient vanishes


class Posterior(Protocol):
    def kl(self) -> Tensor: ...  # per-sample KL to N(0, I), summed over latent dims: (B,)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss (Lim & Ye 2017): 0.5·(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN loss (Goodfellow et al. 2014): 0.5·(E[softplus(-D(x))] + E[softplus(D(x̂))])."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


class AutoencoderLoss(nn.Module):
    def __init__(
        self,
        discriminator: nn.Module,
        perceptual: nn.Module | None,
        pixel_loss: PixelLoss = "l1",
        perceptual_weight: NonNegativeFloat = 1.0,
        logvar_init: float = 0.0,
        kl_weight: NonNegativeFloat = 1e-6,
        disc_start: NonNegativeInt = 2001,
        disc_factor: NonNegativeFloat = 1.0,
        disc_weight: NonNegativeFloat = 0.5,
        disc_loss: DiscLoss = "hinge",
        adaptive_weight_max: PositiveFloat = 1e4,
    ) -> None:
        super().__init__()
        check_arguments(AutoencoderLoss.__init__, locals())
        if perceptual is None and perceptual_weight != 0:
            raise ValueError(
                f"perceptual_weight={perceptual_weight} needs a perceptual module; pass one or set it to 0"
            )
        self.discriminator = discriminator
        self.perceptual = perceptual
        self.pixel_loss = pixel_loss
        self.perceptual_weight = perceptual_weight
        # log σ² of a Laplace/Gaussian likelihood shared by all pixels, learned with the autoencoder.
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init)))
        self.kl_weight = kl_weight
        self.disc_start = disc_start
        self.disc_factor = disc_factor
        self.disc_weight = disc_weight
        self.d_loss_fn = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.adaptive_weight_max = adaptive_weight_max

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters the autoencoder's optimizer must train alongside the autoencoder: logvar."""
        return [self.logvar]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def discriminator_active(self, global_step: int) -> bool:
        """Whether the adversarial terms are on; callers skip the discriminator step when not."""
        return self.disc_factor > 0 and global_step >= self.disc_start

    def adaptive_weight(self, nll: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
        """λ of eq. 7: balances the two gradients at the decoder's last layer; detached."""
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        ratio = nll_grad.norm() / (g_grad.norm() + _ADAPTIVE_EPS)
        return ratio.clamp(0.0, self.adaptive_weight_max).detach() * self.disc_weight

    def generator_loss(
        self, inputs: Tensor, recon: Tensor, posterior: Posterior, global_step: int, last_layer: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:  # inputs, recon: B×C×H×W
        batch = inputs.shape[0]
        zero = inputs.new_zeros(())
        rec = (inputs - recon).abs() if self.pixel_loss == "l1" else (inputs - recon).square()
        use_perceptual = self.perceptual is not None and self.perceptual_weight != 0
        perceptual = self.perceptual(inputs, recon) if use_perceptual else zero  # B×1×1×1
        # Broadcast over pixels and summed per sample, as in the LDM code: the perceptual term
        # weighs C·H·W times its value, on the same footing as the per-pixel term.
        nll = ((rec + self.perceptual_weight * perceptual) / self.logvar.exp() + self.logvar).sum() / batch
        kl = posterior.kl().sum() / batch
        total = nll + self.kl_weight * kl

        g_loss, d_weight, disc_factor = zero, zero, 0.0
        if self.discriminator_active(global_step):
            disc_factor = self.disc_factor
            g_loss = -self._logits_without_discriminator_grad(recon).mean()
            if torch.is_grad_enabled():
                d_weight = self.adaptive_weight(nll, g_loss, last_layer)
            # Validation (no autograd): λ cannot be formed and the adversarial term stays out, as in LDM.
            total = total + d_weight * disc_factor * g_loss

        logs = {
            "total": total,
            "rec": rec.mean(),
            "perceptual": perceptual.mean(),
            "kl": kl,
            "nll": nll,
            "logvar": self.logvar,
            "g_loss": g_loss,
            "d_weight": d_weight,
            "disc_factor": inputs.new_tensor(disc_factor),
        }
        return total, {name: value.detach() for name, value in logs.items()}

    def _logits_without_discriminator_grad(self, recon: Tensor) -> Tensor:
        # The generator step must leave no gradient in D (its optimizer steps on the D loss only):
        # run D with detached parameters, so gradients reach the reconstruction and stop there.
        detached = {name: param.detach() for name, param in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, detached, (recon,))

    def discriminator_loss(
        self, inputs: Tensor, recon: Tensor, global_step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:  # inputs, recon: B×C×H×W
        """D loss on real vs detached reconstructions; zero (and D not run) before disc_start."""
        if not self.discriminator_active(global_step):
            zero = inputs.new_zeros(())
            return zero, {"d_loss": zero, "logits_real": zero, "logits_fake": zero}
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(recon.detach())
        d_loss = self.disc_factor * self.d_loss_fn(logits_real, logits_fake)
        logs = {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d_loss, {name: value.detach() for name, value in logs.items()}
