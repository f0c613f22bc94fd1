"""Effect of the masked update's step count K once the clip binds.

The update runs K preconditioned descent steps and then scales the displacement down
to the clip norm C (SPEC.md, section 6.3). When one step already moves about C, the
clip throws most of a long run away. For each K this script runs
``mbd_cert.update.masked_update`` with the arguments of one real ``issue`` call (the
issuer's defaults apart from K) and reports:

* the displacement's L2 norm before the clip, and the clip's scale factor;
* the cosine between the clipped displacement and the one at ``--reference`` steps;
* the retain objective (the update's own loss, probe set) before and after the clipped
  displacement, without noise;
* the thread CPU time of the call (median of ``--calls``).

Usage: python benchmarks/update_steps.py [--checkpoint LABEL=DIR ...]
       [--steps 1 2 3 5 10 20 40] [--reference 20] [--calls 5]

Without ``--checkpoint`` the script trains one on the synthetic corpus.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, show  # noqa: E402
from contention_issue import _captured_update  # noqa: E402


def _retain_loss(model: Any, objective: Any, batch: Any, weights: Any,
                 displacement: dict[str, Any] | None) -> float:
    """Return the weighted mean retain objective, at the start or moved by ``displacement``."""
    import torch

    parameters = dict(model.named_parameters())
    moved = displacement or {}
    saved = {name: parameters[name].detach().clone() for name in moved}
    try:
        with torch.no_grad():
            for name, step in moved.items():
                parameters[name].add_(torch.from_numpy(step).to(parameters[name].dtype))
            values = objective(model, batch)
            return float((values * weights.to(values.dtype)).sum() / weights.sum())
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                parameters[name].copy_(value)


def study(checkpoint: Path, steps: list[int], reference: int, calls: int) -> list[dict[str, Any]]:
    """Measure each K on ``checkpoint``: one row per K, as the module docstring lists."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="mbd-steps-") as tmp:
        update, args, kwargs = _captured_update(checkpoint, Path(tmp))
    model, _, objective, batch, weights = args[:5]
    before = _retain_loss(model, objective, batch, weights, None)

    def flat(result: Any) -> Any:
        return np.concatenate([result.displacement[n].ravel()
                               for n in sorted(result.displacement)])

    results, cpu = {}, {}
    for k in sorted(set(steps) | {reference}):
        options = dict(kwargs, steps=k)
        update(*args, **options)  # untimed first call
        times = []
        for _ in range(calls):
            started = time.thread_time()
            results[k] = update(*args, **options)
            times.append(time.thread_time() - started)
        cpu[k] = statistics.median(times)
    target = flat(results[reference])
    rows = []
    for k in sorted(results):
        vector = flat(results[k])
        norms = float(np.linalg.norm(vector) * np.linalg.norm(target))
        rows.append({
            "steps": k,
            "norm_before_clip": results[k].norm_before_clip,
            "clip_scale": results[k].scale,
            "cosine_to_reference": float(vector @ target) / norms if norms else None,
            "retain_before": before,
            "retain_after": _retain_loss(model, objective, batch, weights,
                                         results[k].displacement),
            "update_cpu_ms": 1e3 * cpu[k],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="LABEL=DIR of a trained checkpoint (repeatable)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 40])
    parser.add_argument("--reference", type=int, default=20,
                        help="K whose clipped displacement the cosine compares with")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per K")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mbd-steps-ck-") as tmp:
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        if not checkpoints:
            from trainer.data import load_corpus
            from trainer.train import train

            train(load_corpus("synthetic", seed=0), None, Path(tmp) / "ck", seed=0,
                  progress=False, force=True)
            checkpoints = {"synthetic": str(Path(tmp) / "ck")}
        payload: dict[str, Any] = {"reference": args.reference, "checkpoints": {}}
        for label, directory in checkpoints.items():
            rows = study(Path(directory), args.steps, args.reference, args.calls)
            payload["checkpoints"][label] = rows
            print(f"\n{label}")
            show([["K", "norm before clip", "scale", f"cosine to K={args.reference}",
                   "retain before -> after", "update CPU ms"]] + [
                [r["steps"], f"{r['norm_before_clip']:.4g}", f"{r['clip_scale']:.4g}",
                 f"{r['cosine_to_reference']:.6f}",
                 f"{r['retain_before']:.7g} -> {r['retain_after']:.7g}",
                 f"{r['update_cpu_ms']:.1f}"] for r in rows])
    print(save("update_steps", payload))


if __name__ == "__main__":
    main()
