"""Level-2 recomputation of the saliency mask and the masked update (R-L2-4, R-L2-5).

The mask and the update are recomputed from the rebuilt pre-deletion model and the
probe set with the verifier's own code (:mod:`mbd_cert._recompute`), in float64 on the
CPU, and compared with the committed mask and the certificate's update record.

Stability: internal; :mod:`mbd_cert.verify_recompute` and
:mod:`mbd_cert._sensitivity_evidence` call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from mbd_cert import _recompute
from mbd_cert._determinism import VmapFailure, require_deterministic, vmap_error
from mbd_cert._level2_bundle import Bundle
from mbd_cert._level2_bundle_checks import CODE_MASK_MISMATCH
from mbd_cert._residual_tests import CODE_INCONCLUSIVE
from mbd_cert._torch_model import build_model, probe_batch
from mbd_cert.report import FAIL, INCONCLUSIVE, PASS, CheckResult

# Relative agreement required between the recomputed raw update norm and the
# certificate's update.norm_before_clip (float64 reduction order differs by ~1e-15).
NORM_TOLERANCE = 1e-6

CODE_UPDATE_MISMATCH = "E_UPDATE_MISMATCH"
CODE_SCORES_NONFINITE = "E_SCORES_NONFINITE"
# Largest relative tie band around the cut that level 2 applies (R-SAL-3). The issuer
# states 1e-6, far above the float64 rounding differences between devices.
MAX_SCORE_TOLERANCE = 1e-4


def _check_saliency(doc: Mapping[str, Any], bundle: Bundle,
                    pre: Mapping[str, np.ndarray]) -> CheckResult:
    model = build_model(bundle.architecture, bundle.config_pre, pre)
    model.requires_grad_(False)
    batch = probe_batch(bundle.probe)
    column = bundle.probe.modalities.index(bundle.modality)
    weights = bundle.probe.present[:, column].astype(np.float64)
    modality = bundle.modality

    def forget(m: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return bundle.architecture.forget_objective(m, sub, modality)  # type: ignore[arg-type]

    if weights.sum() == 0:
        return CheckResult("saliency-mask", FAIL, f"no probe sample has {modality} observed",
                           code=CODE_MASK_MISMATCH, requirement="R-L2-4")
    # R-ARCH-7: a random objective gives another mask than the issuer's, which shows
    # nothing about whether the certificate is true.
    name = bundle.architecture.name
    hint = _objective_hint(name, "mask")
    objective_name = f"the forget objective of architecture {name!r}"
    require_deterministic(forget, model, batch, objective_name=objective_name, hint=hint)
    try:
        gradient, fisher = _recompute.gradient_and_fisher(
            model, bundle.eligible, forget, batch, weights,
            closed_form=bundle.architecture.independent_samples)
    except VmapFailure as failure:
        raise vmap_error(failure, objective_name, hint) from failure.__cause__
    # saliency_scores empties gradient and fisher, and rank_top_k empties scores. Each
    # is a float64 copy of the eligible parameters, and the float64 model is not needed
    # after the scores either, so the ranking below runs without them.
    scores = _recompute.saliency_scores(model, gradient, fisher)
    del model
    nonfinite = int(sum(np.count_nonzero(~np.isfinite(v)) for v in scores.values()))
    if nonfinite:
        # A ranking of NaN scores would be the flat-index order, which a forger can
        # match. Such a model cannot be certified by this method.
        return CheckResult(
            "saliency-mask", FAIL,
            f"{nonfinite} recomputed saliency scores are not finite: the pre-deletion model "
            "or the probe set has values too large for the score (SPEC.md, R-SAL-4)",
            code=CODE_SCORES_NONFINITE, requirement="R-SAL-4", value=nonfinite, threshold=0)
    ranking = _recompute.rank_top_k(scores, doc["saliency"]["top_k_fraction"])
    committed = np.concatenate([bundle.masks[n].reshape(-1) for n in ranking.names])
    stated = float(doc["saliency"]["score_tolerance"])
    # R-SAL-3: the band is the certificate's tolerance, but never wider than the cap,
    # or a wide band would let any mask pass.
    tolerance = min(stated, MAX_SCORE_TOLERANCE)
    differ = committed != ranking.selected
    band = _recompute.tie_band(ranking.magnitude, ranking.cut, tolerance)
    outside_band = int(np.sum(differ & ~band))
    swaps = int(np.sum(committed & ~ranking.selected))
    n = int(weights.sum())
    if outside_band:
        return CheckResult(
            "saliency-mask", FAIL,
            f"{outside_band} entries differ from the recomputed top-{int(ranking.selected.sum())} "
            f"mask outside the tie band (relative tolerance {tolerance:g} of the cut "
            f"|score| {ranking.cut:.6g}"
            + (": empty at a cut of 0, so entries of score 0 follow the flat-index order"
               if ranking.cut == 0.0 else "") + ")",
            code=CODE_MASK_MISMATCH, requirement="R-L2-4", value=outside_band, threshold=0, n=n)
    return CheckResult(
        "saliency-mask", PASS,
        f"recomputed mask matches on {n} probe samples with {modality} observed; "
        f"{swaps} boundary swaps inside the tie band (relative tolerance {tolerance:g}"
        + (f", capped from the stated {stated:g}" if stated > tolerance else "") + ")",
        requirement="R-L2-4", value=swaps, threshold=tolerance, n=n)


def _removed_model(bundle: Bundle, pre: Mapping[str, np.ndarray],
                   ) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
    """Return the model the update starts from (encoder removed) and its retain objective."""
    start = {n: (np.zeros_like(v) if n in bundle.removed else v) for n, v in pre.items()}
    model = build_model(bundle.architecture, bundle.config_post, start)
    model.requires_grad_(False)
    modality = bundle.modality

    def retain(m: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return bundle.architecture.retain_objective(m, sub, modality)  # type: ignore[arg-type]

    return model, retain


def _objective_hint(architecture: str, recomputed: str) -> str:
    return (f"the installed architecture {architecture!r} breaks R-ARCH-7, so level 2 "
            f"cannot recompute the {recomputed}; fix the package that provides it, or "
            "verify at level 1")


def _recompute_update(doc: Mapping[str, Any], bundle: Bundle,
                      pre: Mapping[str, np.ndarray]) -> _recompute.Update:
    model, retain = _removed_model(bundle, pre)
    update = doc["update"]
    batch = probe_batch(bundle.probe)
    # R-ARCH-7: a random retain objective gives another update than the issuer's, and
    # one that vmap cannot run stops the Fisher below.
    name = bundle.architecture.name
    objective_name = f"the retain objective of architecture {name!r}"
    hint = _objective_hint(name, "update")
    require_deterministic(retain, model, batch, objective_name=objective_name, hint=hint)
    try:
        return _recompute.masked_update(
            model, bundle.masks, retain, batch, steps=update["steps"],
            learning_rate=update["learning_rate"], damping=update["damping"],
            clip_norm=update["clip_norm"], closed_form=bundle.architecture.independent_samples)
    except VmapFailure as failure:
        raise vmap_error(failure, objective_name, hint) from failure.__cause__


def _check_clip(doc: Mapping[str, Any], result: _recompute.Update) -> CheckResult:
    clip = float(doc["update"]["clip_norm"])
    recorded = doc["update"].get("norm_before_clip")
    problems = []
    if result.norm > clip * (1 + 1e-12):
        problems.append(f"recomputed norm {result.norm:.9g} exceeds clip_norm {clip:g}")
    if recorded is not None and not math.isclose(recorded, result.raw_norm,
                                                 rel_tol=NORM_TOLERANCE, abs_tol=1e-300):
        problems.append(
            f"update.norm_before_clip is {recorded!r}, recomputed {result.raw_norm:.9g}")
    if problems:
        return CheckResult("update-clip", FAIL, "; ".join(problems), code=CODE_UPDATE_MISMATCH,
                           requirement="R-L2-5", value=result.norm, threshold=clip)
    if recorded is None:
        # Without the stated raw norm, steps, learning rate and damping are checked
        # only as far as the residual tests see them, which the noise mostly hides.
        return CheckResult(
            "update-clip", INCONCLUSIVE,
            f"the certificate does not record update.norm_before_clip, so the stated steps, "
            f"learning rate and damping cannot be checked against the recomputed raw norm "
            f"{result.raw_norm:.6g} (clipped {result.norm:.6g} at {clip:g})",
            code=CODE_INCONCLUSIVE, requirement="R-L2-5", value=result.norm, threshold=clip)
    return CheckResult(
        "update-clip", PASS,
        f"recomputed update: norm {result.raw_norm:.6g} before and {result.norm:.6g} after "
        f"the clip at {clip:g}", requirement="R-L2-5", value=result.norm, threshold=clip)

