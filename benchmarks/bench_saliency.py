"""Level-2 saliency recomputation against a bare forward and backward pass over the probe set.

The measured step is the verifier's recomputation of the saliency mask
(``mbd_cert._recompute``: gradient moments, diagonal Fisher, scores, top-k) on the path
that level 2 takes for the checkpoint's architecture: for "mbd-sentiment"
(``independent_samples``) the closed form of ``mbd_cert._fisher_linear``. The same step
on the per-sample ``vmap`` path is timed as ``level2_vmap`` for comparison. The
issuer's :func:`mbd_cert.saliency.gradient_moments` is timed as well: on the path
``issue`` takes for the built-in architecture (``issuer_closed_form``, the written-out
late-layer gradients of :mod:`mbd_cert.arch._mbd_gradients`, their encoder pass
included), with batched Linear moments through autograd (``issuer``, the path of an
architecture with ``independent_samples``), on the ``vmap`` path (``issuer_vmap``) and
with ``vectorize=False`` (``issuer_loop``, one backward pass per sample). The
baseline is
one forward pass of the forget objective over the whole probe set and one backward
pass to the same eligible tensors, in the same dtype (float64), which is the least
any gradient-based saliency must do.

Usage: python benchmarks/bench_saliency.py [--quick] [--checkpoint DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkpoint_or_train, save, show, spread, timed  # noqa: E402

MODALITY = "audio"


def main() -> None:
    import torch

    from mbd_cert import _recompute, checkpoint
    from mbd_cert._groups import eligible_names
    from mbd_cert._issue_steps import default_eligible_groups
    from mbd_cert._torch_model import build_model, probe_batch
    from mbd_cert.arch import _mbd_gradients, get_architecture
    from mbd_cert.saliency import gradient_moments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint [default: train one on the synthetic corpus]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads [default: torch's own default]")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(prefix="mbd-bench-saliency-") as tmp:
        ck = checkpoint_or_train(args.checkpoint, Path(tmp))
        config_doc = checkpoint.read_config(ck / "config.json")
        architecture = get_architecture(config_doc["architecture"])
        config = architecture.validate_config(config_doc["config"])
        model = build_model(architecture, config, checkpoint.read_tensors(ck / "model.safetensors"))
        probe = checkpoint.read_probe_set(ck / "probe.safetensors")
    batch = probe_batch(probe)
    names = eligible_names([n for n, _ in model.named_parameters()],
                           default_eligible_groups(MODALITY))
    weights = probe.present[:, probe.modalities.index(MODALITY)].astype(np.float64)
    parameters = dict(model.named_parameters())

    def forget(m: torch.nn.Module, sub: object) -> torch.Tensor:
        return architecture.forget_objective(m, sub, MODALITY)  # type: ignore[arg-type]

    def bare() -> None:
        values = forget(model, batch)
        loss = (values * torch.from_numpy(weights)).sum() / weights.sum()
        torch.autograd.grad(loss, [parameters[n] for n in names])

    def recompute_mask(closed_form: bool) -> None:
        gradient, fisher = _recompute.gradient_and_fisher(model, names, forget, batch, weights,
                                                          closed_form=closed_form)
        scores = _recompute.saliency_scores(model, gradient, fisher)
        _recompute.rank_top_k(scores, 0.02)

    def level2() -> None:
        recompute_mask(architecture.independent_samples)

    def level2_vmap() -> None:
        recompute_mask(False)

    def issuer() -> None:
        gradient_moments(model, names, forget, batch, torch.from_numpy(weights),
                         independent_samples=architecture.independent_samples)

    def issuer_closed_form() -> None:
        closed = _mbd_gradients.for_architecture(architecture, model, batch, MODALITY,
                                                 forget=True)
        gradient_moments(model, names, forget, batch, torch.from_numpy(weights),
                         independent_samples=architecture.independent_samples,
                         closed_form=closed)

    def issuer_vmap() -> None:
        gradient_moments(model, names, forget, batch, torch.from_numpy(weights))

    def issuer_loop() -> None:
        gradient_moments(model, names, forget, batch, torch.from_numpy(weights),
                         vectorize=False)

    # Warm-up: first calls pay one-time costs.
    bare(), level2(), level2_vmap(), issuer(), issuer_closed_form(), issuer_vmap()
    runs = []
    for _ in range(repeats):
        runs.append({"bare": timed(bare)[0], "level2": timed(level2)[0],
                     "level2_vmap": timed(level2_vmap)[0],
                     "issuer": timed(issuer)[0],
                     "issuer_closed_form": timed(issuer_closed_form)[0],
                     "issuer_vmap": timed(issuer_vmap)[0],
                     "issuer_loop": timed(issuer_loop)[0]})
    payload = {
        "probe_samples": probe.size,
        "samples_with_modality": int(weights.sum()),
        "eligible_entries": int(sum(parameters[n].numel() for n in names)),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "level2_closed_form": architecture.independent_samples,
        "bare_s": spread([r["bare"] for r in runs]),
        "level2_s": spread([r["level2"] for r in runs]),
        "level2_vmap_s": spread([r["level2_vmap"] for r in runs]),
        "issuer_s": spread([r["issuer"] for r in runs]),
        "issuer_closed_form_s": spread([r["issuer_closed_form"] for r in runs]),
        "issuer_vmap_s": spread([r["issuer_vmap"] for r in runs]),
        "issuer_loop_s": spread([r["issuer_loop"] for r in runs]),
        "ratio_level2_over_bare": spread([r["level2"] / r["bare"] for r in runs]),
        "ratio_level2_vmap_over_bare": spread([r["level2_vmap"] / r["bare"] for r in runs]),
        "ratio_issuer_over_bare": spread([r["issuer"] / r["bare"] for r in runs]),
        "ratio_issuer_closed_form_over_bare": spread([r["issuer_closed_form"] / r["bare"]
                                                      for r in runs]),
        "ratio_issuer_vmap_over_bare": spread([r["issuer_vmap"] / r["bare"] for r in runs]),
        "ratio_issuer_loop_over_issuer": spread([r["issuer_loop"] / r["issuer"] for r in runs]),
        "runs": runs,
    }
    suffix = ""
    if args.quick:
        suffix += "_quick"
    if args.threads:
        suffix += f"_threads{args.threads}"
    saved = save("saliency" + suffix, payload)
    show([["measure", "median", "min", "max"],
          *[[key, payload[key]["median"], payload[key]["min"], payload[key]["max"]]
            for key in ("bare_s", "level2_s", "level2_vmap_s", "issuer_s",
                        "issuer_closed_form_s", "issuer_vmap_s",
                        "issuer_loop_s", "ratio_level2_over_bare",
                        "ratio_level2_vmap_over_bare", "ratio_issuer_over_bare",
                        "ratio_issuer_closed_form_over_bare",
                        "ratio_issuer_vmap_over_bare",
                        "ratio_issuer_loop_over_issuer")]])
    print(f"{payload['samples_with_modality']} of {probe.size} probe samples, "
          f"{payload['eligible_entries']} eligible entries; wrote {saved}")


if __name__ == "__main__":
    main()
