"""Wall time of a warm ``issue`` call without parts of what the certificate reports.

The 1/20 target against retraining is met on the synthetic corpus and missed on the
CMU-MOSEI subset (docs/benchmarks.md). This script measures what each part of the
certificate's content costs there, so the trade-off is on record in numbers. Each
variant issues from a copy of the checkpoint, all in one process:

* ``default``: the issuer's defaults;
* ``proxy-sample 0``: no proxy-quality report (``saliency.proxy_quality`` is null);
* ``no evaluation set``: the checkpoint without ``eval.safetensors``, so the
  certificate contains no utility metrics;
* ``steps 1``: one update step instead of three;
* ``half probe set``: a probe set of half the members and half the non-members;
* and two combinations of these.

Every variant makes a certificate that reports less than the default one. None of them
is a recommendation; they show how far each cut moves the time.

The variants are timed in rounds, alternating, and the report gives per variant the
median over rounds of each round's median.

Usage: python benchmarks/issue_content_cost.py [--checkpoint DIR] [--rounds 4] [--calls 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_or_train, save, show, spread  # noqa: E402

MODALITY = "audio"


def _halve_probe(checkpoint: Path, out: Path) -> int:
    """Copy ``checkpoint`` to ``out`` with half its probe members and non-members."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(checkpoint, out)
    with safe_open(str(checkpoint / "probe.safetensors"), "np") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    member = tensors["member"].astype(bool)
    generator = np.random.default_rng(0)
    rows = np.sort(np.concatenate([
        generator.choice(np.flatnonzero(member), int(member.sum()) // 2, replace=False),
        generator.choice(np.flatnonzero(~member), int((~member).sum()) // 2, replace=False),
    ]))
    save_file({name: np.ascontiguousarray(value[rows]) for name, value in tensors.items()},
              str(out / "probe.safetensors"), metadata=metadata)
    return int(rows.size)


def _without_evaluation(checkpoint: Path, out: Path) -> Path:
    shutil.copytree(checkpoint, out)
    (out / "eval.safetensors").unlink(missing_ok=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint [default: train one on the synthetic corpus]")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over all variants")
    parser.add_argument("--calls", type=int, default=8, help="timed calls per variant and round")
    args = parser.parse_args()

    from mbd_cert import signing
    from mbd_cert.issue import IssueOptions, issue

    with tempfile.TemporaryDirectory(prefix="mbd-content-cost-") as tmp:
        work = Path(tmp)
        checkpoint = checkpoint_or_train(args.checkpoint, work)
        half = work / "half"
        probe_size = _halve_probe(checkpoint, half)
        no_eval = _without_evaluation(checkpoint, work / "no-eval")
        half_no_eval = _without_evaluation(half, work / "half-no-eval")
        signing.write_keypair(work / "issuer")
        key = signing.load_private_key(work / "issuer.key")
        base = IssueOptions(modality=MODALITY, epsilon=1.0, delta=1e-5, force=True)
        no_proxy = dataclasses.replace(base, proxy_sample_size=0)
        variants: list[tuple[str, Path, Any]] = [
            ("default", checkpoint, base),
            ("proxy-sample 0", checkpoint, no_proxy),
            ("no evaluation set", no_eval, base),
            ("steps 1", checkpoint, dataclasses.replace(base, steps=1)),
            (f"half probe set ({probe_size} samples)", half, base),
            ("proxy-sample 0, no evaluation set", no_eval, no_proxy),
            ("all four", half_no_eval, dataclasses.replace(no_proxy, steps=1)),
        ]
        for _, source, options in variants:  # untimed: first calls pay one-time costs
            for _ in range(3):
                issue(source, work / "out", options, key)
        medians: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, source, options in variants:
                times = []
                for _ in range(args.calls):
                    started = time.perf_counter()
                    issue(source, work / "out", options, key)
                    times.append(time.perf_counter() - started)
                medians[name].append(statistics.median(times))

    results = {name: spread(values) for name, values in medians.items()}
    rows: list[list[Any]] = [["variant", "median s", "min s", "max s"]]
    rows += [[name, r["median"], r["min"], r["max"]] for name, r in results.items()]
    show(rows)
    path = save("issue_content_cost", {"rounds": args.rounds, "calls": args.calls,
                                       "checkpoint": (str(args.checkpoint)
                                                      if args.checkpoint else None),
                                       "round_medians_s": medians, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
