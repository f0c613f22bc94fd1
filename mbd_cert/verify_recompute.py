"""Level-2 verification: recompute the deletion from the audit bundle (SPEC.md, section 8.1).

The checks rebuild the pre-deletion model as ``post - diff``, recompute the saliency
mask and the deterministic update with the verifier's own code (:mod:`mbd_cert._recompute`,
never the issuer's :mod:`mbd_cert.saliency` or :mod:`mbd_cert.update`), and test that
what the diff adds on top of the update is Gaussian noise of the certified sigma.
Everything is computed in float64 on the CPU.

Stability: :func:`run_level2` is called by :func:`mbd_cert.verify.verify`; internal
otherwise. :class:`Bundle`, :func:`load_bundle` and :func:`rebuild_pre` live in
:mod:`mbd_cert._level2_bundle` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rfc8785
import torch

from mbd_cert import _recompute
from mbd_cert._determinism import VmapFailure, require_deterministic, vmap_error
from mbd_cert._groups import unlisted_zero_encoders
from mbd_cert._level2_bundle import Bundle, load_bundle, rebuild_pre
from mbd_cert._numbers import exact_number
from mbd_cert._residual_tests import CODE_INCONCLUSIVE, residual_checks
from mbd_cert._torch_model import build_model, probe_batch
from mbd_cert._work_limits import (
    EVIDENCE_SPOT_CHECKS,
    check_evidence_work,
    check_operation_work,
    check_update_work,
)
from mbd_cert.report import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    CheckResult,
    VerificationReport,
    stage_counter,
)

logger = logging.getLogger(__name__)

# Family-wise significance level of the three residual tests when the caller sets none
# (--alpha); also the lowest level a certificate's update.residual_alpha can ask for.
DEFAULT_ALPHA = 0.01
# Relative agreement required between the recomputed raw update norm and the
# certificate's update.norm_before_clip (float64 reduction order differs by ~1e-15).
NORM_TOLERANCE = 1e-6

CODE_MASK_MISMATCH = "E_MASK_MISMATCH"
CODE_DIFF_OUTSIDE_MASK = "E_DIFF_OUTSIDE_MASK"
CODE_UPDATE_MISMATCH = "E_UPDATE_MISMATCH"
CODE_SCORES_NONFINITE = "E_SCORES_NONFINITE"
CODE_CALIBRATION_INVALID = "E_CALIBRATION_INVALID"
# Largest relative tie band around the cut that level 2 applies (R-SAL-3). The issuer
# states 1e-6, far above the float64 rounding differences between devices.
MAX_SCORE_TOLERANCE = 1e-4


def resolve_alpha(doc: Mapping[str, Any], override: float | None) -> float:
    """Return the level of the residual tests (R-L2-9).

    The caller's ``override`` wins. Otherwise the certificate's ``update.residual_alpha``
    may raise the level above ``DEFAULT_ALPHA`` (stricter tests) but never lower it:
    a certificate that chose alpha = 1e-300 would switch the noise tests off.
    """
    if override is not None:
        return float(override)
    return max(float(doc["update"].get("residual_alpha", DEFAULT_ALPHA)), DEFAULT_ALPHA)


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    little_endian = data.astype(data.dtype.newbyteorder("<"))
    return "sha256:" + hashlib.sha256(little_endian.tobytes()).hexdigest()


def _check_pre_rebuild(doc: Mapping[str, Any], pre: Mapping[str, np.ndarray],
                       bundle: Bundle) -> str:
    committed = doc["subject_model"]["pre_deletion"]["tensors"]
    names = sorted(set(committed) | set(pre))
    for name in names:
        if name not in committed or name not in pre:
            raise _fail_digest(
                f"tensor '{name}' is in only one of the rebuilt and committed models")
        entry = committed[name]
        digest = _digest(pre[name])
        if list(pre[name].shape) != list(entry["shape"]) or digest != entry["digest"]:
            raise _fail_digest(
                f"rebuilt pre-deletion tensor '{name}' (post - diff): expected "
                f"{entry['digest']}, got {digest}"
            )
    for name in names:
        values = pre[name]
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            from mbd_cert.errors import ModelNonfinite

            raise ModelNonfinite(
                f"rebuilt pre-deletion tensor '{name}' (post - diff) has NaN or infinite "
                "values, so no saliency, update or residual can be computed from it",
                hint="the diff or the committed pre-deletion model is not a usable model",
            )
    # R-DIFF-1: the diff is exactly float64(post) - float64(pre). Other values can
    # rebuild the same pre-deletion model (low bits lost in the cast, -0.0 for +0.0),
    # and those bits would carry data in the bundle.
    inexact = {}
    for name, difference in bundle.diff.items():
        expected = bundle.post[name].astype(np.float64) - pre[name].astype(np.float64)
        count = int(np.count_nonzero(expected.view(np.uint64) != np.ascontiguousarray(
            difference, dtype=np.float64).view(np.uint64)))
        if count:
            inexact[name] = count
    if inexact:
        from mbd_cert.errors import DigestMismatch

        first = sorted(inexact)[0]
        raise DigestMismatch(
            f"{sum(inexact.values())} diff entries are not float64(post) - float64(pre) "
            f"bit for bit ({inexact[first]} in 'diff.{first}'), although post - diff "
            "rebuilds the committed model (R-DIFF-1)",
            hint="the spare bits of such a diff can carry other data; ask the issuer for "
            "the bundle issue wrote",
            code="E_DIFF_NOT_EXACT",
        )
    # R-CHAIN-9 on the model the deletion started from: a released model copied into a
    # fresh checkpoint keeps its zeroed encoder, and deleting that modality again as a
    # first deletion would restart the budget.
    zeroed = unlisted_zero_encoders(bundle.architecture, bundle.config_pre, pre)
    if zeroed:
        from mbd_cert.errors import ChainBroken

        raise ChainBroken(
            f"the rebuilt pre-deletion model's {zeroed[0]} encoder is all zero, as a "
            f"certified deletion leaves it, but the pre-deletion config does not list "
            f"{zeroed[0]!r} as deleted: an earlier deletion is missing from the chain",
            hint="ask the issuer for the chain that starts at the model's first deletion",
        )
    return f"post - diff reproduces all {len(names)} committed pre-deletion tensor digests"


def _fail_digest(message: str) -> Exception:
    from mbd_cert.errors import DigestMismatch

    return DigestMismatch(message, hint="the diff does not belong to this model and certificate")


def _check_mask_commitment(doc: Mapping[str, Any], bundle: Bundle) -> str:
    from mbd_cert.errors import VerificationFailed

    saliency = doc["saliency"]
    if not bundle.eligible:
        raise VerificationFailed(
            f"saliency.eligible_groups {saliency['eligible_groups']} match no tensor of the "
            "model besides the removed ones, so there is no mask to check",
            code=CODE_MASK_MISMATCH,
        )
    if sorted(bundle.masks) != bundle.eligible:
        missing = sorted(set(bundle.eligible) - set(bundle.masks))
        extra = sorted(set(bundle.masks) - set(bundle.eligible))
        raise VerificationFailed(
            "the mask tensors of the diff are not the eligible tensors of "
            f"saliency.eligible_groups: no mask for {missing[:5]}, mask but not eligible "
            f"{extra[:5]}",
            code=CODE_MASK_MISMATCH,
        )
    entries = [
        {"name": n, "dtype": "BOOL", "shape": list(bundle.masks[n].shape),
         "digest": _digest(bundle.masks[n])}
        for n in sorted(bundle.masks)
    ]
    digest = "sha256:" + hashlib.sha256(
        rfc8785.dumps({"metadata": {}, "tensors": entries})).hexdigest()
    count = sum(int(m.size) for m in bundle.masks.values())
    size = sum(int(m.sum()) for m in bundle.masks.values())
    expected_k = _recompute.mask_count(count, saliency["top_k_fraction"])
    problems = []
    if digest != saliency["mask_digest"]:
        problems.append(f"saliency.mask_digest: expected {saliency['mask_digest']}, got {digest}")
    if count != saliency["eligible_count"]:
        problems.append(
            f"saliency.eligible_count: expected {saliency['eligible_count']}, got {count}")
    if size != saliency["mask_size"] or size != expected_k:
        problems.append(
            f"saliency.mask_size: certificate {saliency['mask_size']}, mask tensors {size}, "
            f"rule k = ceil(top_k_fraction x eligible_count) {expected_k}"
        )
    if problems:
        raise VerificationFailed("; ".join(problems), code=CODE_MASK_MISMATCH)
    return f"mask tensors match saliency.mask_digest: {size} of {count} eligible entries"


def _check_diff_support(bundle: Bundle) -> CheckResult:
    outside = 0
    first = ""
    for name, values in sorted(bundle.diff.items()):
        if name in bundle.removed:
            continue
        allowed = bundle.masks.get(name, np.zeros(values.shape, dtype=bool))
        # By bits, as R-DEL-1 tests zero: a diff of -0.0 rebuilds the same pre-deletion
        # value, so its sign bit would carry data freely. An honest x - x is +0.0.
        outside_bits = np.ascontiguousarray(values[~allowed], dtype=np.float64).view(np.uint64)
        count = int(np.count_nonzero(outside_bits))
        if count and not first:
            first = name
        outside += count
    status = PASS if outside == 0 else FAIL
    detail = (
        "the diff changes only masked entries and the deleted encoder"
        if outside == 0
        else f"the diff changes {outside} entries outside the mask and the deleted encoder, "
        f"first in tensor '{first}'"
    )
    return CheckResult("diff-support", status, detail, code=None if outside == 0 else
                       CODE_DIFF_OUTSIDE_MASK, requirement="R-L2-3", value=outside, threshold=0)


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


def run_level2(doc: Mapping[str, Any], model_path: Path, bundle_dir: Path,
               report: VerificationReport, options: Any) -> None:
    """Run the level-2 checks and append them to ``report`` (SPEC.md, section 8.1).

    Raises:
        InputError: The bundle files are missing or malformed.
    """
    started = time.monotonic()
    reruns = (len(doc["privacy"]["sensitivity_evidence"]["distances"])
              if doc["privacy"]["sensitivity_method"] == "reference-retrain" else 0)
    if reruns:
        reruns += EVIDENCE_SPOT_CHECKS
    step = stage_counter(getattr(options, "progress", None), "level 2 recompute", 6 + reruns)
    alpha = resolve_alpha(doc, getattr(options, "alpha", None))
    bundle = load_bundle(doc, model_path, bundle_dir)
    check_update_work(int(doc["update"]["steps"]), bundle.probe.size, source="certificate")
    if reruns:
        # Before any check: a certificate asking for more replay than the cap is
        # unusable input (exit 2), never a skipped check that would let it pass.
        check_evidence_work(reruns - EVIDENCE_SPOT_CHECKS, int(doc["update"]["steps"]),
                            bundle.probe.size, source="certificate")
    # R-LIM-8: the config sets what each sample costs, before any forward pass.
    architecture = bundle.architecture
    check_operation_work(architecture.forward_operations(bundle.config_pre)
                         if architecture.forward_operations is not None else None,
                         int(doc["update"]["steps"]), bundle.probe.size,
                         runs=reruns - EVIDENCE_SPOT_CHECKS if reruns else 0,
                         source="certificate")
    # NOTE: level 2 reads whole models instead of streaming tensors. It keeps the diff in
    # float64 and builds the model in float64, and at its peak (the closed-form Fisher
    # of a later probe chunk) it holds about 8 float64 copies of the eligible parameters
    # (benchmarks/bench_level2_memory.py, docs/benchmarks.md).
    pre = rebuild_pre(bundle)
    step()

    # Step 1 (SPEC §8.1, R-L2-1): post - diff reproduces the committed pre-deletion model.
    rebuilt = report.run("pre-rebuild", "R-L2-1", lambda: _check_pre_rebuild(doc, pre, bundle))
    # No later step reads the released model, and pre keeps the tensors the diff leaves
    # unchanged, so dropping post frees a copy of the model in its own dtype.
    bundle.post = {}
    step()

    # Step 2 (R-L2-2): the mask tensors are the committed mask of the stated size.
    masks_ok = report.run("mask-commitment", "R-L2-2",
                          lambda: _check_mask_commitment(doc, bundle))

    # Step 3 (R-L2-3): nothing outside the mask and the deleted encoder changed.
    report.run("diff-support", "R-L2-3", lambda: _check_diff_support(bundle))
    step()

    dependent = ("saliency-mask", "update-clip", "residual-variance", "residual-normality",
                 "residual-projection")
    if not rebuilt or not masks_ok:
        reason = ("the pre-deletion model could not be rebuilt (pre-rebuild failed)"
                  if not rebuilt else
                  "the mask tensors are not the committed mask (mask-commitment failed)")
        for name in dependent:
            report.record(CheckResult(name, SKIPPED, reason,
                                      requirement="R-L2-1" if not rebuilt else "R-L2-2"))
        for _ in range(3 + reruns):
            step()
        _skip_sensitivity_evidence(doc, report, f"not recomputed: {reason}")
        return

    # Step 4 (R-L2-4): the mask recomputed from the rebuilt model and the probe set.
    report.run("saliency-mask", "R-L2-4", lambda: _check_saliency(doc, bundle, pre))
    step()

    # Step 5 (R-L2-5): the deterministic update recomputed on the committed mask, clipped.
    update = _recompute_update(doc, bundle, pre)
    report.run("update-clip", "R-L2-5", lambda: _check_clip(doc, update))
    step()

    # Step 6 (R-L2-6 to R-L2-8): the residual diff - update is N(0, sigma^2) noise.
    for result in residual_checks(doc, bundle.masks, bundle.diff, update.displacement, alpha,
                                  update.raw_norm):
        report.record(result)
    step()
    # R-PRIV-5: the leave-one-out reruns behind a reference-retrain sensitivity.
    if doc["privacy"]["sensitivity_method"] == "reference-retrain":
        report.run("sensitivity-evidence", "R-PRIV-5",
                   lambda: _check_sensitivity_evidence(doc, bundle, pre, update, step))
    logger.info("level 2 took %.1f s", time.monotonic() - started)


def _skip_sensitivity_evidence(doc: Mapping[str, Any], report: VerificationReport,
                               reason: str) -> None:
    if doc["privacy"]["sensitivity_method"] == "reference-retrain":
        report.skip("sensitivity-evidence", "R-PRIV-5", reason)


def _without_sample(batch: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return the batch without sample ``index``: the neighbouring probe set of R-PRIV-5."""
    def drop(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: drop(item) for key, item in value.items()}
        return torch.cat([value[:index], value[index + 1:]])

    return {key: drop(value) for key, value in batch.items()}


def _check_sensitivity_evidence(doc: Mapping[str, Any], bundle: Bundle,
                                pre: Mapping[str, np.ndarray],
                                full: _recompute.Update,
                                step: Callable[[], None]) -> CheckResult:
    """Rerun the leave-one-out updates of ``reference-retrain`` and compare (R-PRIV-5).

    Run r leaves out the sample that ``default_rng([saliency.seed, r])`` draws, as the
    issuer does. A distance the issuer stated smaller than the recomputed one would
    have calibrated sigma for a smaller sensitivity than the update has.
    """
    evidence = doc["privacy"]["sensitivity_evidence"]
    recorded = [float(d) for d in evidence["distances"]]
    n = bundle.probe.size
    steps = int(doc["update"]["steps"])
    if n < 2:
        return CheckResult("sensitivity-evidence", FAIL,
                           "a leave-one-out update needs at least 2 probe samples",
                           code=CODE_CALIBRATION_INVALID, requirement="R-PRIV-5")
    model, retain = _removed_model(bundle, pre)
    batch = probe_batch(bundle.probe)
    update = doc["update"]
    seed = int(doc["saliency"]["seed"])
    stated_left_out = evidence.get("left_out")

    def distance_without(index: int) -> float:
        name = bundle.architecture.name
        try:
            neighbour = _recompute.masked_update(
                model, bundle.masks, retain, _without_sample(batch, index),
                steps=steps, learning_rate=update["learning_rate"],
                damping=update["damping"], clip_norm=update["clip_norm"],
                closed_form=bundle.architecture.independent_samples)
        except VmapFailure as failure:
            raise vmap_error(failure, f"the retain objective of architecture {name!r}",
                             _objective_hint(name, "update")) from failure.__cause__
        step()
        return math.sqrt(math.fsum(
            float(np.square(full.displacement[name] - neighbour.displacement[name]).sum())
            for name in bundle.masks))

    problems: list[str] = []
    distances: list[float] = []
    for run, stated in enumerate(recorded, start=1):
        index = int(np.random.default_rng([seed, run]).integers(n))
        if isinstance(stated_left_out, list) and len(stated_left_out) >= run \
                and stated_left_out[run - 1] != index:
            problems.append(f"run {run} left out sample {stated_left_out[run - 1]!r}, but "
                            f"default_rng([{seed}, {run}]) draws {index}")
        distance = distance_without(index)
        distances.append(distance)
        # Smaller than recomputed calibrates sigma too low; larger is only conservative,
        # but is still not what the issuer measured.
        if not math.isclose(distance, stated, rel_tol=NORM_TOLERANCE,
                            abs_tol=1e-12 * float(update["clip_norm"])):
            problems.append(f"run {run} (sample {index}): stated distance {stated:.9g}, "
                            f"recomputed {distance:.9g}")
    largest = max(distances)
    if problems:
        return CheckResult(
            "sensitivity-evidence", FAIL,
            f"{len(problems)} of {len(recorded)} leave-one-out runs differ: "
            + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""),
            code=CODE_CALIBRATION_INVALID, requirement="R-PRIV-5", value=largest,
            threshold=max(recorded))
    # The issuer chose the seed, and so its neighbours. Neighbours drawn here with fresh
    # randomness cannot be chosen; one farther than the stated sensitivity disproves it.
    sensitivity = float(doc["privacy"]["sensitivity"])
    drawn = [int(i) for i in _spot_rng().choice(n, min(EVIDENCE_SPOT_CHECKS, n),
                                                replace=False)]
    spot = {index: distance_without(index) for index in drawn}
    beyond = {index: d for index, d in spot.items() if d > sensitivity}
    if beyond:
        index = max(beyond, key=beyond.__getitem__)
        return CheckResult(
            "sensitivity-evidence", FAIL,
            f"leaving out sample {index}, drawn by the verifier, moves the update by "
            f"{beyond[index]:.6g}, more than the stated sensitivity "
            f"{exact_number(sensitivity)}: sigma "
            f"is calibrated for too small a sensitivity ({len(beyond)} of {len(spot)} "
            "drawn neighbours beyond it; the stated runs matched). The issuer can raise "
            "--safety-factor (2 or more) or use --sensitivity-method clip-bound",
            code=CODE_CALIBRATION_INVALID, requirement="R-PRIV-5",
            value=max(beyond.values()), threshold=sensitivity)
    return CheckResult(
        "sensitivity-evidence", PASS,
        f"{len(recorded)} leave-one-out updates recomputed: distances match (max "
        f"{largest:.6g}); {len(spot)} neighbours drawn here (samples "
        f"{', '.join(map(str, drawn))}) lie within the stated sensitivity "
        f"{sensitivity:.6g} (max {max(spot.values()):.6g})",
        requirement="R-PRIV-5", value=max(largest, *spot.values()), threshold=sensitivity)


def _spot_rng() -> np.random.Generator:
    """Return a generator seeded from the operating system, which no issuer can predict."""
    return np.random.default_rng()


__all__ = ["Bundle", "load_bundle", "rebuild_pre", "resolve_alpha", "run_level2"]
