"""Fréchet distance: parity with the scipy sqrtm formulation (pytorch-fid / clean-fid / ADM), streaming stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditcore.metrics.fid import (
    FeatureStats,
    _WeightedFID,
    feature_stats,
    few_samples_warning,
    fid_bootstrap,
    frechet_distance,
    frechet_distance_sqrtm,
)

TOL = 1e-6


def _features(rng: np.random.Generator, n: int, d: int, *, cond: float | None = None, dead: int = 0) -> np.ndarray:
    """Correlated, offset features [n, d]; optional condition-number spread and constant (dead) features."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    if cond is not None:
        mix = mix * np.logspace(0, -np.log10(cond) / 2, d)[None, :]
    x = rng.standard_normal((n, d)) @ mix + rng.standard_normal(d)
    if dead:
        x[:, :dead] = 0.5
    return x


CASES = {
    "well-conditioned": dict(n=1024, d=64),
    "ill-conditioned (cond 1e12)": dict(n=1024, d=64, cond=1e12),
    "rank-deficient (n < d)": dict(n=40, d=96),
    "n == d": dict(n=96, d=96),
    "dead features": dict(n=512, d=64, dead=5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_scipy_sqrtm(case):
    kw = CASES[case]
    rng = np.random.default_rng(list(CASES).index(case))
    mu1, s1 = feature_stats(_features(rng, **kw))
    mu2, s2 = feature_stats(_features(rng, **kw))
    ref = frechet_distance_sqrtm(mu1, s1, mu2, s2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= TOL, (case, ours, ref)


def test_parity_when_both_covariances_are_singular_and_equal_sets():
    rng = np.random.default_rng(0)
    x = _features(rng, 30, 64)
    mu, s = feature_stats(x)
    # identical statistics: the distance is 0 up to the reference's own rounding
    assert abs(frechet_distance(mu, s, mu, s) - frechet_distance_sqrtm(mu, s, mu, s)) <= TOL
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-4


def test_eps_fallback_matches_reference_regularisation():
    # Zero covariance makes the product exactly zero: both paths must agree (and be ||mu1-mu2||^2 + tr S2).
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1 = np.zeros((16, 16))
    _, s2 = feature_stats(_features(rng, 200, 16))
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(frechet_distance_sqrtm(mu1, s1, mu2, s2), abs=TOL)
    assert ours == pytest.approx(float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s2)), abs=TOL)


def test_known_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1.0 + 4.0 + float(np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, abs=1e-12)


def test_accepts_torch_and_float32_inputs():
    rng = np.random.default_rng(2)
    mu1, s1 = feature_stats(_features(rng, 300, 32))
    mu2, s2 = feature_stats(_features(rng, 300, 32))
    ref = frechet_distance(mu1, s1, mu2, s2)
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2))
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (dict(mu2=np.zeros(5)), "different lengths"),
        (dict(sigma1=np.eye(3)), "sigma1 has shape"),
        (dict(sigma2=np.full((4, 4), np.nan)), "sigma2 contains NaN"),
    ],
)
def test_bad_inputs_are_named(bad, msg):
    args = dict(mu1=np.zeros(4), sigma1=np.eye(4), mu2=np.zeros(4), sigma2=np.eye(4))
    args.update(bad)
    with pytest.raises(ValueError, match=msg):
        frechet_distance(**args)


def test_indefinite_covariance_raises_like_reference():
    s = -np.eye(4)
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance_sqrtm(np.zeros(4), np.eye(4), np.zeros(4), s)
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), s)


def test_feature_stats_matches_numpy():
    x = np.random.default_rng(3).standard_normal((100, 8)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])


def test_streaming_equals_batch_and_merges_across_workers():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1000, 24)) * 3 + 100.0  # large offset: naive sum-of-squares would lose digits
    mu, sigma = feature_stats(x)
    acc = FeatureStats()
    for chunk in np.array_split(x, [7, 8, 300, 301, 650]):  # uneven, incl. a 1-row batch
        acc.update(torch.from_numpy(chunk))  # torch input, float64
    m_s, s_s = acc.compute()
    np.testing.assert_allclose(m_s, mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s_s, sigma, rtol=0, atol=1e-10)
    # two "workers" on disjoint shards, merged (also through the plain-data state), plus an empty one
    w1, w2 = FeatureStats().update(x[:123]), FeatureStats().update(x[123:])
    merged = FeatureStats.from_state_dict(w1.state_dict()).merge(FeatureStats()).merge(w2)
    assert merged.count == 1000
    m_m, s_m = merged.compute()
    np.testing.assert_allclose(m_m, mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s_m, sigma, rtol=0, atol=1e-10)
    assert frechet_distance(m_m, s_m, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # raw moments saved by a worker (e.g. precompute shards) merge the same way
    raw = FeatureStats().merge_moments(w1.count, w1.mean, w1.m2).merge_moments(w2.count, w2.mean, w2.m2)
    np.testing.assert_allclose(raw.compute()[1], sigma, rtol=0, atol=1e-10)


def test_streaming_dimension_mismatch_is_named():
    acc = FeatureStats().update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dimension 5 does not match accumulator dimension 4"):
        acc.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().compute()


def _gaussian_setup(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generated (mean, cholesky factor) and exact reference (mean, covariance) of known Gaussians."""
    mix_g = rng.standard_normal((d, d)) / np.sqrt(d)
    mix_r = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal(d) * 0.3, mix_g, np.zeros(d), mix_r @ mix_r.T


@pytest.mark.parametrize("n, d", [(400, 16), (12, 16)])
def test_bootstrap_replicate_equals_exact_fid_of_the_resample(n, d):
    # The factorised fast path must equal frechet_distance on the explicitly resampled features.
    rng = np.random.default_rng(5)
    mu_g, mix_g, mu_r, sigma_r = _gaussian_setup(rng, d)
    x = rng.standard_normal((n, d)) @ mix_g.T + mu_g
    fast = _WeightedFID(x, mu_r, sigma_r)
    assert fast(np.ones(n, dtype=np.int64)) == pytest.approx(
        frechet_distance(*feature_stats(x), mu_r, sigma_r), rel=1e-7 if n > d else 1e-5
    )
    for _ in range(3):
        idx = rng.integers(0, n, n)
        exact = frechet_distance(*feature_stats(x[idx]), mu_r, sigma_r)
        assert fast(np.bincount(idx, minlength=n)) == pytest.approx(exact, rel=1e-7 if n > d else 1e-5)


def test_bootstrap_se_matches_the_sampling_sd_over_independent_draws():
    # Truth: the sd of FID over 300 independent sets of N generated samples from a known Gaussian against
    # fixed reference statistics. The bootstrap SE from single sets must be close to it.
    rng = np.random.default_rng(0)
    n, d = 300, 8
    mu_g, mix_g, mu_r, sigma_r = _gaussian_setup(rng, d)

    def draw() -> np.ndarray:
        return rng.standard_normal((n, d)) @ mix_g.T + mu_g

    true_sd = np.std([frechet_distance(*feature_stats(draw()), mu_r, sigma_r) for _ in range(300)], ddof=1)
    ratios = [fid_bootstrap(draw(), mu_r, sigma_r, n_boot=200, seed=s)["se"] / true_sd for s in range(6)]
    assert 0.75 < np.mean(ratios) < 1.3, ratios
    assert all(0.5 < r < 1.8 for r in ratios), ratios


def test_the_se_is_not_inflated_where_samples_barely_outnumber_dimensions():
    # 80 samples in 64 dimensions (the quickstart scores 320 in 288): the bootstrap with replacement gave 2.2x the
    # sd of FID across independent sample sets (5.5x at the quickstart's scale); half-samples give ~1.2x.
    rng = np.random.default_rng(5)
    n, d = 80, 64
    mix_r = rng.standard_normal((d, d)) / np.sqrt(d)
    sigma_r, mu_r = mix_r @ mix_r.T + 0.1 * np.eye(d), np.zeros(d)
    mix_g, mu_g = mix_r + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d), 0.3 * rng.standard_normal(d)

    def draw() -> np.ndarray:
        return rng.standard_normal((n, d)) @ mix_g.T + mu_g

    true_sd = np.std([frechet_distance(*feature_stats(draw()), mu_r, sigma_r) for _ in range(300)], ddof=1)
    ratios = [fid_bootstrap(draw(), mu_r, sigma_r, n_boot=100, seed=s)["se"] / true_sd for s in range(6)]
    assert 0.8 < np.mean(ratios) < 1.5, ratios


def test_fid_bootstrap_report_and_determinism():
    rng = np.random.default_rng(1)
    mu_g, mix_g, mu_r, sigma_r = _gaussian_setup(rng, 8)
    x = rng.standard_normal((200, 8)) @ mix_g.T + mu_g
    out = fid_bootstrap(x, mu_r, sigma_r, n_boot=40, seed=3)
    assert out["fid"] == pytest.approx(frechet_distance(*feature_stats(x), mu_r, sigma_r), abs=1e-12)
    assert out["n_samples"] == 200 and out["dim"] == 8 and out["n_boot"] == 40 and out["method"] == "half-sampling"
    assert out["ci"][0] < out["ci"][1] and out["se"] > 0 and out["few_samples_warning"] is None
    assert out == fid_bootstrap(x, mu_r, sigma_r, n_boot=40, seed=3)
    with pytest.raises(ValueError, match="do not match"):
        fid_bootstrap(x, mu_r[:4], sigma_r[:4, :4])


def test_few_samples_warning():
    assert few_samples_warning(2048, 2048) is None and few_samples_warning(10000, 2048) is None
    msg = few_samples_warning(64, 2048)
    assert "64 samples in 2048 feature dimensions" in msg and "singular" in msg
    rng = np.random.default_rng(2)
    mu_g, mix_g, mu_r, sigma_r = _gaussian_setup(rng, 16)
    out = fid_bootstrap(rng.standard_normal((10, 16)) @ mix_g.T + mu_g, mu_r, sigma_r, n_boot=5)
    assert out["few_samples_warning"] == few_samples_warning(10, 16)


def test_fid_bootstrap_interval_contains_the_estimate_despite_the_resampling_shift():
    # 40 samples in 24 dimensions: a FID from a half-sample is biased further up, so the raw
    # percentile interval lies above the FID it describes; the reported interval is recentred on the estimate.
    rng = np.random.default_rng(4)
    mu_g, mix_g, mu_r, sigma_r = _gaussian_setup(rng, 24)
    out = fid_bootstrap(rng.standard_normal((40, 24)) @ mix_g.T + mu_g, mu_r, sigma_r, n_boot=100, seed=0)
    assert out["boot_shift"] > 0 and out["ci_percentile"][0] > out["fid"]
    assert out["ci"][0] < out["fid"] < out["ci"][1]
    width = out["ci_percentile"][1] - out["ci_percentile"][0]
    assert out["ci"][1] - out["ci"][0] == pytest.approx(width)


def test_a_covariance_that_is_not_symmetric_is_refused():
    # The Cholesky path read one triangle: tril(S) and triu(S) gave two FIDs, and neither was sqrtm's.
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 5))
    s = a @ a.T + np.eye(5)
    mu = np.zeros(5)
    with pytest.raises(ValueError, match=r"sigma1 is not symmetric \(max \|S - S\^T\| = "):
        frechet_distance(mu, np.tril(s), mu, np.eye(5))
    assert frechet_distance(mu, s, mu, np.eye(5)) == pytest.approx(frechet_distance(mu, s.T, mu, np.eye(5)))
