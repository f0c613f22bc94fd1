"""Pass rates of honest certificates at verification levels 2 and 3, over seeds.

For each seed: train on the corpus, delete audio, verify at level 3 (which runs level 2
first), and record every check's status and the time of each level. Prints one JSON
line per seed and a summary with the level-2 pass rate and its Clopper-Pearson
interval, which should contain 1 - alpha.

    python benchmarks/level2_seeds.py --corpus synthetic --seeds 0-19 --out /tmp/l2-seeds
    python benchmarks/level2_seeds.py --corpus mosei-subset --seeds 0-4 --out /tmp/l2-mosei

Run on demand (each seed trains and issues: about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mbd_cert import stats
from mbd_cert.issue import IssueOptions, issue
from mbd_cert.verify import VerifyOptions, verify
from trainer.data import load_corpus
from trainer.train import train

LEVEL2 = ("pre-rebuild", "mask-commitment", "diff-support", "saliency-mask", "update-clip",
          "residual-variance", "residual-normality", "residual-projection")


def _seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def run_seed(corpus_name: str, seed: int, root: Path, key: Ed25519PrivateKey,
             epsilon: float) -> dict[str, object]:
    corpus = load_corpus(corpus_name, seed=seed)
    checkpoint = root / f"seed{seed}" / "checkpoint"
    out = root / f"seed{seed}" / "deleted"
    started = time.monotonic()
    train(corpus, None, checkpoint, seed=seed, progress=False, force=True)
    trained = time.monotonic()
    doc = issue(checkpoint, out, IssueOptions(modality="audio", epsilon=epsilon, delta=1e-5,
                                              force=True), key)
    issued = time.monotonic()
    timings = {}
    reports = {}
    for level in (1, 2, 3):
        begin = time.monotonic()
        reports[level] = verify(out / "cert.json", out / "model.safetensors", VerifyOptions(
            trusted_keys=[key.public_key()], level=level, bundle_dir=out))
        timings[f"level{level}_s"] = round(time.monotonic() - begin, 2)
    report = reports[3]
    checks = {c.name: {"status": c.status, "value": c.value, "detail": c.detail}
              for c in report.checks}
    return {
        "seed": seed, "corpus": corpus_name, "mask_size": doc["saliency"]["mask_size"],
        "train_s": round(trained - started, 1), "issue_s": round(issued - trained, 1),
        **timings,
        "level2_pass": all(checks[name]["status"] == "pass" for name in LEVEL2),
        "level3_verified": report.verified, "checks": checks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="synthetic")
    parser.add_argument("--seeds", default="0-19", help="'0-19' or '0,3,5'")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    results = []
    for seed in _seeds(args.seeds):
        result = run_seed(args.corpus, seed, args.out, key, args.epsilon)
        results.append(result)
        print(json.dumps(result, default=str), flush=True)
    passed = sum(bool(r["level2_pass"]) for r in results)
    interval = stats.clopper_pearson_interval(passed, len(results))
    print(json.dumps({"summary": True, "corpus": args.corpus, "seeds": len(results),
                      "level2_passed": passed, "rate": passed / len(results),
                      "clopper_pearson_95": [interval.lower, interval.upper]}), flush=True)


if __name__ == "__main__":
    main()
