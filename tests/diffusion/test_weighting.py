"""Loss weights against their closed forms, and the x_0-space equivalence that derives them."""

from __future__ import annotations

import pytest
import torch

from ldm_train.diffusion.parameterization import q_sample, regression_target, x0_and_eps
from ldm_train.diffusion.weighting import loss_weight

SNR = torch.tensor([1e-3, 0.5, 1.0, 5.0, 30.0, 1000.0], dtype=torch.float64)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_closed_forms(gamma):
    clipped = torch.minimum(SNR, torch.tensor(gamma, dtype=torch.float64))
    expected = {"eps": clipped / SNR, "v": clipped / (SNR + 1), "x0": clipped}
    for prediction, weight in expected.items():
        torch.testing.assert_close(loss_weight("min_snr", prediction, SNR, min_snr_gamma=gamma), weight)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_closed_forms(sigma_data):
    sigma = SNR.rsqrt()  # σ_VE
    lam = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # Karras et al. (2022), eq. 8 / Table 1
    expected = {"x0": lam, "eps": lam * sigma**2, "v": lam * sigma**2 / (1 + sigma**2)}
    for prediction, weight in expected.items():
        torch.testing.assert_close(loss_weight("edm", prediction, SNR, sigma_data=sigma_data), weight)


def test_edm_with_unit_sigma_data_is_uniform_v():
    torch.testing.assert_close(loss_weight("edm", "v", SNR, sigma_data=1.0), torch.ones_like(SNR))


@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "edm"])
def test_weights_are_one_weighting_of_the_x0_error(weighting):
    """w_pred·‖pred error‖² is the same for ε and v (and equals the x_0-space weight for min-SNR/EDM)."""
    alpha_bar = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    snr = alpha_bar / (1 - alpha_bar)
    g = torch.Generator().manual_seed(0)
    x0, noise, x0_wrong = (torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = q_sample(x0, noise, alpha_bar)
    weighted = {}
    for prediction in ("eps", "v", "x0"):
        # A wrong prediction, expressed in each parameterisation: the one implied by x̂_0 = x0_wrong.
        eps_wrong = x0_and_eps("x0", x_t, alpha_bar, x0_wrong)[1]
        output = regression_target(prediction, x0_wrong, eps_wrong, alpha_bar)
        error = (output - regression_target(prediction, x0, noise, alpha_bar)).pow(2).flatten(1).sum(1)
        weighted[prediction] = loss_weight(weighting, prediction, snr) * error
    if weighting == "uniform":
        return  # uniform is uniform in each prediction's own space, which is the point of choosing one
    torch.testing.assert_close(weighted["eps"], weighted["x0"])
    torch.testing.assert_close(weighted["v"], weighted["x0"])


def test_zero_snr_gives_finite_weights_where_defined():
    zero = torch.zeros(1)
    assert loss_weight("min_snr", "eps", zero).item() == 1.0
    assert loss_weight("min_snr", "v", zero).item() == 0.0
    assert loss_weight("edm", "v", zero).item() == 1.0


def test_bad_weighting_settings_name_the_fix():
    with pytest.raises(ValueError, match="unknown weighting"):
        loss_weight("p2", "eps", SNR)
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        loss_weight("min_snr", "eps", SNR, min_snr_gamma=0)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        loss_weight("edm", "eps", SNR, sigma_data=-1.0)
