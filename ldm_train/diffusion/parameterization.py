"""What the network predicts: ε, v or x_0 — and how to get back to (x̂_0, ε̂) from any of them.

With x_t = α·x_0 + σ·ε, α = √ᾱ_t, σ = √(1 − ᾱ_t) (Ho et al. 2020, eq. 4):
  - "eps": the noise ε (Ho et al. 2020, eq. 14).
  - "v":   v = α·ε − σ·x_0 (Salimans & Ho 2022, "Progressive Distillation", §4 / App. D);
           then x_0 = α·x_t − σ·v and ε = α·v + σ·x_t, because α² + σ² = 1.
  - "x0":  the clean sample itself.
The UNet only ever sees (x_t, t, context); these functions are the one place that knows which
of the three its output means. `alpha_bar` is ᾱ_t per sample (shape B) or a scalar tensor.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction type {prediction!r}; use one of {', '.join(PREDICTIONS)} "
            "(diffusers calls them 'epsilon', 'v_prediction', 'sample')"
        )


def _scales(alpha_bar: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) shaped to broadcast against `like` (B×... or scalar)."""
    if alpha_bar.ndim == 1:
        alpha_bar = alpha_bar.reshape(-1, *([1] * (like.ndim - 1)))
    alpha_bar = alpha_bar.to(like.dtype)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def q_sample(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:  # B×C×H×W -> B×C×H×W
    """Forward process sample x_t = α·x_0 + σ·ε."""
    alpha, sigma = _scales(alpha_bar, x0)
    return alpha * x0 + sigma * noise


def regression_target(prediction: str, x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """What a perfect network outputs for this (x_0, ε, t)."""
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    alpha, sigma = _scales(alpha_bar, x0)
    return alpha * noise - sigma * x0


def x0_and_eps(prediction: str, x_t: Tensor, alpha_bar: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂_0, ε̂) implied by the network output. ε-prediction divides by α (undefined where ᾱ = 0,
    i.e. at zero terminal SNR — use v there, Lin et al. 2024 §3.2); x_0-prediction divides by σ."""
    check_prediction(prediction)
    alpha, sigma = _scales(alpha_bar, x_t)
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    return alpha * x_t - sigma * output, alpha * output + sigma * x_t
