from __future__ import annotations

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert.accounting import (
    RDP_ORDERS,
    ChainAccount,
    ChainEntry,
    account_chain,
    gdp_delta,
    gdp_epsilon,
    gdp_mu,
    naive_epsilon,
    rdp_epsilon,
)
from mbd_cert.errors import InputError
from mbd_cert.mechanism import analytic_gaussian_delta, analytic_gaussian_epsilon

SIGMA = 3.730632

# (k, epsilon to 6 digits, exact epsilon) for k deletions at SIGMA, sensitivity 1 and
# delta = 1e-5. The exact values come from a 50-digit mpmath bisection of the mu-GDP
# delta with mu = sqrt(k) / SIGMA. The 6-digit values for k = 4 and k = 10 are the exact
# values rounded up, so the check allows 1e-6 rather than rounding to nearest.
REFERENCE_CHAINS = [
    (1, 1.0, 0.999999892505472),
    (2, 1.465170, 1.46516980162134),
    (3, 1.834965, 1.83496523345723),
    (4, 2.154677, 2.15467642151124),
    (10, 3.618592, 3.61859116858922),
]

BAD_POSITIVE = [0.0, -1.0, math.nan, math.inf, -math.inf, True, "1", None]
BAD_PROBABILITY = [0.0, 1.0, -1e-5, 2.0, math.nan, math.inf, True, None]


def _chain(count: int, sigma: float = SIGMA) -> list[ChainEntry]:
    return [ChainEntry(epsilon=1.0, delta=1e-5, sigma=sigma, sensitivity=1.0)] * count


@pytest.mark.parametrize(("count", "rounded", "exact"), REFERENCE_CHAINS)
def test_gdp_epsilon_reference_chains(count: int, rounded: float, exact: float) -> None:
    epsilon = gdp_epsilon(gdp_mu([SIGMA] * count, [1.0] * count), 1e-5)
    assert abs(epsilon - rounded) <= 1e-6
    assert epsilon >= exact
    assert epsilon == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(("count", "rounded", "exact"), REFERENCE_CHAINS)
def test_account_chain_reference_chains(count: int, rounded: float, exact: float) -> None:
    account = account_chain(_chain(count), 1e-5)
    assert isinstance(account, ChainAccount)
    assert account.count == count
    assert account.delta == 1e-5
    assert account.mu == pytest.approx(math.sqrt(count) / SIGMA, rel=1e-15)
    assert abs(account.epsilon - rounded) <= 1e-6
    assert account.epsilon >= exact
    assert account.naive_epsilon == float(count)
    assert account.naive_delta == pytest.approx(count * 1e-5, rel=1e-15)
    assert account.epsilon <= account.rdp_epsilon <= account.naive_epsilon + 0.1


def test_three_deletions_rdp_and_naive() -> None:
    account = account_chain(_chain(3), 1e-5)
    assert round(account.rdp_epsilon, 6) == 1.995114
    assert round(account.rdp_epsilon, 3) == 1.995
    assert account.naive_epsilon == 3.0


def test_rdp_is_tighter_than_mironov_conversion() -> None:
    rho = 3 / (2 * SIGMA**2)
    mironov = min(rho * a + math.log(1e5) / (a - 1) for a in RDP_ORDERS)
    assert mironov == pytest.approx(2.336840, abs=1e-6)
    assert rdp_epsilon([SIGMA] * 3, [1.0] * 3, 1e-5) < mironov


def test_rdp_orders_grid() -> None:
    assert len(RDP_ORDERS) == 156
    assert RDP_ORDERS[0] == 1.1
    assert RDP_ORDERS[98] == 10.9
    assert RDP_ORDERS[99] == 11.0
    assert RDP_ORDERS[-5:] == (63.0, 128.0, 256.0, 512.0, 1024.0)
    assert list(RDP_ORDERS) == sorted(RDP_ORDERS)


def test_rdp_custom_orders() -> None:
    coarse = rdp_epsilon([SIGMA] * 3, [1.0] * 3, 1e-5, orders=[2.0, 8.0, 32.0])
    fine = rdp_epsilon([SIGMA] * 3, [1.0] * 3, 1e-5)
    assert coarse >= fine


def test_rdp_zero_when_total_variation_is_below_delta() -> None:
    # mu = 1e-3: sqrt(1 - exp(-mu^2 / 2)) = 7.07e-4 <= 0.01.
    assert rdp_epsilon([1000.0], [1.0], 0.01) == 0.0


def test_gdp_mu_heterogeneous_chain() -> None:
    mu = gdp_mu([1.5, SIGMA, 6.0], [1.0, 0.5, 2.0])
    expected = math.sqrt((1 / 1.5) ** 2 + (0.5 / SIGMA) ** 2 + (2.0 / 6.0) ** 2)
    assert mu == pytest.approx(expected, rel=1e-15)


def test_gdp_mu_accepts_numpy_arrays() -> None:
    mu = gdp_mu(np.full(5, SIGMA), np.ones(5))  # type: ignore[arg-type]
    assert mu == pytest.approx(math.sqrt(5) / SIGMA, rel=1e-15)


def test_gdp_mu_large_ratios_do_not_overflow() -> None:
    assert gdp_mu([1e-200, 1e-200], [1e100, 1e100]) == pytest.approx(math.sqrt(2) * 1e300)


def test_gdp_mu_overflow_is_rejected() -> None:
    with pytest.raises(InputError) as info:
        gdp_mu([1e-300], [1e300])
    assert info.value.code == "E_PARAMETER_INVALID"


def test_chain_equals_single_mechanism() -> None:
    account = account_chain(
        [
            ChainEntry(epsilon=2.0, delta=1e-6, sigma=1.5, sensitivity=1.0),
            ChainEntry(epsilon=0.5, delta=1e-6, sigma=SIGMA, sensitivity=0.5),
        ],
        1e-6,
    )
    single = analytic_gaussian_epsilon(1e-6, 1.0 / account.mu, 1.0)
    assert account.epsilon == pytest.approx(single, rel=1e-12)
    assert account.naive_epsilon == 2.5
    assert account.naive_delta == pytest.approx(2e-6, rel=1e-15)


def test_gdp_delta_matches_mechanism_delta() -> None:
    for sigma in (0.3, 1.0, SIGMA, 40.0):
        for epsilon in (0.01, 1.0, 7.0):
            assert gdp_delta(2.0 / sigma, epsilon) == analytic_gaussian_delta(epsilon, sigma, 2.0)


def test_gdp_epsilon_meets_delta() -> None:
    for mu in (0.01, 0.3, 1.0, 5.0, 40.0):
        for delta in (1e-18, 1e-9, 1e-5, 0.1):
            epsilon = gdp_epsilon(mu, delta)
            if epsilon > 0.0:
                assert gdp_delta(mu, epsilon) <= delta


@pytest.mark.parametrize("mu", [1e-3, 0.1, 0.4642781, 3.0, 50.0])
def test_gdp_epsilon_never_increases_with_delta(mu: float) -> None:
    deltas = np.logspace(-18, np.log10(0.9), 150)
    epsilons = [gdp_epsilon(mu, float(delta)) for delta in deltas]
    assert all(later <= earlier for earlier, later in itertools.pairwise(epsilons))


@settings(max_examples=80, deadline=None)
@given(mu=st.floats(1e-4, 100.0), first=st.floats(1e-18, 0.99), second=st.floats(1e-18, 0.99))
def test_gdp_epsilon_monotone_property(mu: float, first: float, second: float) -> None:
    low, high = sorted((first, second))
    assert gdp_epsilon(mu, high) <= gdp_epsilon(mu, low)


@settings(max_examples=80, deadline=None)
@given(mu=st.floats(1e-4, 100.0), delta=st.floats(1e-18, 0.99))
def test_gdp_epsilon_is_valid_property(mu: float, delta: float) -> None:
    epsilon = gdp_epsilon(mu, delta)
    assert math.isfinite(epsilon)
    if epsilon > 0.0:
        assert gdp_delta(mu, epsilon) <= delta


def test_extreme_parameters_are_finite() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        tight = gdp_epsilon(gdp_mu([0.01] * 3, [1.0] * 3), 1e-18)
        loose = rdp_epsilon([0.01] * 3, [1.0] * 3, 1e-18)
        tiny = gdp_delta(1.0, 1000.0)
        at_1000 = gdp_epsilon(1.0 / 0.02, 1e-18)
    assert math.isfinite(tight)
    assert tight > 1000.0
    assert math.isfinite(loose)
    assert loose >= tight
    assert tiny == 0.0
    assert math.isfinite(at_1000)


def test_gdp_epsilon_overflow_returns_inf() -> None:
    assert gdp_epsilon(1e200, 1e-5) == math.inf


def test_naive_epsilon_rounds_up() -> None:
    total = naive_epsilon([0.1, 0.2])
    exact = Fraction(0.1) + Fraction(0.2)
    assert Fraction(total) >= exact
    assert Fraction(math.nextafter(total, -math.inf)) < exact


def test_naive_epsilon_exact_sum_is_unchanged() -> None:
    assert naive_epsilon([1.0, 1.0, 1.0]) == 3.0
    assert naive_epsilon([0.5, 0.25]) == 0.75


def test_account_chain_searches_epsilon_once(monkeypatch) -> None:
    # The cost that matters is the number of epsilon searches: one per chain, not one
    # per deletion. Timing belongs to benchmarks/bench_accounting.py.
    from mbd_cert import accounting

    calls = []
    search = accounting._epsilon_for_mu

    def counted(mu: float, delta: float) -> float:
        calls.append(mu)
        return search(mu, delta)

    monkeypatch.setattr(accounting, "_epsilon_for_mu", counted)
    account_chain(_chain(1000), 1e-5)
    assert len(calls) == 1


@pytest.mark.parametrize("value", BAD_POSITIVE)
@pytest.mark.parametrize("field", ["epsilon", "sigma", "sensitivity"])
def test_chain_entry_rejects_bad_field(field: str, value: object) -> None:
    fields: dict[str, object] = {"epsilon": 1.0, "delta": 1e-5, "sigma": 1.0, "sensitivity": 1.0}
    fields[field] = value
    with pytest.raises(InputError) as info:
        ChainEntry(**fields)  # type: ignore[arg-type]
    assert type(info.value) is InputError
    assert info.value.code == "E_PARAMETER_INVALID"
    assert f"invalid {field}" in info.value.message


@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_chain_entry_rejects_bad_delta(value: object) -> None:
    with pytest.raises(InputError) as info:
        ChainEntry(epsilon=1.0, delta=value, sigma=1.0, sensitivity=1.0)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid delta" in info.value.message


@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_account_chain_rejects_bad_delta(value: object) -> None:
    with pytest.raises(InputError) as info:
        account_chain(_chain(2), value)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid delta" in info.value.message


def test_account_chain_rejects_empty_chain() -> None:
    with pytest.raises(InputError) as info:
        account_chain([], 1e-5)
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "empty" in info.value.message


def test_account_chain_rejects_tuples() -> None:
    with pytest.raises(InputError) as info:
        account_chain([(SIGMA, 1.0)], 1e-5)  # type: ignore[list-item]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "entries[0]" in info.value.message


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, True, np.bool_(False)])
def test_gdp_mu_rejects_bad_element(value: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_mu([1.0, value], [1.0, 1.0])  # type: ignore[list-item]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid sigmas[1]" in info.value.message


@pytest.mark.parametrize(
    "values",
    [[], "1.0", [[1.0]], ["a"], np.array([True]), np.array([], dtype=float)],
)
def test_gdp_mu_rejects_bad_sequence(values: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_mu(values, [1.0])  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid sigmas" in info.value.message


def test_gdp_mu_rejects_length_mismatch() -> None:
    with pytest.raises(InputError) as info:
        gdp_mu([1.0, 2.0], [1.0])
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "sensitivities" in info.value.message


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_gdp_delta_rejects_bad_mu(value: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_delta(value, 1.0)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid mu" in info.value.message


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_gdp_epsilon_rejects_bad_mu(value: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_epsilon(value, 1e-5)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid mu" in info.value.message


@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_gdp_epsilon_rejects_bad_delta(value: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_epsilon(1.0, value)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid delta" in info.value.message


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_gdp_delta_rejects_bad_epsilon(value: object) -> None:
    with pytest.raises(InputError) as info:
        gdp_delta(1.0, value)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid epsilon" in info.value.message


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, True])
def test_naive_epsilon_rejects_bad_element(value: object) -> None:
    with pytest.raises(InputError) as info:
        naive_epsilon([1.0, value])  # type: ignore[list-item]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid epsilons[1]" in info.value.message


@pytest.mark.parametrize("orders", [[1.0], [0.5, 2.0], [2.0, math.inf], []])
def test_rdp_rejects_bad_orders(orders: list[float]) -> None:
    with pytest.raises(InputError) as info:
        rdp_epsilon([SIGMA], [1.0], 1e-5, orders=orders)
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid orders" in info.value.message


@pytest.mark.parametrize("value", BAD_PROBABILITY)
def test_rdp_rejects_bad_delta(value: object) -> None:
    with pytest.raises(InputError) as info:
        rdp_epsilon([SIGMA], [1.0], value)  # type: ignore[arg-type]
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "invalid delta" in info.value.message
