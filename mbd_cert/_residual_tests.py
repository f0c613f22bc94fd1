"""The level-2 residual tests of diff - update on the mask against N(0, sigma^2) noise.

SPEC.md R-L2-6 to R-L2-8: a chi-square variance test, a D'Agostino-Pearson normality
test and a test of the residual's projection on the recomputed update, as one family
at the certificate's ``update.residual_alpha`` split by Bonferroni.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mbd_cert import stats
from mbd_cert._numbers import exact_number
from mbd_cert.report import FAIL, PASS, CheckResult

# The residual tests form one family; Bonferroni splits alpha over them.
RESIDUAL_TESTS = 3
CODE_RESIDUAL_REJECTED = "E_RESIDUAL_REJECTED"
CODE_INCONCLUSIVE = "E_INCONCLUSIVE"


def residual_checks(doc: Mapping[str, Any], masks: Mapping[str, np.ndarray],
                    diffs: Mapping[str, np.ndarray], displacement: Mapping[str, np.ndarray],
                    alpha: float, raw_norm: float | None = None) -> list[CheckResult]:
    """Return the three residual checks of diff - update on the masked entries.

    Args:
        doc: The certificate (``privacy.sigma``, ``update.clip_norm``).
        masks: Boolean mask per tensor.
        diffs: The audit bundle's diff per tensor (absent: zero).
        displacement: The recomputed clipped update per masked tensor.
        alpha: Family-wise significance level of the three tests.
        raw_norm: L2 norm of the recomputed update before the clip. When given, the
            projection check states how likely it was to catch an unclipped release
            (SPEC.md, R-L2-10).
    """
    sigma = float(doc["privacy"]["sigma"])
    names = sorted(masks)
    selected = [masks[n].reshape(-1) for n in names]
    diff = np.concatenate([
        diffs.get(n, np.zeros(masks[n].shape)).reshape(-1)[s]
        for n, s in zip(names, selected, strict=True)])
    deterministic = np.concatenate([
        displacement[n].reshape(-1)[s]
        for n, s in zip(names, selected, strict=True)])
    with np.errstate(over="ignore", invalid="ignore"):
        residual = diff - deterministic
        scaled = residual / sigma
    if not np.all(np.isfinite(scaled)) or not np.all(np.isfinite(scaled * scaled)):
        # Values this large cannot be Gaussian noise of this sigma, and the tests below
        # would overflow instead of returning a p-value.
        detail = (f"the residual diff - update, in units of sigma {exact_number(sigma)}, has "
                  "values too large to test (NaN, infinite, or overflowing when squared)")
        return [CheckResult(name, FAIL, detail, code=CODE_RESIDUAL_REJECTED,
                            requirement=requirement, n=int(residual.size))
                for name, requirement in (("residual-variance", "R-L2-6"),
                                          ("residual-normality", "R-L2-7"),
                                          ("residual-projection", "R-L2-8"))]
    level = alpha / RESIDUAL_TESTS
    family = f"alpha {alpha:g} over {RESIDUAL_TESTS} tests (Bonferroni, {level:.4g} each)"
    results = []

    variance = stats.variance_test(residual, sigma)
    results.append(_decide(
        "residual-variance", "R-L2-6", variance.p_value, level,
        f"residual variance / sigma^2 = {variance.statistic:.4f} (chi-square, n = {variance.n}, "
        f"two-sided p = {variance.p_value:.3g}, {family})", variance.n))

    # Below twice the level the asymptotic p-value is replaced by a simulated one,
    # because it understates the tail at these sizes (SPEC.md, R-L2-7).
    normality = stats.normality_test(residual, simulate_below=2.0 * level)
    if normality is None:
        results.append(CheckResult(
            "residual-normality", "inconclusive",
            f"{residual.size} masked entries are too few for the normality test "
            f"(needs {stats.MIN_NORMALITY_SAMPLES}): the issuer can reissue with a larger "
            "--top-k, or the verifier can accept it with --allow-inconclusive "
            "(allow_inconclusive in a policy file)", code=CODE_INCONCLUSIVE,
            requirement="R-L2-7", n=int(residual.size)))
    else:
        results.append(_decide(
            "residual-normality", "R-L2-7", normality.p_value, level,
            f"D'Agostino-Pearson K^2 = {normality.statistic:.4g}, p = {normality.p_value:.3g}"
            + (f" (Monte Carlo, {stats.NORMALITY_RESAMPLES:,} normal samples)"
               if normality.simulated else "")
            + f" ({family})", normality.n))

    projection = stats.projection_test(residual, deterministic, sigma)
    results.append(_decide(
        "residual-projection", "R-L2-8", projection.p_value, level,
        f"residual along the recomputed update: z = {projection.statistic:.3f} "
        f"(two-sided p = {projection.p_value:.3g}, {family})"
        + _power_note(raw_norm, float(doc["update"]["clip_norm"]), sigma, level),
        projection.n))
    return results


def _power_note(raw_norm: float | None, clip: float, sigma: float, level: float) -> str:
    """Return a note on how likely the projection test was to catch an unclipped release."""
    if raw_norm is None:
        return ""
    if raw_norm <= clip:
        return ("; the raw update is within the clip, so a release without the clip "
                "would be this same release")
    # Left unclipped, the update adds (raw - clip) along its own direction to the residual.
    shift = (raw_norm - clip) / sigma
    power = stats.projection_power(shift, level)
    return (f"; a release without the clip would shift z by {shift:.2f} ((raw norm "
            f"{raw_norm:.4g} - clip {clip:g}) / sigma), which this test detects with "
            f"probability {power:.2f}")


def _decide(name: str, requirement: str, p_value: float, level: float, detail: str,
            n: int) -> CheckResult:
    """Decide one residual test: pass when ``p_value >= level``.

    The report's value and threshold are both p-values, and the test statistic stays in
    the detail text. A rejection states how often an honest certificate is rejected, so
    a reader can tell that a chance rejection is possible.
    """
    passed = p_value >= level
    if not passed:
        detail += (f"; an honest certificate fails one of the {RESIDUAL_TESTS} residual "
                   f"tests with probability at most {level * RESIDUAL_TESTS:g}")
    return CheckResult(name, PASS if passed else FAIL, detail,
                       code=None if passed else CODE_RESIDUAL_REJECTED,
                       requirement=requirement, value=p_value, threshold=level, n=n)
