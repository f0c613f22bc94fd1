"""Statistics of the level-2 and level-3 checks: intervals, tests and bounds (numpy, scipy).

Every function takes counts or arrays and returns plain numbers, so each can be tested
against an independent oracle. Intervals are two-sided at confidence ``1 - alpha``; a
bound that decides a claim is always the end of an interval that makes the claim
harder to pass (STYLE.md, "Statistics").

Sources:

* Wilson score interval: E. B. Wilson, "Probable inference, the law of succession, and
  statistical inference", JASA 22 (1927).
* Clopper-Pearson interval: C. J. Clopper and E. S. Pearson, Biometrika 26 (1934), in
  its beta-quantile form.
* AUC standard error: J. A. Hanley and B. J. McNeil, "The meaning and use of the area
  under a receiver operating characteristic (ROC) curve", Radiology 143 (1982),
  equation 2.
* Empirical epsilon: an (epsilon, delta)-DP mechanism bounds every membership test by
  TPR <= exp(epsilon) FPR + delta and 1 - FPR <= exp(epsilon) (1 - TPR) + delta
  (P. Kairouz, S. Oh, P. Viswanath, "The composition theorem for differential
  privacy", ICML 2015, Theorem 2.1). Inverting both with Clopper-Pearson bounds gives
  a lower bound on epsilon, as in M. Jagielski, J. Ullman, A. Oprea, "Auditing
  differentially private machine learning: how private is private SGD?", NeurIPS 2020.

Stability: public; new functions may be added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from mbd_cert.errors import InputError

# scipy's D'Agostino-Pearson test relies on its kurtosis test, which is only valid from
# 20 samples on (scipy.stats.kurtosistest documentation).
MIN_NORMALITY_SAMPLES = 20
# The Monte Carlo p-value of the normality test: samples, seed, the largest residual
# it is run for (6.4 s at that size, 0.13 s at 397, on one core of the 2-core test
# machine), and values per batch (32 MB).
NORMALITY_RESAMPLES = 9_999
NORMALITY_SEED = 0
MAX_SIMULATED_NORMALITY = 20_000
_SIMULATION_VALUES = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval ``[lower, upper]`` at confidence ``1 - alpha``."""

    lower: float
    upper: float


@dataclass(frozen=True)
class HypothesisTestResult:
    """Outcome of a hypothesis test.

    Attributes:
        statistic: The test statistic (its meaning is in the function's docstring).
        p_value: Probability under the null hypothesis of a statistic at least as
            extreme, two-sided unless the function states otherwise.
        n: Number of observations.
        simulated: Whether ``p_value`` comes from a Monte Carlo simulation of the null
            distribution rather than an asymptotic formula.
    """

    statistic: float
    p_value: float
    n: int
    simulated: bool = False


@dataclass(frozen=True)
class BalancedAccuracy:
    """Balanced accuracy of a classifier with its interval and the chance levels.

    Attributes:
        value: Mean of the per-class recalls.
        interval: Interval of the balanced accuracy (see :func:`balanced_accuracy`).
        chance: Balanced accuracy of any classifier that ignores its input: 1 / classes.
        majority_rate: Share of the largest class, the plain accuracy of always
            predicting it. Plain accuracy must be compared with this, never with 0.5.
        n: Number of samples.
        classes: Number of classes present in the true labels.
    """

    value: float
    interval: Interval
    chance: float
    majority_rate: float
    n: int
    classes: int


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}", code="E_PARAMETER_INVALID")


def _check_counts(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(
            f"counts must satisfy 0 <= successes <= trials and trials >= 1, "
            f"got {successes} of {trials}",
            code="E_PARAMETER_INVALID",
        )


def wilson_interval(successes: int, trials: int, alpha: float = 0.05) -> Interval:
    """Return the Wilson score interval of a binomial proportion.

    Never of zero width: at 0 or ``trials`` successes one end is 0 or 1 and the other
    is strictly inside (0, 1).

    Raises:
        InputError: Counts or ``alpha`` out of range (``E_PARAMETER_INVALID``).
    """
    _check_counts(successes, trials)
    _check_alpha(alpha)
    z = float(scipy_stats.norm.ppf(1.0 - alpha / 2.0))
    z2 = z * z
    p = successes / trials
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(lower, upper)


def clopper_pearson_interval(successes: int, trials: int, alpha: float = 0.05) -> Interval:
    """Return the exact (Clopper-Pearson) interval of a binomial proportion.

    Raises:
        InputError: Counts or ``alpha`` out of range (``E_PARAMETER_INVALID``).
    """
    _check_counts(successes, trials)
    _check_alpha(alpha)
    lower = 0.0
    upper = 1.0
    if successes > 0:
        lower = float(scipy_stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    if successes < trials:
        upper = float(scipy_stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return Interval(lower, upper)


def balanced_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, alpha: float = 0.05
) -> BalancedAccuracy:
    """Return the balanced accuracy with a conservative interval.

    Each class recall gets a Wilson interval at ``alpha / classes`` (Bonferroni), so all
    of them hold together with probability at least ``1 - alpha``; the mean of their
    ends then bounds the balanced accuracy at that level.

    Raises:
        InputError: The arrays differ in length or are empty.
    """
    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    if truth.shape != predicted.shape or truth.ndim != 1 or truth.size == 0:
        raise InputError(
            f"labels and predictions must be non-empty 1-D arrays of one length, got "
            f"{list(truth.shape)} and {list(predicted.shape)}",
            code="E_PARAMETER_INVALID",
        )
    _check_alpha(alpha)
    classes, counts = np.unique(truth, return_counts=True)
    recalls, lowers, uppers = [], [], []
    for label, count in zip(classes, counts, strict=True):
        hits = int(np.sum((truth == label) & (predicted == label)))
        interval = wilson_interval(hits, int(count), alpha / len(classes))
        recalls.append(hits / int(count))
        lowers.append(interval.lower)
        uppers.append(interval.upper)
    return BalancedAccuracy(
        value=float(np.mean(recalls)),
        interval=Interval(float(np.mean(lowers)), float(np.mean(uppers))),
        chance=1.0 / len(classes),
        majority_rate=float(counts.max() / truth.size),
        n=int(truth.size),
        classes=len(classes),
    )


def auc_with_interval(
    positive_scores: np.ndarray, negative_scores: np.ndarray, alpha: float = 0.05
) -> tuple[float, Interval]:
    """Return the ROC AUC (ties count one half) and its Hanley-McNeil interval.

    The AUC is the probability that a random positive scores above a random negative.

    Raises:
        InputError: A group is empty.
    """
    positive = np.asarray(positive_scores, dtype=np.float64)
    negative = np.asarray(negative_scores, dtype=np.float64)
    n1, n0 = positive.size, negative.size
    if n1 == 0 or n0 == 0:
        raise InputError("the AUC needs at least one positive and one negative score")
    _check_alpha(alpha)
    ranks = scipy_stats.rankdata(np.concatenate([positive, negative]))
    auc = float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
    # At AUC 0 or 1 the formula gives variance 0; a floor of one rank step per pair
    # keeps the interval from collapsing to a point.
    half = float(scipy_stats.norm.ppf(1 - alpha / 2)) * math.sqrt(max(variance, 1 / (n1 * n0)))
    return auc, Interval(max(0.0, auc - half), min(1.0, auc + half))


def tpr_at_fpr(
    positive_scores: np.ndarray, negative_scores: np.ndarray, target_fpr: float
) -> tuple[int, int, float]:
    """Return ``(true_positives, false_positives, threshold)`` of the test "score > t".

    The threshold is the lowest one that flags at most ``floor(target_fpr * n0)``
    negatives, which gives the largest true-positive count at that false-positive cap.
    """
    positive = np.asarray(positive_scores, dtype=np.float64)
    negative = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(target_fpr * negative.size + 1e-12))
    threshold = -math.inf if allowed >= negative.size else float(negative[allowed])
    return (
        int(np.sum(positive > threshold)),
        int(np.sum(negative > threshold)),
        threshold,
    )


def epsilon_lower_bound(
    true_positives: int,
    positives: int,
    false_positives: int,
    negatives: int,
    delta: float,
    alpha: float = 0.05,
) -> float:
    """Return a lower confidence bound on epsilon from one membership test's counts.

    With Clopper-Pearson bounds TPR_lo (lower end of the TPR interval) and FPR_hi (upper
    end of the FPR interval), each from a two-sided ``1 - alpha`` interval, so that both
    hold together with probability at least ``1 - alpha``::

        eps_lb = max(0, log((TPR_lo - delta) / FPR_hi),
                        log((1 - FPR_hi - delta) / (1 - TPR_lo)))

    Both terms invert the (epsilon, delta)-DP hypothesis-testing bounds (Kairouz, Oh and
    Viswanath 2015); the worst-case ends of the intervals make the bound conservative.
    A term whose numerator is not positive is left out.

    Raises:
        InputError: Counts, ``delta`` or ``alpha`` out of range.
    """
    if not 0 <= delta < 1:
        raise InputError(f"delta must be in [0, 1), got {delta!r}", code="E_PARAMETER_INVALID")
    tpr_lo = clopper_pearson_interval(true_positives, positives, alpha).lower
    fpr_hi = clopper_pearson_interval(false_positives, negatives, alpha).upper
    bound = 0.0
    if tpr_lo - delta > 0:
        bound = max(bound, math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0:
        bound = max(bound, math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return bound


def variance_test(residual: np.ndarray, sigma: float) -> HypothesisTestResult:
    """Test that zero-mean ``residual`` entries have variance ``sigma**2`` (chi-square).

    Under the null hypothesis sum(r**2) / sigma**2 follows chi-square with n degrees of
    freedom. The p-value is two-sided: twice the smaller tail, at most 1.

    Returns:
        ``statistic`` is the variance ratio sum(r**2) / (n sigma**2), 1 in expectation.

    Raises:
        InputError: ``residual`` is empty or ``sigma`` is not positive.
    """
    values = np.asarray(residual, dtype=np.float64).ravel()
    if values.size == 0 or not sigma > 0:
        raise InputError(
            f"the variance test needs a non-empty residual and sigma > 0, got n = "
            f"{values.size}, sigma = {sigma!r}",
            code="E_PARAMETER_INVALID",
        )
    total = float(np.sum(values * values)) / (sigma * sigma)
    n = int(values.size)
    lower = float(scipy_stats.chi2.cdf(total, n))
    upper = float(scipy_stats.chi2.sf(total, n))
    return HypothesisTestResult(statistic=total / n, p_value=min(1.0, 2.0 * min(lower, upper)), n=n)


def normality_test(residual: np.ndarray, *,
                   simulate_below: float = 0.0) -> HypothesisTestResult | None:
    """Return D'Agostino and Pearson's K-squared test of normality, or None below 20 samples.

    The chi-square(2) p-value of K^2 is too small in the tail at these sample sizes: of
    200,000 normal samples of size 397, 0.60 % fell below 0.0033 (0.95 % at size 50,
    0.38 % at size 2,000). When it is below ``simulate_below`` and there are at most
    :data:`MAX_SIMULATED_NORMALITY` values, the p-value is replaced by a Monte Carlo
    one: K^2 is location- and scale-free, so its null distribution is that of standard
    normal samples of the same size (SPEC.md, R-L2-7).

    Raises:
        InputError: A value is not finite.
    """
    values = np.asarray(residual, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise InputError("the residual contains NaN or infinite values")
    if values.size < MIN_NORMALITY_SAMPLES:
        return None
    result = scipy_stats.normaltest(values)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    if p_value >= simulate_below or values.size > MAX_SIMULATED_NORMALITY:
        return HypothesisTestResult(statistic, p_value, int(values.size))

    # A fixed seed, so the verdict on a given certificate never changes between runs.
    # The samples are drawn here, row by row from one stream, rather than through
    # scipy.stats.monte_carlo_test, so that the stream SPEC.md names does not depend
    # on how a scipy release batches its draws.
    generator = np.random.default_rng(NORMALITY_SEED)
    rows = max(1, _SIMULATION_VALUES // values.size)
    at_least = drawn = 0
    while drawn < NORMALITY_RESAMPLES:
        count = min(rows, NORMALITY_RESAMPLES - drawn)
        samples = generator.standard_normal((count, values.size))
        simulated = scipy_stats.normaltest(samples, axis=1).statistic
        at_least += int(np.count_nonzero(simulated >= statistic))
        drawn += count
    p_value = (at_least + 1) / (NORMALITY_RESAMPLES + 1)
    return HypothesisTestResult(statistic, p_value, int(values.size), simulated=True)


def projection_power(shift: float, level: float) -> float:
    """Return the chance that the two-sided projection test at ``level`` rejects a mean shift.

    With z ~ N(shift, 1) and the critical value c = Phi^-1(1 - level / 2), that chance
    is Phi(shift - c) + Phi(-shift - c). At ``shift`` 0 it equals ``level``.
    """
    critical = float(scipy_stats.norm.isf(level / 2.0))
    return float(scipy_stats.norm.cdf(shift - critical) + scipy_stats.norm.cdf(-shift - critical))


def projection_test(
    residual: np.ndarray, direction: np.ndarray, sigma: float
) -> HypothesisTestResult:
    """Test that ``residual`` has no component along ``direction`` beyond N(0, sigma**2).

    For isotropic Gaussian noise the projection on a fixed unit vector u is N(0, sigma**2),
    so z = <r, u> / sigma is standard normal. A displacement left in the residual (an
    unclipped or different update) shifts z along u.

    Returns:
        ``statistic`` is z; the p-value is two-sided. A zero direction gives z = 0, p = 1.

    Raises:
        InputError: Shapes differ or ``sigma`` is not positive.
    """
    values = np.asarray(residual, dtype=np.float64).ravel()
    vector = np.asarray(direction, dtype=np.float64).ravel()
    if values.shape != vector.shape or not sigma > 0:
        raise InputError(
            f"the projection test needs arrays of one shape and sigma > 0, got "
            f"{values.size} and {vector.size} entries, sigma = {sigma!r}",
            code="E_PARAMETER_INVALID",
        )
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        return HypothesisTestResult(0.0, 1.0, int(values.size))
    z = float(values @ vector) / norm / sigma
    return HypothesisTestResult(z, float(2.0 * scipy_stats.norm.sf(abs(z))), int(values.size))
