"""Cumulative budgets of certificate chains against Google's dp_accounting.

Chains of signed certificates are built in memory (the factory of
tests/unit/test_chain.py), walked and re-accounted by
:func:`mbd_cert.chain.check_chain_accounting`, and the result compared with
dp_accounting's PLD accountant (numerical composition of privacy loss distributions,
no formula shared with mbd-cert) and its RDP accountant.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mbd_cert import certificate, chain
from mbd_cert.accounting import RDP_ORDERS

dp_accounting = pytest.importorskip(
    "dp_accounting", reason="dp_accounting is not installed (pip install 'mbd-cert[dev]')"
)
from dp_accounting import pld, rdp  # noqa: E402

# Same grid and tolerances as tests/stats/test_accounting_oracle.py: on this grid the
# PLD epsilon is within 7e-8 of the exact mu-GDP epsilon (dp_accounting 0.6.0).
PLD_INTERVAL = 1e-4
PLD_TOLERANCE = 1e-6
RDP_RELATIVE_TOLERANCE = 1e-9

SIGMAS = [1.5, 3.7306316350406, 8.0]
SENSITIVITIES = [1.0, 0.25]
COUNTS = [1, 2, 4, 7]
DELTAS = [1e-3, 1e-5]


def _factory() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "unit" / "test_chain.py"
    spec = importlib.util.spec_from_file_location("chain_factory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FACTORY = _factory()
KEY = Ed25519PrivateKey.generate()


@functools.cache
def _pld_epsilon(multiplier: float, count: int, delta: float) -> float:
    accountant = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    accountant.compose(dp_accounting.GaussianDpEvent(multiplier), count)
    return float(accountant.get_epsilon(delta))


def _rdp_epsilon(multiplier: float, count: int, delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(multiplier), count)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "sensitivity", "count", "delta"),
                         list(itertools.product(SIGMAS, SENSITIVITIES, COUNTS, DELTAS)))
def test_chain_budget_matches_dp_accounting(
    tmp_path: Path, sigma: float, sensitivity: float, count: int, delta: float
) -> None:
    docs = FACTORY.build_chain(KEY, count, sigma=sigma, sensitivity=sensitivity, delta=delta)
    for doc in docs[:-1]:
        (tmp_path / f"{doc['certificate_id']}.json").write_bytes(
            certificate.dump_certificate(doc))
    links, account = chain.check_chain_accounting(docs[-1], tmp_path, [KEY.public_key()])

    assert len(links) == count
    multiplier = sigma / sensitivity
    assert account.epsilon == pytest.approx(_pld_epsilon(multiplier, count, delta),
                                            abs=PLD_TOLERANCE)
    assert account.rdp_epsilon == pytest.approx(_rdp_epsilon(multiplier, count, delta),
                                                rel=RDP_RELATIVE_TOLERANCE)
    # What the issuer wrote into the newest certificate is what the verifier recomputes.
    assert docs[-1]["accounting"]["cumulative_epsilon"] == account.epsilon
