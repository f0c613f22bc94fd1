"""Wall time of each stage of ``mbd_cert.issue.issue``, cold and warm, in one process.

The first call pays one-time costs (lazy imports, first use of torch kernels); the
later calls show the steady state that ``bench_issue_vs_retrain.py`` times in process.
Each stage is a function that the issuer's modules call (``mbd_cert._issue_steps`` and
the helper modules it runs); this script wraps them with timers for its own run only.
``issue`` runs the proxy-quality check and the update's Fisher (timed as
``gradient_moments``) on a second thread, alongside other stages, so the stage times
can add up to more than the call's wall time.

Usage: python benchmarks/profile_issue.py [--checkpoint DIR] [--calls 4]
       [--proxy-sample N] [--steps K] [--timeline]

``--timeline`` also prints, for the last call, each stage's thread, its start and end
in milliseconds from the call's start, and the CPU time its thread spent in it.

``--proxy-sample 0 --steps 0`` leaves out the proxy-quality check and the update
steps, which gives the floor of the fixed work that remains (loading, saliency,
utility metrics, writing and signing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_or_train  # noqa: E402

# Each stage, with the modules that look it up by name when the issuer calls it.
STAGES = {
    "require_deterministic": ["_issue_steps"],
    "gradient_moments": ["_issue_steps"],
    "measure_proxy_quality": ["_issue_steps"],
    "masked_update": ["_issue_steps"],
    "utility_before_deletion": ["_issue_steps"],
    "utility_after_deletion": ["_issue_steps"],
    "build_model": ["_issue_steps", "_issue_utility"],
    "build_diff": ["_issue_steps"],
    "write_chain_copies": ["_issue_release"],
    "certificate_document": ["_issue_steps"],
}


# One row per stage call: (stage, thread name, start s, end s, thread CPU s).
Span = tuple[str, str, float, float, float]


def _timed(totals: dict[str, float], spans: list[Span], name: str,
           function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            end = time.perf_counter()
            totals[name] = totals.get(name, 0.0) + end - start
            spans.append((name, threading.current_thread().name, start, end,
                          time.thread_time() - cpu))

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint [default: train one on the synthetic corpus]")
    parser.add_argument("--calls", type=int, default=4, help="issue calls, the first cold")
    parser.add_argument("--proxy-sample", type=int, default=64,
                        help="proxy-quality sample size (0 skips the check)")
    parser.add_argument("--steps", type=int, default=None,
                        help="masked update steps K [default: the issuer's default]")
    parser.add_argument("--timeline", action="store_true",
                        help="print the stages of the last call in time order")
    args = parser.parse_args()

    started = time.perf_counter()
    from mbd_cert import _issue_steps, signing
    from mbd_cert.issue import IssueOptions, issue
    imported = time.perf_counter() - started

    totals: dict[str, float] = {}
    spans: list[Span] = []
    for name, modules in STAGES.items():
        for module_name in modules:
            module = importlib.import_module(f"mbd_cert.{module_name}")
            setattr(module, name, _timed(totals, spans, name, getattr(module, name)))
    for name in ("digest_file", "write_safetensors"):
        module = _issue_steps._safetensors
        setattr(module, name, _timed(totals, spans, name, getattr(module, name)))

    with tempfile.TemporaryDirectory(prefix="mbd-profile-issue-") as tmp:
        work = Path(tmp)
        checkpoint = checkpoint_or_train(args.checkpoint, work)
        signing.write_keypair(work / "issuer")
        key = signing.load_private_key(work / "issuer.key")
        options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, force=True,
                               proxy_sample_size=args.proxy_sample)
        if args.steps is not None:
            options = dataclasses.replace(options, steps=args.steps)
        print(f"imports: {imported:.3f} s")
        for call in range(args.calls):
            totals.clear()
            spans.clear()
            start = time.perf_counter()
            issue(checkpoint, work / "del", options, key)
            total = time.perf_counter() - start
            stages = ", ".join(f"{name} {seconds:.3f}" for name, seconds in
                               sorted(totals.items(), key=lambda item: -item[1]))
            label = "cold" if call == 0 else "warm"
            print(f"call {call} ({label}): {total:.3f} s; {stages}")
        if args.timeline:
            print("stage, thread, start ms, end ms, thread CPU ms (last call)")
            for name, thread, begin, end, cpu in sorted(spans, key=lambda span: span[2]):
                print(f"  {name:22s} {thread:24s} {1000 * (begin - start):6.1f} "
                      f"{1000 * (end - start):6.1f} {1000 * cpu:6.1f}")


if __name__ == "__main__":
    main()
