"""Cost of two concurrent stages of ``issue`` to each other, as threads and as processes.

``issue`` runs the masked update on the main thread while a second thread runs the
proxy-quality check. This script times ``mbd_cert.update.masked_update`` with the
arguments of one real ``issue`` call in three layouts, each repeated ``--calls``
times after warm-up calls:

* alone: one process, one thread;
* two processes: two copies of this script, each running it alone, started together;
* two threads: one process, two threads, each on its own copy of the model.

Two processes share the cores but not the interpreter lock. The gap between the last
two layouts is what the lock costs when both stages run torch operations of a few
microseconds to a few hundred microseconds each.

Usage: python benchmarks/contention_issue.py --checkpoint CK [--calls 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402


def _captured_update(checkpoint: Path, work: Path) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Return ``masked_update`` and the arguments one ``issue`` call passes it."""
    import torch

    from mbd_cert import _issue_steps, signing
    from mbd_cert.issue import IssueOptions, issue

    torch.set_num_threads(1)
    signing.write_keypair(work / "issuer")
    key = signing.load_private_key(work / "issuer.key")
    update = getattr(_issue_steps, "masked_update")  # noqa: B009 (patched below)
    seen: dict[str, Any] = {}

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen["args"], seen["kwargs"] = args, kwargs
        return update(*args, **kwargs)

    setattr(_issue_steps, "masked_update", recording)  # noqa: B010
    try:
        issue(checkpoint, work / "deletion",
              IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, force=True), key)
    finally:
        setattr(_issue_steps, "masked_update", update)  # noqa: B010
    return update, seen["args"], seen["kwargs"]


def _time_calls(update: Any, args: tuple[Any, ...], kwargs: dict[str, Any], calls: int,
                out: list[tuple[float, float]]) -> None:
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.thread_time()
        update(*args, **kwargs)
        out.append((time.perf_counter() - wall, time.thread_time() - cpu))


def _summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {"wall_ms_median": 1e3 * statistics.median(s[0] for s in samples),
            "cpu_ms_median": 1e3 * statistics.median(s[1] for s in samples),
            "calls": len(samples)}


def measure(checkpoint: Path, calls: int, layout: str) -> dict[str, float]:
    """Time ``masked_update`` in one process: ``alone`` or ``threads``."""
    with tempfile.TemporaryDirectory(prefix="mbd-contention-") as tmp:
        update, args, kwargs = _captured_update(checkpoint, Path(tmp))
        for _ in range(3):  # first calls of torch kernels are slower
            update(*args, **kwargs)
        first: list[tuple[float, float]] = []
        if layout == "alone":
            _time_calls(update, args, kwargs, calls, first)
            return _summary(first)
        second: list[tuple[float, float]] = []
        other_args, other_kwargs = copy.deepcopy((args, kwargs))
        workers = [threading.Thread(target=_time_calls, args=(update, args, kwargs, calls,
                                                              first)),
                   threading.Thread(target=_time_calls, args=(update, other_args,
                                                              other_kwargs, calls, second))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return _summary(first + second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="trained checkpoint folder (mbd-cert train --out)")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per layout")
    parser.add_argument("--layout", choices=["alone", "threads"], default=None,
                        help=argparse.SUPPRESS)  # one layout, for the child processes
    args = parser.parse_args()
    if args.layout is not None:
        print(json.dumps(measure(args.checkpoint, args.calls, args.layout)))
        return

    def child() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, __file__, "--checkpoint", str(args.checkpoint),
                                 "--calls", str(args.calls), "--layout", "alone"],
                                stdout=subprocess.PIPE, text=True)

    def result(process: subprocess.Popen[str]) -> dict[str, float]:
        stdout, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a measuring process failed with exit code {process.returncode}")
        parsed: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
        return parsed

    alone = result(child())
    pair = [child(), child()]
    processes = [result(p) for p in pair]
    threads = measure(args.checkpoint, args.calls, "threads")
    rows = {"alone": alone, "two processes": processes[0], "two processes (other)":
            processes[1], "two threads": threads}
    for name, row in rows.items():
        print(f"{name:22s} wall {row['wall_ms_median']:7.1f} ms   "
              f"thread CPU {row['cpu_ms_median']:7.1f} ms   ({int(row['calls'])} calls)")
    saved = save(f"contention_{args.checkpoint.name}",
                 {"checkpoint": str(args.checkpoint), "layouts": rows})
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
