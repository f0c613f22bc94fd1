"""How often level 2 rejects honest certificates: one checkpoint, fresh noise each draw.

``level2_seeds.py`` trains a model per seed, so it measures a few dozen certificates
in an hour. Here the checkpoint stays fixed and each draw issues a certificate with
new secret noise, then verifies it at level 2 with the audit bundle. The mask, the
update and sigma are the same in every draw. Only the noise changes, and the three
residual tests (SPEC.md R-L2-6 to R-L2-8) judge exactly the noise. Each test runs at
``residual_alpha / 3`` (Bonferroni), so an honest certificate should fail a given test
in about that share of draws and fail any of them in at most ``residual_alpha``.

For each test the script prints the failures, their Clopper-Pearson 95 % interval and
the nominal level, and the share of p-values below a few cut-offs. It saves every
draw's p-values to ``benchmarks/results/level2_noise_draws[_TAG].json``.

    python benchmarks/level2_noise_draws.py --checkpoint CKM --draws 2000 --tag mosei
    python benchmarks/level2_noise_draws.py --draws 1000 --tag synthetic

Run on demand: a draw takes about 0.2 s on the MOSEI subset (issue and level 2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_or_train, save, show  # noqa: E402

RESIDUAL = ("residual-variance", "residual-normality", "residual-projection")
CUTS = (0.05, 0.01, 0.0033)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint [default: train one on the synthetic corpus]")
    parser.add_argument("--draws", type=int, default=1000,
                        help="certificates to issue and verify [default: 1000]")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--modality", default="audio")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--quick", action="store_true", help="20 draws")
    args = parser.parse_args()
    draws = 20 if args.quick else args.draws

    from mbd_cert import signing, stats
    from mbd_cert.issue import IssueOptions, issue
    from mbd_cert.verify import VerifyOptions, verify

    with tempfile.TemporaryDirectory(prefix="mbd-level2-draws-") as tmp:
        work = Path(tmp)
        checkpoint = checkpoint_or_train(args.checkpoint, work)
        signing.write_keypair(work / "issuer")
        key = signing.load_private_key(work / "issuer.key")
        options = IssueOptions(modality=args.modality, epsilon=args.epsilon, delta=1e-5,
                               force=True)
        verify_options = VerifyOptions(trusted_keys=[key.public_key()], level=2,
                                       bundle_dir=work / "del")
        p_values: dict[str, list[float]] = {name: [] for name in RESIDUAL}
        other_failures: dict[str, int] = {}
        alpha = level = None
        mask_size = 0
        started = time.monotonic()
        for draw in range(draws):
            doc = issue(checkpoint, work / "del", options, key)
            report = verify(work / "del" / "cert.json", work / "del" / "model.safetensors",
                            verify_options)
            alpha = float(doc["update"]["residual_alpha"])
            mask_size = int(doc["saliency"]["mask_size"])
            for check in report.checks:
                if check.name in p_values:
                    p_values[check.name].append(float(check.value))
                    level = float(check.threshold)
                elif check.status == "fail":
                    other_failures[check.name] = other_failures.get(check.name, 0) + 1
            if (draw + 1) % 100 == 0:
                print(f"{draw + 1} draws, {time.monotonic() - started:.0f} s", flush=True)
        elapsed = time.monotonic() - started

    assert alpha is not None and level is not None
    rows: list[list[Any]] = [["test", "failures", "rate", "95% interval", "level",
                              *(f"p < {cut:g}" for cut in CUTS)]]
    summary: dict[str, Any] = {}
    for name in RESIDUAL:
        values = p_values[name]
        failures = sum(p < level for p in values)
        interval = stats.clopper_pearson_interval(failures, draws)
        shares = {f"below_{cut:g}": sum(p < cut for p in values) / draws for cut in CUTS}
        summary[name] = {"failures": failures, "rate": failures / draws,
                         "clopper_pearson_95": [interval.lower, interval.upper], **shares}
        rows.append([name, failures, failures / draws,
                     f"[{interval.lower:.4f}, {interval.upper:.4f}]", level,
                     *shares.values()])
    any_failed = sum(any(p_values[name][i] < level for name in RESIDUAL) for i in range(draws))
    interval = stats.clopper_pearson_interval(any_failed, draws)
    summary["any_residual_test"] = {"failures": any_failed, "rate": any_failed / draws,
                                    "clopper_pearson_95": [interval.lower, interval.upper]}
    rows.append(["any of the three", any_failed, any_failed / draws,
                 f"[{interval.lower:.4f}, {interval.upper:.4f}]", alpha, "", "", ""])
    show(rows)
    print(f"{draws} draws in {elapsed:.0f} s; mask {mask_size} entries; other checks that "
          f"failed: {other_failures or 'none'}")
    name = "level2_noise_draws" + (f"_{args.tag}" if args.tag else "")
    path = save(name, {
        "checkpoint": str(args.checkpoint or "synthetic seed 0, trained here"),
        "draws": draws, "epsilon": args.epsilon, "modality": args.modality,
        "residual_alpha": alpha, "level_per_test": level, "mask_size": mask_size,
        "elapsed_s": round(elapsed, 1), "summary": summary,
        "other_failures": other_failures,
        "p_values": {name: [float(f"{p:.4g}") for p in values]
                     for name, values in p_values.items()},
    })
    print(f"saved {path}")


if __name__ == "__main__":
    main()
