"""FID and KID on features: parity with torchmetrics on identical features, and their known values."""

import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ldm_train.metrics.distances import FeatureStatistics, fid, kid

DIM = 16


class Identity(nn.Module):
    """A 'feature extractor' that passes features through, so torchmetrics sees our exact features."""

    num_features = DIM

    def forward(self, x):
        return x


def features(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)) + shift


def test_fid_matches_torchmetrics():
    real, fake = features(200, 0), features(150, 1, shift=0.3, scale=0.8)
    reference = FrechetInceptionDistance(feature=Identity())
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert fid(real, fake) == pytest.approx(float(reference.compute()), rel=1e-5)
    assert fid(FeatureStatistics.of(real), fake) == pytest.approx(fid(real, fake), rel=1e-12)  # cached stats


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_the_shift():
    real = features(300, 0)
    scores = [fid(real, real)] + [fid(real, features(300, 1, shift=s)) for s in (0.0, 0.5, 1.0)]
    assert abs(scores[0]) < 1e-9
    assert scores[1] < scores[2] < scores[3]
    # A mean shift of s in every dimension adds D·s² to the distance.
    assert scores[3] - scores[1] == pytest.approx(DIM * 1.0, rel=0.15)


def test_kid_matches_torchmetrics_on_one_subset_of_all_samples():
    real, fake = features(60, 0), features(60, 1, shift=0.2)
    reference = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=60)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    expected_mean, _ = reference.compute()
    mean, std = kid(real, fake, subsets=1, subset_size=60)
    assert mean == pytest.approx(float(expected_mean), rel=1e-5) and std == 0.0


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    same = [kid(features(100, 2 * i), features(100, 2 * i + 1), subsets=10, subset_size=100)[0] for i in range(20)]
    different = kid(features(100, 0), features(100, 1, shift=0.5), subsets=10, subset_size=100)[0]
    mean_same = sum(same) / len(same)
    assert abs(mean_same) < 0.05 * different, (mean_same, different)  # ≈ 0: no positive bias
    assert min(same) < 0 < max(same)  # an unbiased estimate of 0 takes both signs


def test_kid_subsets_are_seeded_and_capped():
    real, fake = features(50, 0), features(40, 1)
    assert kid(real, fake, subsets=5, subset_size=30, seed=3) == kid(real, fake, subsets=5, subset_size=30, seed=3)
    assert kid(real, fake, subsets=5, subset_size=1000)[0] == pytest.approx(kid(real, fake, 5, 40)[0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(real[:1], fake)
