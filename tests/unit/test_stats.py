"""Oracle values for the statistics of levels 2 and 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mbd_cert import stats
from mbd_cert.errors import InputError


@pytest.mark.parametrize(
    ("successes", "trials", "lower", "upper"),
    [(10, 10, 0.722467, 1.0), (0, 10, 0.0, 0.277533), (0, 77, 0.0, 0.047518)],
)
def test_wilson_case_values(successes, trials, lower, upper):
    interval = stats.wilson_interval(successes, trials)
    assert interval.lower == pytest.approx(lower, abs=1e-6)
    assert interval.upper == pytest.approx(upper, abs=1e-6)
    assert interval.upper > interval.lower


def test_wilson_matches_closed_form_inside():
    z = scipy_stats.norm.ppf(0.975)
    p, n = 0.3, 50
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    interval = stats.wilson_interval(15, 50)
    assert interval.lower == pytest.approx(centre - half, rel=1e-12)
    assert interval.upper == pytest.approx(centre + half, rel=1e-12)


def test_clopper_pearson_known_values():
    # 0 of n: upper = 1 - (alpha/2)^(1/n); n of n: lower = (alpha/2)^(1/n).
    assert stats.clopper_pearson_interval(0, 10).upper == pytest.approx(1 - 0.025 ** 0.1)
    assert stats.clopper_pearson_interval(10, 10).lower == pytest.approx(0.025 ** 0.1)
    interval = stats.clopper_pearson_interval(5, 10)
    assert interval.lower == pytest.approx(0.187086, abs=1e-6)
    assert interval.upper == pytest.approx(0.812914, abs=1e-6)


def test_clopper_pearson_covers_by_monte_carlo():
    rng = np.random.default_rng(0)
    p, n = 0.1, 40
    draws = rng.binomial(n, p, size=2000)
    covered = [stats.clopper_pearson_interval(int(k), n).lower <= p <=
               stats.clopper_pearson_interval(int(k), n).upper for k in draws]
    # Exact intervals are conservative: coverage at least 95 % up to Monte Carlo error
    # (3 standard errors of 2,000 draws is about 1.5 points).
    assert np.mean(covered) >= 0.935


@pytest.mark.parametrize("bad", [(-1, 10), (11, 10), (0, 0)])
def test_interval_rejects_bad_counts(bad):
    with pytest.raises(InputError):
        stats.wilson_interval(*bad)


def test_balanced_accuracy_case_c26():
    truth = np.r_[np.zeros(4861, dtype=int), np.ones(249, dtype=int)]
    result = stats.balanced_accuracy(truth, np.zeros_like(truth))
    assert result.majority_rate == pytest.approx(0.9513, abs=1e-4)
    assert result.chance == 0.5
    assert result.value == 0.5
    assert result.interval.lower <= result.chance


def test_balanced_accuracy_perfect_classifier_exceeds_chance():
    truth = np.r_[np.zeros(60, dtype=int), np.ones(40, dtype=int)]
    result = stats.balanced_accuracy(truth, truth)
    assert result.value == 1.0
    assert result.interval.lower > result.chance


def test_auc_matches_mann_whitney():
    rng = np.random.default_rng(1)
    positive, negative = rng.normal(0.5, 1, 80), rng.normal(0, 1, 120)
    auc, interval = stats.auc_with_interval(positive, negative)
    expected = scipy_stats.mannwhitneyu(positive, negative).statistic / (80 * 120)
    assert auc == pytest.approx(expected)
    assert interval.lower < auc < interval.upper


def test_auc_ties_count_half():
    auc, _ = stats.auc_with_interval(np.ones(5), np.ones(7))
    assert auc == 0.5


def test_tpr_at_fpr_respects_cap():
    positive = np.arange(100, 200, dtype=float)
    negative = np.arange(0, 150, dtype=float)
    tp, fp, threshold = stats.tpr_at_fpr(positive, negative, 0.1)
    assert fp <= 15
    assert tp == int(np.sum(positive > threshold))
    assert fp == int(np.sum(negative > threshold))


def test_epsilon_bound_zero_without_signal():
    assert stats.epsilon_lower_bound(10, 100, 10, 100, 1e-5) == 0.0


def test_epsilon_bound_formula():
    """R-L3-2: the empirical epsilon bound from Clopper-Pearson ends."""
    tpr_lo = stats.clopper_pearson_interval(90, 100).lower
    fpr_hi = stats.clopper_pearson_interval(2, 100).upper
    expected = max(math.log((tpr_lo - 1e-5) / fpr_hi),
                   math.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert stats.epsilon_lower_bound(90, 100, 2, 100, 1e-5) == pytest.approx(expected)
    assert expected > 1


def test_variance_test_is_calibrated():
    rng = np.random.default_rng(2)
    p_values = [stats.variance_test(rng.normal(0, 2.0, 400), 2.0).p_value for _ in range(400)]
    # Under the null the p-value is uniform: about 5 % below 0.05 (3 standard errors).
    assert abs(np.mean(np.array(p_values) < 0.05) - 0.05) < 0.033


def test_variance_test_rejects_understated_sigma():
    """R-L2-6: the chi-square test rejects too little noise."""
    rng = np.random.default_rng(3)
    result = stats.variance_test(rng.normal(0, 0.8, 800), 1.0)
    assert result.statistic == pytest.approx(0.64, abs=0.08)
    assert result.p_value < 1e-6


def test_normality_test_needs_twenty_samples():
    """R-L2-7: the normality test needs 20 values."""
    assert stats.normality_test(np.zeros(19)) is None
    uniform = np.random.default_rng(4).uniform(-1, 1, 2000)
    assert stats.normality_test(uniform).p_value < 1e-6


def test_projection_test_detects_shift():
    """R-L2-8: the projection test detects a shift along the update."""
    rng = np.random.default_rng(5)
    direction = rng.normal(size=500)
    noise = rng.normal(0, 1.0, 500)
    assert stats.projection_test(noise, direction, 1.0).p_value > 1e-3
    shifted = noise + 8.0 * direction / np.linalg.norm(direction)
    assert stats.projection_test(shifted, direction, 1.0).statistic > 5


@pytest.mark.parametrize("level", [0.05, 0.01 / 3])
def test_projection_power_at_zero_is_level(level):
    assert stats.projection_power(0.0, level) == pytest.approx(level, rel=1e-12)


@pytest.mark.parametrize("shift", [0.5, 2.0, 4.0])
def test_projection_power_matches_simulation(shift):
    # The rejection rate of the test itself on residuals shifted along a direction.
    level = 0.01 / 3
    rng = np.random.default_rng(7)
    direction = np.ones(50) / np.sqrt(50)
    trials = 4000
    rejected = 0
    for _ in range(trials):
        residual = rng.normal(0.0, 1.0, 50) + shift * direction
        rejected += stats.projection_test(residual, direction, 1.0).p_value < level
    expected = stats.projection_power(shift, level)
    assert rejected / trials == pytest.approx(expected, abs=4 * np.sqrt(0.25 / trials))


def _sample_with_asymptotic_p(low: float, high: float, n: int = 397) -> np.ndarray:
    """Return the first seeded normal sample whose asymptotic K^2 p-value is in [low, high)."""
    for seed in range(100_000):
        values = np.random.default_rng(seed).standard_normal(n)
        if low <= scipy_stats.normaltest(values).pvalue < high:
            return values
    raise AssertionError("no such sample")


def test_normality_simulated_only_below_threshold():
    values = np.random.default_rng(11).standard_normal(397)
    result = stats.normality_test(values, simulate_below=1e-3)
    assert result.simulated is False
    assert result.p_value == pytest.approx(scipy_stats.normaltest(values).pvalue, rel=1e-12)


def test_normality_tail_p_value_simulated():
    """R-L2-7: in the tail the Monte Carlo p-value replaces the asymptotic one."""
    # At n = 397 the chi-square p-value understates the tail, so the simulated one is
    # larger. Its samples come from a fixed stream, so it is the same on every run.
    values = _sample_with_asymptotic_p(0.001, 0.0033)
    first = stats.normality_test(values, simulate_below=0.0067)
    second = stats.normality_test(values, simulate_below=0.0067)
    assert first.simulated is True
    assert first.p_value > scipy_stats.normaltest(values).pvalue
    assert first.p_value == second.p_value
    assert first.statistic == pytest.approx(scipy_stats.normaltest(values).statistic)


def test_normality_clearly_non_normal_still_rejected():
    uniform = np.random.default_rng(4).uniform(-1, 1, 2000)
    result = stats.normality_test(uniform, simulate_below=0.0067)
    assert result.simulated is True
    assert result.p_value == pytest.approx(1 / (stats.NORMALITY_RESAMPLES + 1))


def test_normality_monte_carlo_matches_stated_stream():
    """R-L2-7: the p-value counts rows of default_rng(0).standard_normal, 9,999 of size n."""
    values = np.random.default_rng(30).standard_normal(397)
    observed = scipy_stats.normaltest(values).statistic
    rows = np.random.default_rng(0).standard_normal((9_999, 397))
    at_least = np.count_nonzero(scipy_stats.normaltest(rows, axis=1).statistic >= observed)
    result = stats.normality_test(values, simulate_below=0.0067)
    assert result.simulated is True
    assert result.p_value == (1 + at_least) / 10_000


def test_normality_not_simulated_above_20000():
    """R-L2-7: above 20,000 entries the chi-square p-value is used."""
    uniform = np.random.default_rng(4).uniform(-1, 1, 20_001)
    result = stats.normality_test(uniform, simulate_below=0.0067)
    assert result.simulated is False
    assert result.p_value == pytest.approx(scipy_stats.normaltest(uniform).pvalue)


def test_epsilon_bound_second_term():
    """R-L3-2: the bound takes log((1 - FPR_hi - delta) / (1 - TPR_lo)) when larger."""
    # Clopper-Pearson ends from the beta distribution, two-sided 95 %.
    tpr_lo = scipy_stats.beta.ppf(0.025, 100, 1)
    fpr_hi = scipy_stats.beta.ppf(0.975, 31, 70)
    first = math.log((tpr_lo - 1e-5) / fpr_hi)
    second = math.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo))
    assert second > first
    assert stats.epsilon_lower_bound(100, 100, 30, 100, 1e-5) == pytest.approx(second)


def test_auc_interval_hanley_mcneil():
    """R-L3-2: the AUC interval is Hanley and McNeil's (1982) normal interval."""
    rng = np.random.default_rng(8)
    positive, negative = rng.normal(0.8, 1, 40), rng.normal(0, 1, 60)
    auc, interval = stats.auc_with_interval(positive, negative)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + 39 * (q1 - auc**2) + 59 * (q2 - auc**2)) / (40 * 60)
    half = scipy_stats.norm.ppf(0.975) * math.sqrt(variance)
    assert interval.lower == pytest.approx(auc - half)
    assert interval.upper == pytest.approx(auc + half)


def test_balanced_accuracy_bonferroni_wilson():
    """R-L3-3: per-class Wilson intervals at 0.05 / classes, averaged."""
    truth = np.r_[np.zeros(30, dtype=int), np.ones(20, dtype=int)]
    predicted = np.r_[np.zeros(24, dtype=int), np.ones(6, dtype=int),
                      np.ones(15, dtype=int), np.zeros(5, dtype=int)]
    result = stats.balanced_accuracy(truth, predicted)
    zeros, ones = stats.wilson_interval(24, 30, 0.025), stats.wilson_interval(15, 20, 0.025)
    assert result.value == pytest.approx((24 / 30 + 15 / 20) / 2)
    assert result.interval.lower == pytest.approx((zeros.lower + ones.lower) / 2)
    assert result.interval.upper == pytest.approx((zeros.upper + ones.upper) / 2)
    assert result.chance == 0.5
