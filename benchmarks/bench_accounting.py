"""Cumulative epsilon of a chain of 1,000 deletions: mu-GDP accounting vs dp_accounting PLD.

Each deletion is a Gaussian mechanism with the analytic sigma for its (epsilon, delta)
at sensitivity 1. mbd-cert composes them exactly as mu-GDP (``account_chain``, which
also computes the naive and RDP bounds for the report); the alternative is the privacy
loss distribution (PLD) accountant of Google's ``dp_accounting``, which composes the
same Gaussian events numerically. Both run in this process, alternately.

Usage: python benchmarks/bench_accounting.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, show, spread, timed  # noqa: E402

DELTA = 1e-5
DELETIONS = 1000


def pld_epsilon(sigma: float, count: int, interval: float) -> float:
    """Return the PLD accountant's epsilon at DELTA for ``count`` Gaussian events."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=sigma), count)
    return float(accountant.get_epsilon(DELTA))


def main() -> None:
    from mbd_cert import accounting, mechanism

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.1, help="epsilon of each deletion")
    parser.add_argument("--intervals", type=float, nargs="+", default=[1e-4],
                        help="PLD value discretisation intervals to try (1e-6 takes minutes)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats

    sigma = mechanism.analytic_gaussian_sigma(args.epsilon, DELTA, 1.0)
    entries = [accounting.ChainEntry(args.epsilon, DELTA, sigma, 1.0)] * DELETIONS
    rows = []
    for interval in args.intervals:
        ours_s, pld_s, ratios = [], [], []
        for _ in range(repeats):
            seconds, account = timed(lambda: accounting.account_chain(entries, DELTA))
            pld_seconds, pld = timed(lambda interval=interval: pld_epsilon(sigma, DELETIONS,
                                                                           interval))
            ours_s.append(seconds)
            pld_s.append(pld_seconds)
            ratios.append(pld_seconds / seconds)
        relative = abs(pld - account.epsilon) / account.epsilon
        rows.append({
            "pld_value_discretization_interval": interval,
            "mu": account.mu,
            "epsilon_mu_gdp": account.epsilon,
            "epsilon_pld": pld,
            "relative_difference": relative,
            "account_chain_s": spread(ours_s),
            "pld_s": spread(pld_s),
            "speedup_pld_over_ours": spread(ratios),
        })
    saved = save("accounting" + ("_quick" if args.quick else ""), {
        "deletions": DELETIONS, "epsilon_each": args.epsilon, "delta": DELTA, "sigma": sigma,
        "repeats": repeats, "results": rows,
    })
    show([["PLD interval", "eps mu-GDP", "eps PLD", "rel. diff", "ours s (median)",
           "PLD s (median)", "speed-up median", "min", "max"],
          *[[r["pld_value_discretization_interval"], r["epsilon_mu_gdp"], r["epsilon_pld"],
             r["relative_difference"], r["account_chain_s"]["median"], r["pld_s"]["median"],
             r["speedup_pld_over_ours"]["median"], r["speedup_pld_over_ours"]["min"],
             r["speedup_pld_over_ours"]["max"]] for r in rows]])
    print(f"{DELETIONS} deletions at epsilon {args.epsilon}, sigma {sigma:.6g}; wrote {saved}")


if __name__ == "__main__":
    main()
