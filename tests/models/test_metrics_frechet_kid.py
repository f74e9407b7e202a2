"""FID_fm and KID against independent computations (scipy's sqrtm; a naive double loop)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from models.errors import InsufficientSamplesError
from models.metrics.frechet import fit_gaussian, frechet_distance, frechet_distance_from_features
from models.metrics.kid import kernel_inception_distance, mmd2_unbiased


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy.linalg.sqrtm, as in the reference FID code."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (x·y/d + 1)³, written as explicit loops."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((u @ v / d + 1.0) ** 3)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.fixture
def feature_sets() -> tuple[np.ndarray, np.ndarray]:
    """Two correlated, shifted 16-d Gaussian feature sets of 400 and 300 rows."""
    rng = np.random.default_rng(7)
    mixing = rng.normal(size=(16, 16))
    a = rng.normal(size=(400, 16)) @ mixing
    b = rng.normal(size=(300, 16)) @ (mixing * 0.7) + 0.5
    return a, b


def test_frechet_distance_matches_scipy_sqrtm(feature_sets: tuple[np.ndarray, np.ndarray]) -> None:
    """Given two feature sets, the eigenvalue-based FID equals scipy's sqrtm-based one to 1e-6 relative."""
    a, b = feature_sets
    assert frechet_distance_from_features(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians() -> None:
    """Given diagonal Gaussians, FID = ‖Δμ‖² + Σ(σa − σb)² (the 1-D Wasserstein-2 per axis)."""
    from models.metrics.frechet import GaussianFit

    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    std_a, std_b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    distance = frechet_distance(
        GaussianFit(mean_a, np.diag(std_a**2)), GaussianFit(mean_b, np.diag(std_b**2))
    )
    assert distance == pytest.approx(((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum())


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift(
    feature_sets: tuple[np.ndarray, np.ndarray],
) -> None:
    """Given a set against itself, FID is 0 (not a round-off negative); shifting one set raises it."""
    a, _ = feature_sets
    assert frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_frechet_distance_handles_fewer_samples_than_dimensions() -> None:
    """Given 20 samples of 128-d features (singular covariances), FID is finite and matches scipy."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 128)), rng.normal(size=(20, 128)) + 0.1
    ours = frechet_distance_from_features(a, b)
    assert np.isfinite(ours)
    assert ours == pytest.approx(scipy_frechet(a, b), rel=1e-4)


def test_fit_gaussian_refuses_a_single_sample() -> None:
    """Given one feature row, fitting a covariance raises a clear error instead of returning NaN."""
    with pytest.raises(InsufficientSamplesError, match="N ≥ 2"):
        fit_gaussian(np.zeros((1, 4)))


def test_mmd2_matches_naive_double_loop(feature_sets: tuple[np.ndarray, np.ndarray]) -> None:
    """Given 30 and 25 samples, the vectorised unbiased MMD² equals the naive loop's value."""
    a, b = feature_sets
    assert mmd2_unbiased(a[:30], b[:25]) == pytest.approx(naive_mmd2(a[:30], b[:25]), rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    """Given two samples of one distribution, KID ≈ 0 (unbiased); given shifted data, KID is clearly > 0."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8)) + 0.5
    same = kernel_inception_distance(a[:200], a[200:], subsets=20, subset_size=100)
    different = kernel_inception_distance(a, b, subsets=20, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-9
    assert different.mean > 10 * max(abs(same.mean), same.std)


def test_kid_subset_average_equals_mmd2_when_subsets_cover_everything(
    feature_sets: tuple[np.ndarray, np.ndarray],
) -> None:
    """Given subsets as large as the smaller set of equal-size sets, every subset is a permutation: KID = MMD²."""
    a, b = feature_sets
    result = kernel_inception_distance(a[:50], b[:50], subsets=3, subset_size=1000)
    assert result.mean == pytest.approx(naive_mmd2(a[:50], b[:50]), rel=1e-9)
    assert result.std == pytest.approx(0.0, abs=1e-9)
