"""PatchGAN discriminator of pix2pix (Isola et al. 2017), as used by taming-transformers and LDM.

It classifies overlapping patches rather than the whole image (n_layers=3: 70×70 receptive field),
so its logits form a map: B×C×H×W -> B×1×h×w. Layer names (`main.<i>`) match taming's
`NLayerDiscriminator`, so its weights load directly.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from torch import Tensor, nn

from ldm_train.constraints import PositiveInt, check_arguments

DiscriminatorNorm = Literal["batch", "group", "none"]
NORMS = get_args(DiscriminatorNorm)
_KERNEL = 4
_PADDING = 1
_MAX_CHANNEL_MULT = 8
_LEAKY_SLOPE = 0.2
_MAX_GROUPS = 32
_INIT_STD = 0.02  # DCGAN initialisation (Radford et al. 2016), kept by pix2pix and taming


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(_MAX_GROUPS, channels), channels)
    return nn.Identity()


class NLayerDiscriminator(nn.Module):
    def __init__(
        self, in_channels: PositiveInt = 3, ndf: PositiveInt = 64, n_layers: PositiveInt = 3,
        norm: DiscriminatorNorm = "batch",
    ) -> None:
        super().__init__()
        check_arguments(NLayerDiscriminator.__init__, locals())
        # BatchNorm's shift makes a conv bias redundant; GroupNorm centres per group, not per channel.
        bias = norm != "batch"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, _KERNEL, stride=2, padding=_PADDING),
            nn.LeakyReLU(_LEAKY_SLOPE, inplace=True),
        ]
        channels = ndf
        for n in range(1, n_layers + 1):
            out_channels = ndf * min(2**n, _MAX_CHANNEL_MULT)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers += [
                nn.Conv2d(channels, out_channels, _KERNEL, stride=stride, padding=_PADDING, bias=bias),
                _norm(norm, out_channels),
                nn.LeakyReLU(_LEAKY_SLOPE, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, _KERNEL, stride=1, padding=_PADDING))
        self.main = nn.Sequential(*layers)
        self.init_weights()

    def init_weights(self) -> None:
        """Convs ~ N(0, 0.02); norm scales ~ N(1, 0.02), shifts 0 (as taming's `weights_init`)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, _INIT_STD)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, _INIT_STD)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:  # B×C×H×W -> B×1×h×w patch logits
        return self.main(x)
