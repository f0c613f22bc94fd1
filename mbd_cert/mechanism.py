"""Calibration of the Gaussian mechanism that noises a modality deletion.

The issuer adds N(0, sigma^2) noise to every masked parameter so that the update is
(epsilon, delta)-differentially private for a stated L2 sensitivity. This module computes
the exact delta of that mechanism, the smallest sigma for a target (epsilon, delta), the
smallest epsilon for a given sigma and delta, and the verifier's calibration check.

All numbers go through a log-space evaluation, so epsilon = 1000 or delta = 1e-18 give
finite results without overflow or warnings. Inverse functions round toward the safe side:
the returned sigma or epsilon is never smaller than the exact one.

Stability: the public functions and :class:`CalibrationResult` are part of the mbd-cert
API. Private helpers (leading underscore) may change in any release.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from mbd_cert._gaussian_delta import log_delta as _log_delta
from mbd_cert._gaussian_delta import log_delta_at_most as _log_delta_at_most
from mbd_cert._gaussian_delta import log_target as _log_target
from mbd_cert._gaussian_delta import smallest_satisfying as _smallest_satisfying
from mbd_cert.errors import InputError

__all__ = [
    "CLASSIC_EPSILON_LIMIT",
    "DELTA_SAFETY_MARGIN",
    "VERIFY_DELTA_MARGIN",
    "CalibrationResult",
    "analytic_gaussian_delta",
    "analytic_gaussian_epsilon",
    "analytic_gaussian_sigma",
    "check_calibration",
    "classic_gaussian_sigma",
]

# Inverse functions return the smallest float whose computed delta is at most
# (1 - DELTA_SAFETY_MARGIN) * delta. tests/unit/test_mechanism.py checks the evaluation
# of delta (mbd_cert._gaussian_delta) against 60-digit mpmath to 1e-11 relative for
# delta >= 1e-300 (the worst error seen is 7e-13), so the margin covers evaluation
# error and scipy build differences.
DELTA_SAFETY_MARGIN = 1e-9

# check_calibration passes only if the computed delta is at most
# (1 - VERIFY_DELTA_MARGIN) * delta. The margin is on the rejecting side, so an evaluation
# error below it cannot pass a sigma whose true delta exceeds the stated delta. It is
# smaller than DELTA_SAFETY_MARGIN, so every sigma from analytic_gaussian_sigma passes.
VERIFY_DELTA_MARGIN = 1e-10

# Dwork and Roth, "The Algorithmic Foundations of Differential Privacy" (2014), prove
# the classic bound only for epsilon in (0, 1).
CLASSIC_EPSILON_LIMIT = 1.0


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of checking a stated sigma against a stated (epsilon, delta).

    Attributes:
        epsilon: Stated epsilon.
        delta: Stated delta.
        sensitivity: Stated L2 sensitivity.
        sigma: Stated noise standard deviation.
        required_sigma: Smallest sigma for (epsilon, delta), from
            :func:`analytic_gaussian_sigma`. ``sigma >= required_sigma`` implies ``ok``.
        actual_delta: Exact delta of the Gaussian mechanism at ``sigma`` and ``epsilon``.
            It is 0.0 when the true value is below the smallest positive float.
        ok: Whether ``actual_delta <= (1 - VERIFY_DELTA_MARGIN) * delta``.
    """

    epsilon: float
    delta: float
    sensitivity: float
    sigma: float
    required_sigma: float
    actual_delta: float
    ok: bool


def analytic_gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Compute the exact delta of the Gaussian mechanism at a given epsilon.

    Balle and Wang, "Improving the Gaussian Mechanism for Differential Privacy",
    ICML 2018 (arXiv:1805.06530): with mu = sensitivity / sigma,
    delta = Phi(mu/2 - epsilon/mu) - exp(epsilon) * Phi(-mu/2 - epsilon/mu).

    Args:
        epsilon: Privacy parameter, finite and > 0.
        sigma: Noise standard deviation, finite and > 0.
        sensitivity: L2 sensitivity of the update, finite and > 0.

    Returns:
        The smallest delta for which the mechanism is (epsilon, delta)-DP. It is 0.0
        when that value is below the smallest positive float.

    Raises:
        InputError: If an argument is not a finite number in its range
            (code ``E_PARAMETER_INVALID``).
    """
    epsilon = _require_positive("epsilon", epsilon)
    sigma = _require_positive("sigma", sigma)
    sensitivity = _require_positive("sensitivity", sensitivity)
    return math.exp(_log_delta(sensitivity / sigma, epsilon))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Find the smallest sigma that makes the Gaussian mechanism (epsilon, delta)-DP.

    The search brackets sigma between consecutive powers of two, then bisects the 52
    significand bits. It returns the smallest float found whose computed delta is at most
    ``(1 - DELTA_SAFETY_MARGIN) * delta``, so the result is rounded up and satisfies the
    bound despite evaluation error.

    Args:
        epsilon: Target epsilon, finite and > 0.
        delta: Target delta, in (0, 1).
        sensitivity: L2 sensitivity of the update, finite and > 0.

    Returns:
        The noise standard deviation, or ``math.inf`` when it exceeds the largest
        float. For epsilon = 1, delta = 1e-5, sensitivity = 1 it
        is 3.7306316350, where the exact root is 3.7306316348: the margin adds about
        6e-11 relative.

    Raises:
        InputError: If an argument is not a finite number in its range
            (code ``E_PARAMETER_INVALID``).
    """
    epsilon = _require_positive("epsilon", epsilon)
    delta = _require_probability("delta", delta)
    sensitivity = _require_positive("sensitivity", sensitivity)
    log_target = _log_target(delta, DELTA_SAFETY_MARGIN)
    return _smallest_satisfying(
        lambda sigma: _log_delta_at_most(sensitivity / sigma, epsilon, log_target)
    )


def analytic_gaussian_epsilon(delta: float, sigma: float, sensitivity: float) -> float:
    """Find the smallest epsilon at which the Gaussian mechanism is (epsilon, delta)-DP.

    The result is rounded up in the same way as :func:`analytic_gaussian_sigma`. It never
    increases as ``delta`` grows, because the search steps are deterministic.

    Args:
        delta: Target delta, in (0, 1).
        sigma: Noise standard deviation, finite and > 0.
        sensitivity: L2 sensitivity of the update, finite and > 0.

    Returns:
        The epsilon, >= 0. It is 0.0 when even epsilon = 0 meets the target delta, and
        ``math.inf`` when it exceeds the largest float.

    Raises:
        InputError: If an argument is not a finite number in its range
            (code ``E_PARAMETER_INVALID``).
    """
    delta = _require_probability("delta", delta)
    sigma = _require_positive("sigma", sigma)
    sensitivity = _require_positive("sensitivity", sensitivity)
    return _epsilon_for_mu(sensitivity / sigma, delta)


def classic_gaussian_sigma(
    epsilon: float, delta: float, sensitivity: float, *, allow_invalid: bool = False
) -> float:
    """Compute the textbook sigma sqrt(2 ln(1.25 / delta)) * sensitivity / epsilon.

    The bound is proved only for epsilon < 1 (Dwork and Roth 2014). At
    epsilon >= 1 it can be too small: at epsilon = 10, delta = 1e-5 it gives 0.484481,
    whose true delta is 2.265e-5. Use :func:`analytic_gaussian_sigma` to calibrate noise.

    Args:
        epsilon: Target epsilon, finite and > 0.
        delta: Target delta, in (0, 1).
        sensitivity: L2 sensitivity of the update, finite and > 0.
        allow_invalid: Return the formula's value for epsilon >= 1 as well, for reports
            that compare it with the analytic sigma. Such a sigma is not calibrated.

    Returns:
        The textbook noise standard deviation.

    Raises:
        InputError: If an argument is not a finite number in its range, or if
            epsilon >= 1 and ``allow_invalid`` is false (code ``E_PARAMETER_INVALID``).
    """
    epsilon = _require_positive("epsilon", epsilon)
    delta = _require_probability("delta", delta)
    sensitivity = _require_positive("sensitivity", sensitivity)
    if epsilon >= CLASSIC_EPSILON_LIMIT and not allow_invalid:
        raise InputError(
            f"invalid epsilon for the classic Gaussian bound: must be < "
            f"{CLASSIC_EPSILON_LIMIT}, got {epsilon!r}",
            hint="use analytic_gaussian_sigma, which is valid for every epsilon > 0",
            code="E_PARAMETER_INVALID",
        )
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / epsilon


def check_calibration(
    epsilon: float, delta: float, sensitivity: float, sigma: float
) -> CalibrationResult:
    """Check that a stated sigma gives the stated (epsilon, delta) for the sensitivity.

    Args:
        epsilon: Stated epsilon, finite and > 0.
        delta: Stated delta, in (0, 1).
        sensitivity: Stated L2 sensitivity, finite and > 0.
        sigma: Stated noise standard deviation, finite and > 0.

    Returns:
        The required sigma, the actual delta at ``sigma`` and whether the claim holds.

    Raises:
        InputError: If an argument is not a finite number in its range
            (code ``E_PARAMETER_INVALID``).
    """
    epsilon = _require_positive("epsilon", epsilon)
    delta = _require_probability("delta", delta)
    sensitivity = _require_positive("sensitivity", sensitivity)
    sigma = _require_positive("sigma", sigma)
    log_actual = _log_delta(sensitivity / sigma, epsilon)
    return CalibrationResult(
        epsilon=epsilon,
        delta=delta,
        sensitivity=sensitivity,
        sigma=sigma,
        required_sigma=analytic_gaussian_sigma(epsilon, delta, sensitivity),
        actual_delta=math.exp(log_actual),
        ok=log_actual <= _log_target(delta, VERIFY_DELTA_MARGIN),
    )


# Argument checks, shared with mbd_cert.accounting.


def _require_real(name: str, value: object) -> float:
    # bool is an int subclass, so True would otherwise pass as 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(
            f"invalid {name}: expected a real number, got {value!r} of type {type(value).__name__}",
            hint=f"pass {name} as a float",
            code="E_PARAMETER_INVALID",
        )
    try:
        return float(value)
    except OverflowError as exc:
        raise InputError(
            f"invalid {name}: must be finite, got {value!r}",
            hint=f"pass {name} as a finite float",
            code="E_PARAMETER_INVALID",
        ) from exc


def _require_positive(name: str, value: object) -> float:
    number = _require_real(name, value)
    if not (math.isfinite(number) and number > 0.0):
        extra = " (0 does not mean 'no limit')" if number == 0.0 else ""
        raise InputError(
            f"invalid {name}: must be finite and > 0, got {value!r}{extra}",
            hint=f"pass {name} as a finite number greater than 0",
            code="E_PARAMETER_INVALID",
        )
    return number


def _require_probability(name: str, value: object) -> float:
    number = _require_real(name, value)
    # Written so that NaN fails the test too.
    if not (0.0 < number < 1.0):
        raise InputError(
            f"invalid {name}: must be in the open interval (0, 1), got {value!r}",
            hint=f"pass {name} as a number strictly between 0 and 1",
            code="E_PARAMETER_INVALID",
        )
    return number


# Inverse search, shared with mbd_cert.accounting.


def _epsilon_for_mu(mu: float, delta: float) -> float:
    log_target = _log_target(delta, DELTA_SAFETY_MARGIN)
    if _log_delta(mu, 0.0) <= log_target:
        return 0.0
    return _smallest_satisfying(lambda epsilon: _log_delta_at_most(mu, epsilon, log_target))
