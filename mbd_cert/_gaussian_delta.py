"""Log-space evaluation of the Gaussian mechanism's exact delta, and the search that inverts it.

:func:`log_delta` works in log space, so epsilon = 1000 or delta = 1e-18 give finite
results without overflow. :func:`smallest_satisfying` bisects over floats, which makes
the inverse functions of :mod:`mbd_cert.mechanism` round up and stay monotone in their
target.

Stability: private module; its functions may change in any release.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import special

_LOG_HALF = math.log(0.5)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)

# Above this value of a = mu/2 - epsilon/mu, erfcx(-a/sqrt(2)) grows like exp(a^2/2)
# and delta >= 1/2, so the log_ndtr form is used there instead (no cancellation).
_ERFCX_MAX_A = 5.0

# Below this ratio of the erfcx difference to its larger term, the closed form loses
# more than 3 of its 16 digits to cancellation, so the positive integral is used.
_CANCELLATION_RATIO = 1e-3

# At the cut, the factor exp(a t - t^2 / 2) of the integrand is exp(-60) of its value
# at t = 0.
_TAIL_LOG_CUTOFF = 60.0

# Margin, in log delta, by which the bound Phi(a) must clear the target before
# log_delta_at_most trusts it: absolute plus relative to the target. The integral form
# has a relative tolerance of 1e-13, so either part is far above the evaluation error.
_BOUND_CLEARANCE = 1e-6
_BOUND_CLEARANCE_RELATIVE = 1e-9

_SIGNIFICAND_STEPS = 2**52
_MIN_NORMAL_EXPONENT = -1022
_MAX_EXPONENT = 1023


def log_target(delta: float, margin: float) -> float:
    """Return log((1 - margin) * delta), the bound that a computed log delta must not exceed."""
    return math.log(delta) + math.log1p(-margin)


def log_delta(mu: float, epsilon: float) -> float:
    """Return log delta(epsilon) of mu-GDP, for mu > 0 and epsilon >= 0.

    delta = Phi(a) - exp(epsilon) * Phi(b), a = mu/2 - epsilon/mu, b = a - mu. Because
    b^2/2 - a^2/2 = epsilon, the exp(epsilon) factor cancels exactly in the scaled
    complementary error function erfcx(x) = exp(x^2) erfc(x):
    delta = exp(-a^2/2) / 2 * (erfcx(-a/sqrt 2) - erfcx(-b/sqrt 2)).
    """
    if mu == 0.0:
        return -math.inf
    if math.isinf(mu):
        return 0.0
    a = mu / 2.0 - epsilon / mu
    b = -mu / 2.0 - epsilon / mu
    if a == -math.inf:
        return -math.inf

    if a > _ERFCX_MAX_A:
        log_phi_a = float(special.log_ndtr(a))
        log_ratio = epsilon + float(special.log_ndtr(b)) - log_phi_a
        return log_phi_a + _log1mexp(log_ratio)

    larger = float(special.erfcx(-a / _SQRT2))
    difference = larger - float(special.erfcx(-b / _SQRT2))
    if difference > _CANCELLATION_RATIO * larger:
        return _LOG_HALF - 0.5 * a * a + math.log(difference)
    return _log_delta_by_integral(mu, a)


def log_delta_at_most(mu: float, epsilon: float, log_bound: float) -> bool:
    """Return whether ``log_delta(mu, epsilon) <= log_bound``, the predicate of the searches.

    delta = Phi(a) - exp(epsilon) Phi(b) is at most Phi(a), so when log Phi(a) is already
    below the bound the result is True without evaluating delta. That decides the
    search steps far from the root, where a is very negative and delta would need the
    integral (and scipy.integrate, about 0.15 s of start-up). The bound must clear
    ``log_bound`` by far more than the evaluation error of either value, so the result
    equals that of the full evaluation.
    """
    if 0.0 < mu < math.inf:
        a = mu / 2.0 - epsilon / mu
        clearance = _BOUND_CLEARANCE + _BOUND_CLEARANCE_RELATIVE * abs(log_bound)
        if float(special.log_ndtr(a)) <= log_bound - clearance:
            return True
    return log_delta(mu, epsilon) <= log_bound


def _log_delta_by_integral(mu: float, a: float) -> float:
    # Substituting z = a - t in delta = E[(1 - exp(mu (Z - a))) 1{Z < a}] gives
    # delta = phi(a) * integral_0^inf exp(a t - t^2/2) (1 - exp(-mu t)) dt. The integrand
    # is positive, so this form has no cancellation when mu is tiny. The integrand is
    # divided by mu so that it stays O(1).
    if a < 0.0:
        # Positive root of t^2/2 - a t = cutoff, written to avoid cancellation.
        upper = 2.0 * _TAIL_LOG_CUTOFF / (math.sqrt(a * a + 2.0 * _TAIL_LOG_CUTOFF) - a)
    else:
        upper = a + math.sqrt(a * a + 2.0 * _TAIL_LOG_CUTOFF)

    def integrand(t: float) -> float:
        return math.exp(a * t - 0.5 * t * t) * (-math.expm1(-mu * t) / mu)

    # Imported here: scipy.integrate pulls in scipy.optimize, about 0.25 s of start-up
    # that most commands never need.
    from scipy import integrate

    integral, _ = integrate.quad(integrand, 0.0, upper, epsabs=0.0, epsrel=1e-13, limit=200)
    if integral <= 0.0:
        return -math.inf
    return -0.5 * a * a - _LOG_SQRT_2PI + math.log(mu) + math.log(integral)


def _log1mexp(x: float) -> float:
    # Switching at -ln 2 keeps full precision: expm1 is exact near 0 and log1p near 1.
    if x >= 0.0:
        return -math.inf
    if x > -math.log(2.0):
        return math.log(-math.expm1(x))
    return math.log1p(-math.exp(x))


def smallest_satisfying(predicate: Callable[[float], bool]) -> float:
    """Bisect for the smallest positive float x with predicate(x) true, else inf.

    The predicate must be false for small x and true for large x. The bracket is a pair
    of consecutive powers of two found by doubling or halving from 1, and the bisection
    runs over the integer significand between them. Both steps are deterministic, so if
    predicate q is true wherever p is, the result for q is at most the result for p even
    where float noise makes the predicate non-monotone. That keeps the inverse functions
    monotone in their target.
    """
    exponent = 0
    if predicate(1.0):
        while predicate(math.ldexp(1.0, exponent - 1)):
            exponent -= 1
            if exponent <= _MIN_NORMAL_EXPONENT:
                return math.ldexp(1.0, exponent)
        exponent -= 1
    else:
        while not predicate(math.ldexp(1.0, exponent + 1)):
            exponent += 1
            if exponent >= _MAX_EXPONENT:
                return math.inf

    # Here predicate(2^exponent) is false and predicate(2^(exponent + 1)) is true.
    low, high = 0, _SIGNIFICAND_STEPS
    while high - low > 1:
        middle = (low + high) // 2
        if predicate(math.ldexp(1.0 + middle / _SIGNIFICAND_STEPS, exponent)):
            high = middle
        else:
            low = middle
    return math.ldexp(1.0 + high / _SIGNIFICAND_STEPS, exponent)
