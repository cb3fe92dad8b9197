"""Distances between two sets of image features: FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018).

Both work on features already extracted (Inception pool3 for the published numbers), so one pass of
the feature network serves both metrics, real-set features can be cached, and features computed on
several ranks can be gathered before the distance is taken. Parity with torchmetrics'
`FrechetInceptionDistance` and `KernelInceptionDistance` is tested on identical features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KID_DEGREE = 3  # polynomial kernel k(x, y) = (x·y / d + 1)^3, as in the KID paper and torchmetrics
KID_COEF = 1.0
KID_SUBSETS = 100  # the usual protocol: mean and std over 100 random subsets ...
KID_SUBSET_SIZE = 1000  # ... of 1000 samples each (capped at the set sizes)


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance of a feature set, in float64 (the accuracy the matrix square root needs)."""

    mean: torch.Tensor  # D
    cov: torch.Tensor  # D×D
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStatistics:  # N×D -> statistics
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"feature statistics need an N×D matrix with N >= 2, got {tuple(features.shape)}")
        x = features.double()
        return cls(mean=x.mean(dim=0), cov=torch.cov(x.T), count=len(x))


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2·Tr((Σ_a Σ_b)^½)   (Heusel et al. 2017, eq. 6).

    Tr((Σ_a Σ_b)^½) is the sum of the square roots of the eigenvalues of Σ_a Σ_b (real and ≥ 0 in exact
    arithmetic: Σ_a Σ_b is similar to Σ_a^½ Σ_b Σ_a^½); rounding makes some slightly complex or negative,
    so the real part of the complex square root is taken, as torchmetrics does.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    eigenvalues = torch.linalg.eigvals(a.cov @ b.cov)
    trace_sqrt = eigenvalues.sqrt().real.sum()
    mean_term = (a.mean - b.mean).square().sum()
    return float(mean_term + a.cov.trace() + b.cov.trace() - 2 * trace_sqrt)


def fid(real: torch.Tensor | FeatureStatistics, fake: torch.Tensor | FeatureStatistics) -> float:
    """FID between two feature sets (N×D tensors) or their cached statistics."""
    as_stats = [x if isinstance(x, FeatureStatistics) else FeatureStatistics.of(x) for x in (real, fake)]
    return frechet_distance(*as_stats)


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # n×D, m×D -> n×m
    return (x @ y.T / x.shape[1] + KID_COEF) ** KID_DEGREE


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² with the polynomial kernel (Bińkowski et al. 2018, eq. 3): the diagonals of
    k(x, x) and k(y, y) are left out, so two samples of one distribution give 0 in expectation."""
    m = len(x)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off_diagonal - 2 * k_xy.mean()


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over `subsets` random subsets of `subset_size` from each set.

    The subset size is capped at the smaller set; with one subset of all samples the value is exact
    (independent of the seed). Subsets are drawn from a seeded generator, so the number is reproducible.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(real)} real and {len(fake)} fake")
    generator = torch.Generator().manual_seed(seed)
    x, y = real.double(), fake.double()
    values = torch.stack([
        _unbiased_mmd2(
            x[torch.randperm(len(x), generator=generator)[:size]],
            y[torch.randperm(len(y), generator=generator)[:size]],
        )
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std(unbiased=False)) if subsets > 1 else 0.0
