"""Level-2 rejections of honest releases whose noise is near the float32 spacing.

The issuer rounds each noised weight to float32, which adds about spacing**2 / 12 to
the variance of its residual. Level 2's variance test (SPEC.md R-L2-6) compares the
residual's variance with sigma**2 and does not know about the rounding, so a sigma
only a few spacings wide shifts its statistic. ``issue`` refuses such a sigma
(``E_NOISE_BELOW_RESOLUTION``, R-ISS-1) once the expected shift reaches a set share
of the statistic's standard deviation sqrt(2 / n). This script measures what each
share costs an honest release.

For each share t it sets sigma so that the expected shift is t standard deviations.
It then draws ``--trials`` releases of n float32 weights with magnitudes uniform in
[0.05, 0.3]; the masked entries of the default MOSEI and synthetic certificates lie
between 0.04 and 0.18. Each release rounds weight + noise to float32, and the
verifier's variance and normality tests run on the residual at the per-test level
0.01 / 3. Without rounding each test rejects at that level.

    python benchmarks/noise_resolution.py --entries 397 --trials 20000

Run on demand: about a minute per share with 20,000 trials, most of it in the Monte
Carlo p-values of the normality test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, show  # noqa: E402

LEVEL = 0.01 / 3
SHARES = (0.01, 0.1, 0.25, 0.5, 1.0)


def rejection_rates(entries: int, trials: int, share: float,
                    rng: np.random.Generator) -> dict[str, Any]:
    """Return how often each test rejects honest residuals at one expected shift."""
    from mbd_cert import stats

    weights = (rng.uniform(0.05, 0.3, entries) * rng.choice([-1.0, 1.0], entries))
    weights = weights.astype(np.float32)
    mean_square_spacing = float(np.mean(np.square(
        np.spacing(np.abs(weights)).astype(np.float64))))
    # Expected relative excess of the variance: share standard deviations of sqrt(2 / n).
    excess = share * np.sqrt(2.0 / entries)
    sigma = float(np.sqrt(mean_square_spacing / 12.0 / excess))
    exact = weights.astype(np.float64)
    rejected = {"variance": 0, "normality": 0, "either": 0}
    for _ in range(trials):
        released = (exact + rng.normal(0.0, sigma, entries)).astype(np.float32)
        residual = released.astype(np.float64) - exact
        variance = stats.variance_test(residual, sigma).p_value < LEVEL
        normality = stats.normality_test(residual, simulate_below=2 * LEVEL)
        normal_rejected = normality is not None and normality.p_value < LEVEL
        rejected["variance"] += variance
        rejected["normality"] += normal_rejected
        rejected["either"] += variance or normal_rejected
    return {"share": share, "sigma_over_rms_spacing": sigma / np.sqrt(mean_square_spacing),
            **{f"{name}_rate": count / trials for name, count in rejected.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=397,
                        help="masked entries n [default: 397, the MOSEI subset's mask]")
    parser.add_argument("--trials", type=int, default=20000,
                        help="releases drawn per share [default: 20000]")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES),
                        help="expected shifts of the variance statistic, in standard "
                        "deviations")
    parser.add_argument("--quick", action="store_true", help="2,000 trials")
    args = parser.parse_args()
    trials = 2000 if args.quick else args.trials
    rng = np.random.default_rng(0)
    results = []
    for share in args.shares:
        results.append(rejection_rates(args.entries, trials, share, rng))
        print(f"share {share:g} done", flush=True)
    rows: list[list[Any]] = [["shift (sd)", "sigma / rms spacing", "variance", "normality",
                              "either", "level"]]
    rows += [[r["share"], r["sigma_over_rms_spacing"], r["variance_rate"],
              r["normality_rate"], r["either_rate"], LEVEL] for r in results]
    show(rows)
    path = save("noise_resolution", {"entries": args.entries, "trials": trials,
                                     "level_per_test": LEVEL, "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
