"""How often the level-2 residual tests reject an honest certificate (their real size).

Each trial builds what an honest issuer releases on the mask: a clipped update plus
N(0, sigma^2) noise, and runs the verifier's own ``residual_checks`` on it. The share
of trials each test rejects estimates its size, which should not exceed alpha / 3,
and the share rejected by any of the three estimates the family's, at most alpha.

Usage: python benchmarks/residual_size.py [--entries 397] [--trials 20000] [--alpha 0.01]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402

# The default synthetic certificate: epsilon 1, delta 1e-5, clip_norm 0.001.
SIGMA = 0.007461263270081258
CLIP = 0.001
TESTS = ("residual-variance", "residual-normality", "residual-projection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=397, help="masked entries n")
    parser.add_argument("--trials", type=int, default=20_000, help="honest releases drawn")
    parser.add_argument("--alpha", type=float, default=0.01, help="family-wise level")
    parser.add_argument("--seed", type=int, default=7, help="seed of the noise draws")
    args = parser.parse_args()

    from mbd_cert._residual_tests import residual_checks

    rng = np.random.default_rng(args.seed)
    direction = rng.normal(size=args.entries)
    update = CLIP * direction / np.linalg.norm(direction)
    doc = {"privacy": {"sigma": SIGMA}, "update": {"clip_norm": CLIP}}
    masks = {"mask": np.ones(args.entries, dtype=bool)}
    rejected = dict.fromkeys(TESTS, 0)
    family = 0
    for _ in range(args.trials):
        released = update + rng.normal(0.0, SIGMA, args.entries)
        checks = residual_checks(doc, masks, {"mask": released}, {"mask": update}, args.alpha)
        failed = {check.name for check in checks if check.status == "fail"}
        for name in failed:
            rejected[name] += 1
        family += bool(failed)

    share = args.alpha / len(TESTS)
    error = math.sqrt(share * (1 - share) / args.trials)
    rates = {name: count / args.trials for name, count in rejected.items()}
    for name, rate in rates.items():
        print(f"{name:20s} {rate:.4f}  (size allowed {share:.4f}, standard error {error:.4f})")
    print(f"{'family':20s} {family / args.trials:.4f}  (allowed {args.alpha:g})")
    saved = save(f"residual_size_n{args.entries}",
                 {"entries": args.entries, "trials": args.trials, "alpha": args.alpha,
                  "seed": args.seed, "rates": rates, "family": family / args.trials})
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
