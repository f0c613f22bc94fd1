"""The level-2 residual checks on hand-made residuals, without a model or a bundle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mbd_cert._residual_tests import residual_checks

# Residual family level: alpha 0.01 over three tests, 0.01 / 3 each.
ALPHA = 0.01
# A standard normal sample of 397 values whose asymptotic K^2 p-value is 0.00258, below
# the per-test level 0.00333, while its Monte Carlo p-value is 0.0047, above it.
TAIL_SEED = 30
TAIL_SIZE = 397


def _checks(residual: np.ndarray, sigma: float = 1.0) -> dict[str, object]:
    """Run the residual checks on ``residual``, with a zero deterministic update."""
    doc = {"privacy": {"sigma": sigma}, "update": {"clip_norm": 1.0}}
    masks = {"w": np.ones(residual.size, dtype=bool)}
    results = residual_checks(doc, masks, {"w": residual}, {"w": np.zeros(residual.size)},
                              ALPHA)
    return {check.name: check for check in results}


def test_normality_uses_monte_carlo_in_tail():
    """R-L2-7: below twice the level, level 2 takes the Monte Carlo p-value."""
    values = np.random.default_rng(TAIL_SEED).standard_normal(TAIL_SIZE)
    assert scipy_stats.normaltest(values).pvalue < ALPHA / 3
    check = _checks(values)["residual-normality"]
    assert check.status == "pass", check.detail
    assert check.value == pytest.approx(0.0047)
    assert "Monte Carlo" in check.detail


def test_normality_rejects_uniform_residual():
    """R-L2-7: a residual of the right variance but not normal fails."""
    # Uniform on [-sqrt(3), sqrt(3)] has variance 1, so only the normality test can detect it.
    values = np.random.default_rng(4).uniform(-math.sqrt(3), math.sqrt(3), 2000)
    checks = _checks(values)
    assert checks["residual-variance"].status == "pass"
    assert (checks["residual-normality"].status,
            checks["residual-normality"].code) == ("fail", "E_RESIDUAL_REJECTED")


def test_normality_inconclusive_below_twenty():
    """R-L2-7: with fewer than 20 masked entries the normality check is inconclusive."""
    values = np.random.default_rng(5).standard_normal(19)
    check = _checks(values)["residual-normality"]
    assert (check.status, check.code) == ("inconclusive", "E_INCONCLUSIVE")
    assert check.n == 19
    assert "reissue with a larger --top-k" in check.detail
    assert "--allow-inconclusive" in check.detail


def test_variance_rejects_too_much_noise():
    """R-L2-6: the chi-square test is two-sided, so more noise than sigma fails too."""
    values = np.random.default_rng(6).normal(0.0, 1.25, 800)
    check = _checks(values)["residual-variance"]
    assert (check.status, check.code) == ("fail", "E_RESIDUAL_REJECTED")
    assert check.threshold == pytest.approx(ALPHA / 3)
