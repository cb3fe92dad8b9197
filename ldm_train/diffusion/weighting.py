"""Per-timestep loss weights, each expressed in the space the network predicts in.

A weighting is naturally defined on the x_0 error. For a fixed x_t the network's own error maps
to it linearly (see parameterization.py): x̂_0 − x_0 = −(σ/α)·(ε̂ − ε) = −σ·(v̂ − v), so with
SNR = α²/σ² and α² + σ² = 1,
  ‖x̂_0 − x_0‖² = ‖ε̂ − ε‖² / SNR = ‖v̂ − v‖² / (SNR + 1),
and a weight w(SNR) on the x_0 error becomes w/SNR on the ε error and w/(SNR + 1) on the v error.

  - "uniform": weight 1 in the prediction's own space (Ho et al. 2020's L_simple for ε).
  - "min_snr": Hang et al. (2023), "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    §3.4: w = min(SNR, γ) on x_0, hence min(SNR, γ)/SNR for ε and min(SNR, γ)/(SNR + 1) for v.
  - "edm": Karras et al. (2022), "Elucidating the Design Space...", eq. 8 / Table 1:
    λ(σ) = (σ² + σ_data²)/(σ·σ_data)² on x_0, i.e. SNR + 1/σ_data² with σ = σ_VE. With
    σ_data = 1 this is exactly uniform weighting of v — v-prediction is EDM's loss in disguise.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ldm_train.diffusion.parameterization import check_prediction

Weighting = Literal["uniform", "min_snr", "edm"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr", "edm")


def loss_weight(
    weighting: str, prediction: str, snr: Tensor, *, min_snr_gamma: float = 5.0, sigma_data: float = 1.0
) -> Tensor:  # B -> B
    """Weight for each sample's mean-squared error in `prediction` space, given its SNR(t)."""
    check_prediction(prediction)
    if weighting == "uniform":
        return torch.ones_like(snr)
    if weighting == "min_snr":
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 (the paper uses 5), got {min_snr_gamma}")
        if prediction == "eps":
            # min(SNR, γ)/SNR written so that SNR = 0 (zero terminal SNR) gives 1, not 0/0.
            return (min_snr_gamma / snr).clamp(max=1.0)
        weight_x0 = snr.clamp(max=min_snr_gamma)
    elif weighting == "edm":
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0 (the data's standard deviation), got {sigma_data}")
        if prediction == "eps":
            return 1 + 1 / (sigma_data**2 * snr)
        weight_x0 = snr + 1 / sigma_data**2
    else:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    return weight_x0 / (snr + 1) if prediction == "v" else weight_x0
