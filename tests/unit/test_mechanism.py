from __future__ import annotations

import itertools
import math
import random
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert import mechanism
from mbd_cert.errors import InputError
from mbd_cert.mechanism import (
    DELTA_SAFETY_MARGIN,
    analytic_gaussian_delta,
    analytic_gaussian_epsilon,
    analytic_gaussian_sigma,
    check_calibration,
    classic_gaussian_sigma,
)

# (epsilon, sigma to 6 digits, exact sigma) at delta = 1e-5, sensitivity 1. The exact
# roots come from a 50-digit mpmath bisection of Phi(1/(2s) - e s) - exp(e) Phi(-1/(2s) - e s)
# = 1e-5.
REFERENCE_SIGMAS = [
    (1.0, 3.730632, 3.7306316348159418),
    (0.5, 7.031827, 7.0318266755824914),
    (4.0, 1.081162, 1.0811618495202392),
    (10.0, 0.499889, 0.49988861970900851),
]

BAD_POSITIVE = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, True, False, "1.0", None]
BAD_PROBABILITY = [0.0, 1.0, -1e-5, 1.5, math.nan, math.inf, True, "1e-5", None]


@pytest.mark.parametrize(("epsilon", "rounded", "exact"), REFERENCE_SIGMAS)
def test_sigma_reference_values(epsilon: float, rounded: float, exact: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, 1e-5, 1.0)
    assert round(sigma, 6) == rounded
    assert sigma >= exact
    assert sigma <= exact * (1 + 1e-9)


@pytest.mark.parametrize(("epsilon", "rounded", "exact"), REFERENCE_SIGMAS)
def test_sigma_is_minimal(epsilon: float, rounded: float, exact: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, 1e-5, 1.0)
    assert analytic_gaussian_delta(epsilon, sigma, 1.0) <= 1e-5
    assert analytic_gaussian_delta(epsilon, sigma * (1 - 1e-6), 1.0) > 1e-5


def test_sigma_scales_with_sensitivity() -> None:
    base = analytic_gaussian_sigma(1.0, 1e-5, 1.0)
    assert analytic_gaussian_sigma(1.0, 1e-5, 2.5) == pytest.approx(2.5 * base, rel=1e-9)


def test_delta_at_exact_sigma() -> None:
    delta = analytic_gaussian_delta(1.0, 3.7306316348159418, 1.0)
    assert delta == pytest.approx(1e-5, rel=1e-9)


def test_classic_sigma_reference() -> None:
    assert classic_gaussian_sigma(0.5, 1e-5, 1.0) == pytest.approx(9.6896105252, rel=1e-10)
    at_one = classic_gaussian_sigma(1.0, 1e-5, 1.0, allow_invalid=True)
    assert at_one == pytest.approx(4.8448052626, rel=1e-10)


@pytest.mark.parametrize("epsilon", [1.0, 10.0, 1000.0])
def test_classic_sigma_rejects_epsilon_one_or_more(epsilon: float) -> None:
    with pytest.raises(InputError) as info:
        classic_gaussian_sigma(epsilon, 1e-5, 1.0)
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "epsilon" in info.value.message
    assert repr(epsilon) in info.value.message


def test_classic_sigma_fails_calibration_at_epsilon_ten() -> None:
    sigma = classic_gaussian_sigma(10.0, 1e-5, 1.0, allow_invalid=True)
    assert round(sigma, 6) == 0.484481
    result = check_calibration(10.0, 1e-5, 1.0, sigma)
    assert result.ok is False
    assert result.actual_delta == pytest.approx(2.265e-5, rel=1e-3)
    assert result.required_sigma == pytest.approx(0.499889, abs=5e-7)


def test_calibration_passes_at_rounded_sigma() -> None:
    result = check_calibration(1.0, 1e-5, 1.0, 3.730632)
    assert result.ok is True
    assert result.actual_delta <= 1e-5
    assert result.sigma >= result.required_sigma


@pytest.mark.parametrize(("epsilon", "rounded", "exact"), REFERENCE_SIGMAS)
def test_calibration_passes_at_required_sigma(epsilon: float, rounded: float, exact: float) -> None:
    required = analytic_gaussian_sigma(epsilon, 1e-5, 1.0)
    assert check_calibration(epsilon, 1e-5, 1.0, required).ok is True


@pytest.mark.parametrize(("epsilon", "rounded", "exact"), REFERENCE_SIGMAS)
def test_calibration_fails_below_exact_sigma(epsilon: float, rounded: float, exact: float) -> None:
    result = check_calibration(epsilon, 1e-5, 1.0, exact * (1 - 1e-9))
    assert result.ok is False
    assert result.actual_delta > 1e-5


def test_epsilon_inverts_sigma() -> None:
    sigma = analytic_gaussian_sigma(1.0, 1e-5, 1.0)
    epsilon = analytic_gaussian_epsilon(1e-5, sigma, 1.0)
    assert epsilon <= 1.0
    assert epsilon == pytest.approx(1.0, rel=1e-8)


def test_epsilon_of_rounded_reference_sigma() -> None:
    # 0.999999892505472 from a 50-digit mpmath bisection at sigma = 3.730632.
    epsilon = analytic_gaussian_epsilon(1e-5, 3.730632, 1.0)
    assert epsilon >= 0.999999892505472
    assert epsilon == pytest.approx(0.999999892505472, rel=1e-9)


def test_epsilon_is_zero_when_delta_is_large() -> None:
    # delta(0) = erf(mu / (2 sqrt 2)) = 0.383 for mu = 1, below the target 0.5.
    assert analytic_gaussian_epsilon(0.5, 1.0, 1.0) == 0.0


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.730632, 50.0, 1e4])
def test_epsilon_never_increases_with_delta(sigma: float) -> None:
    deltas = np.logspace(-18, np.log10(0.9), 120)
    epsilons = [analytic_gaussian_epsilon(float(delta), sigma, 1.0) for delta in deltas]
    assert all(later <= earlier for earlier, later in itertools.pairwise(epsilons))


@settings(max_examples=60, deadline=None)
@given(
    sigma=st.floats(1e-3, 1e4),
    first=st.floats(1e-18, 0.99),
    second=st.floats(1e-18, 0.99),
)
def test_epsilon_monotone_property(sigma: float, first: float, second: float) -> None:
    low, high = sorted((first, second))
    assert analytic_gaussian_epsilon(high, sigma, 1.0) <= analytic_gaussian_epsilon(low, sigma, 1.0)


@settings(max_examples=150, deadline=None)
@given(
    epsilon=st.floats(1e-4, 1e3),
    delta=st.floats(1e-18, 0.99),
    sensitivity=st.floats(1e-3, 1e3),
)
def test_sigma_always_satisfies_delta(epsilon: float, delta: float, sensitivity: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    assert math.isfinite(sigma)
    assert analytic_gaussian_delta(epsilon, sigma, sensitivity) <= delta
    assert check_calibration(epsilon, delta, sensitivity, sigma).ok is True


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(1000.0, 1e-5), (1000.0, 1e-18), (1.0, 1e-18), (1e-4, 1e-18)]
)
def test_extreme_parameters_are_finite(epsilon: float, delta: float) -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        sigma = analytic_gaussian_sigma(epsilon, delta, 1.0)
        actual = analytic_gaussian_delta(epsilon, sigma, 1.0)
        recovered = analytic_gaussian_epsilon(delta, sigma, 1.0)
        result = check_calibration(epsilon, delta, 1.0, sigma)
    assert math.isfinite(sigma)
    assert sigma > 0.0
    assert 0.0 < actual <= delta
    assert recovered <= epsilon
    assert recovered == pytest.approx(epsilon, rel=1e-6)
    assert result.ok is True


def test_delta_large_epsilon_without_overflow() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        tiny = analytic_gaussian_delta(1000.0, 1.0, 1.0)
        near_one = analytic_gaussian_delta(1000.0, 0.01, 1.0)
        huge_epsilon = analytic_gaussian_delta(1e300, 1.0, 1.0)
    assert tiny == 0.0
    assert 0.99 < near_one <= 1.0
    assert huge_epsilon == 0.0


def _mpmath_log_delta(mpmath: Any, mu: float, epsilon: float) -> float:
    m, e = mpmath.mpf(mu), mpmath.mpf(epsilon)
    exact = mpmath.ncdf(m / 2 - e / m) - mpmath.exp(e) * mpmath.ncdf(-m / 2 - e / m)
    return float(mpmath.log(exact))


def test_log_delta_matches_mpmath_grid() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    # Covers the log_ndtr branch (a > 5), the erfcx closed form and the integral used
    # when the closed form cancels (mu = 1e-7, 1e-5, 1e-3 at small epsilon).
    mus = [1e-7, 1e-5, 1e-3, 2e-3, 0.1, 0.268, 1.0, 3.0, 10.0, 30.0, 100.0]
    epsilons = [1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0, 1000.0]
    checked = 0
    for mu in mus:
        for epsilon in epsilons:
            log_exact = _mpmath_log_delta(mpmath, mu, epsilon)
            if log_exact < -690.0:
                continue
            assert abs(mechanism._log_delta(mu, epsilon) - log_exact) < 1e-11, (mu, epsilon)
            checked += 1
    assert checked >= 45


def test_log_delta_matches_mpmath_random() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    rng = random.Random(7)
    checked = 0
    for _ in range(600):
        mu = 10 ** rng.uniform(-8.0, 2.5)
        epsilon = 10 ** rng.uniform(-6.0, 3.0)
        log_exact = _mpmath_log_delta(mpmath, mu, epsilon)
        if log_exact < -690.0:
            continue
        assert abs(mechanism._log_delta(mu, epsilon) - log_exact) < 1e-11, (mu, epsilon)
        checked += 1
    assert checked >= 250


@pytest.mark.parametrize("value", BAD_POSITIVE)
@pytest.mark.parametrize("name", ["epsilon", "sigma", "sensitivity"])
def test_delta_rejects_bad_argument(name: str, value: object) -> None:
    arguments: dict[str, object] = {"epsilon": 1.0, "sigma": 3.7, "sensitivity": 1.0}
    arguments[name] = value
    with pytest.raises(InputError) as info:
        analytic_gaussian_delta(**arguments)  # type: ignore[arg-type]
    assert type(info.value) is InputError
    assert info.value.code == "E_PARAMETER_INVALID"
    assert f"invalid {name}" in info.value.message
    assert repr(value) in info.value.message


@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_sigma_rejects_bad_delta(value: object) -> None:
    with pytest.raises(InputError) as info:
        analytic_gaussian_sigma(1.0, value, 1.0)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid delta" in info.value.message
    assert "(0, 1)" in info.value.message or "real number" in info.value.message


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_sigma_rejects_bad_epsilon(value: object) -> None:
    with pytest.raises(InputError) as info:
        analytic_gaussian_sigma(value, 1e-5, 1.0)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid epsilon" in info.value.message


def test_zero_epsilon_is_not_no_limit() -> None:
    with pytest.raises(InputError) as info:
        analytic_gaussian_sigma(0.0, 1e-5, 1.0)
    assert "no limit" in info.value.message
    assert "> 0" in info.value.message


@pytest.mark.parametrize("value", [np.bool_(True), 10**400, complex(1, 0)])
def test_rejects_numpy_bool_big_int_and_complex(value: object) -> None:
    with pytest.raises(InputError) as info:
        analytic_gaussian_epsilon(1e-5, value, 1.0)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid sigma" in info.value.message


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda v: analytic_gaussian_epsilon(v, 1.0, 1.0), "delta"),
        (lambda v: check_calibration(1.0, v, 1.0, 1.0), "delta"),
        (lambda v: classic_gaussian_sigma(0.5, v, 1.0), "delta"),
    ],
)
@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_other_functions_reject_bad_delta(call: object, name: str, value: object) -> None:
    with pytest.raises(InputError) as info:
        call(value)  # type: ignore[operator]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert f"invalid {name}" in info.value.message


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_check_calibration_rejects_bad_sigma(value: object) -> None:
    with pytest.raises(InputError) as info:
        check_calibration(1.0, 1e-5, 1.0, value)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid sigma" in info.value.message


def test_safety_margin_is_above_verify_margin() -> None:
    assert DELTA_SAFETY_MARGIN > mechanism.VERIFY_DELTA_MARGIN > 0.0


def _exact_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Run the sigma search with the full delta evaluation at every step."""
    from mbd_cert._gaussian_delta import log_delta, log_target, smallest_satisfying

    target = log_target(delta, DELTA_SAFETY_MARGIN)
    return smallest_satisfying(lambda sigma: log_delta(sensitivity / sigma, epsilon) <= target)


@pytest.mark.parametrize("epsilon", [1e-3, 0.1, 1.0, 4.0, 50.0, 1000.0])
@pytest.mark.parametrize("delta", [1e-300, 1e-12, 1e-5, 0.3])
@pytest.mark.parametrize("sensitivity", [1e-9, 0.002, 1.0, 1e6])
def test_sigma_search_bound_changes_no_result(epsilon: float, delta: float,
                                              sensitivity: float) -> None:
    # The bound Phi(a) skips only evaluations whose outcome it already decides.
    assert analytic_gaussian_sigma(epsilon, delta, sensitivity) == _exact_sigma(
        epsilon, delta, sensitivity)


def test_delta_bound_predicate_matches_full_evaluation() -> None:
    from mbd_cert._gaussian_delta import log_delta, log_delta_at_most

    rng = random.Random(5)
    for _ in range(3000):
        mu = 10.0 ** rng.uniform(-8, 3)
        epsilon = rng.choice([0.0, 10.0 ** rng.uniform(-4, 3)])
        value = log_delta(mu, epsilon)
        # Bounds far from and right at the value, where only the full evaluation decides.
        for bound in (value, math.nextafter(value, -math.inf), value + 1.0, value - 1.0,
                      rng.uniform(-745.0, 0.0)):
            if math.isfinite(bound):
                assert log_delta_at_most(mu, epsilon, bound) == (value <= bound)


def test_calibration_skips_scipy_integrate() -> None:
    import subprocess
    import sys

    # The issuer's default calibration and a chain's epsilon stay clear of the integral
    # form, whose import adds about 0.15 s to every command that calibrates noise.
    code = ("import sys\n"
            "from mbd_cert import mechanism\n"
            "sigma = mechanism.analytic_gaussian_sigma(1.0, 1e-5, 0.002)\n"
            "mechanism.analytic_gaussian_epsilon(1e-5, sigma, 0.002)\n"
            "print('scipy.integrate' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
