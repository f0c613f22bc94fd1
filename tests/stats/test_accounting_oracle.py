"""Cross-check of mbd_cert.accounting against Google's dp_accounting.

dp_accounting's PLD accountant composes the privacy loss distributions numerically, so
it checks the mu-GDP composition and its (epsilon, delta) conversion without sharing
any of their formulas. Its RDP accountant checks the RDP bound and the order grid.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest

from mbd_cert.accounting import (
    RDP_ORDERS,
    ChainEntry,
    account_chain,
    gdp_epsilon,
    gdp_mu,
    rdp_epsilon,
)
from mbd_cert.mechanism import analytic_gaussian_sigma

dp_accounting = pytest.importorskip(
    "dp_accounting", reason="dp_accounting is not installed (pip install 'mbd-cert[dev]')"
)
from dp_accounting import pld, rdp  # noqa: E402

# Privacy-loss grid of the PLD accountant. Finer grids make the sigma = 2 cases slow.
PLD_INTERVAL = 1e-4

# On this grid |epsilon_PLD - epsilon_GDP| is at most 7e-8 with dp_accounting 0.6.0,
# although rounding to the grid alone could allow up to count * PLD_INTERVAL. The
# tolerance leaves 15 times the observed gap. A composition error, such as adding mu
# instead of mu^2, moves epsilon by more than 0.1 for three deletions.
PLD_TOLERANCE = 1e-6

# Both sides evaluate the same closed form over the same orders, so they agree to
# rounding error plus mbd-cert's 1e-12 upward pad.
RDP_RELATIVE_TOLERANCE = 1e-9

SIGMAS = [2.0, 3.730632, 10.0]
COUNTS = [1, 3, 10, 30]
DELTAS = [1e-3, 1e-5, 1e-8]

# sigma_i, sensitivity_i of a chain with unequal deletions.
MIXED_CHAIN = [(1.5, 1.0), (3.730632, 0.5), (6.0, 2.0), (0.9, 0.25)]


@functools.cache
def _pld_accountant(noise_multipliers: tuple[float, ...]) -> pld.PLDAccountant:
    accountant = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    for multiplier, count in _runs(noise_multipliers):
        accountant.compose(dp_accounting.GaussianDpEvent(multiplier), count)
    return accountant


def _runs(values: tuple[float, ...]) -> list[tuple[float, int]]:
    return [(value, len(list(group))) for value, group in itertools.groupby(values)]


def _rdp_reference(noise_multipliers: tuple[float, ...], delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    for multiplier, count in _runs(noise_multipliers):
        accountant.compose(dp_accounting.GaussianDpEvent(multiplier), count)
    return float(accountant.get_epsilon(delta))


def test_orders_match_dp_accounting_default() -> None:
    default = rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
    assert list(RDP_ORDERS) == [float(order) for order in default]


@pytest.mark.parametrize(
    ("sigma", "count", "delta"), list(itertools.product(SIGMAS, COUNTS, DELTAS))
)
def test_gdp_matches_pld(sigma: float, count: int, delta: float) -> None:
    ours = gdp_epsilon(gdp_mu([sigma] * count, [1.0] * count), delta)
    reference = _pld_accountant((sigma,) * count).get_epsilon(delta)
    assert abs(ours - reference) <= PLD_TOLERANCE


@pytest.mark.parametrize("delta", DELTAS)
def test_mixed_chain_matches_pld(delta: float) -> None:
    entries = [
        ChainEntry(epsilon=1.0, delta=delta, sigma=sigma, sensitivity=sensitivity)
        for sigma, sensitivity in MIXED_CHAIN
    ]
    account = account_chain(entries, delta)
    multipliers = tuple(sigma / sensitivity for sigma, sensitivity in MIXED_CHAIN)
    reference = _pld_accountant(multipliers).get_epsilon(delta)
    assert abs(account.epsilon - reference) <= PLD_TOLERANCE


@pytest.mark.parametrize(("epsilon", "delta"), [(0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-8)])
def test_calibrated_sigma_gives_target_under_pld(epsilon: float, delta: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, 1.0)
    reference = _pld_accountant((sigma,)).get_epsilon(delta)
    assert abs(reference - epsilon) <= PLD_TOLERANCE


@pytest.mark.parametrize(
    ("sigma", "count", "delta"), list(itertools.product(SIGMAS, COUNTS, DELTAS))
)
def test_rdp_matches_dp_accounting(sigma: float, count: int, delta: float) -> None:
    ours = rdp_epsilon([sigma] * count, [1.0] * count, delta)
    reference = _rdp_reference((sigma,) * count, delta)
    assert ours >= reference
    assert ours == pytest.approx(reference, rel=RDP_RELATIVE_TOLERANCE)


@pytest.mark.parametrize("delta", DELTAS)
def test_mixed_chain_rdp_matches_dp_accounting(delta: float) -> None:
    sigmas = [sigma for sigma, _ in MIXED_CHAIN]
    sensitivities = [sensitivity for _, sensitivity in MIXED_CHAIN]
    ours = rdp_epsilon(sigmas, sensitivities, delta)
    multipliers = tuple(sigma / sensitivity for sigma, sensitivity in MIXED_CHAIN)
    assert ours == pytest.approx(_rdp_reference(multipliers, delta), rel=RDP_RELATIVE_TOLERANCE)


def test_three_deletions_rdp_reference() -> None:
    reference = _rdp_reference((3.730632,) * 3, 1e-5)
    assert round(reference, 3) == 1.995
    assert math.isclose(rdp_epsilon([3.730632] * 3, [1.0] * 3, 1e-5), reference, rel_tol=1e-9)
