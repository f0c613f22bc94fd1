"""Level-2 verification: recompute the deletion from the audit bundle (SPEC.md, section 8.1).

The checks rebuild the pre-deletion model as ``post - diff``, recompute the saliency
mask and the deterministic update with the verifier's own code (:mod:`mbd_cert._recompute`,
never the issuer's :mod:`mbd_cert.saliency` or :mod:`mbd_cert.update`), and test that
what the diff adds on top of the update is Gaussian noise of the certified sigma.
Everything is computed in float64 on the CPU. This module runs the steps in order, and
the checks live in :mod:`mbd_cert._level2_bundle_checks` (steps 1 to 3),
:mod:`mbd_cert._level2_recomputation` (steps 4 and 5), :mod:`mbd_cert._residual_tests`
(step 6) and :mod:`mbd_cert._sensitivity_evidence` (R-PRIV-5).

Stability: :func:`run_level2` is called by :func:`mbd_cert.verify.verify`; internal
otherwise. :class:`Bundle`, :func:`load_bundle` and :func:`rebuild_pre` live in
:mod:`mbd_cert._level2_bundle` and are re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mbd_cert._level2_bundle import Bundle, load_bundle, rebuild_pre
from mbd_cert._level2_bundle_checks import (
    _check_diff_support,
    _check_mask_commitment,
    _check_pre_rebuild,
)

# Re-exported: tests import the digest helper from this module.
from mbd_cert._level2_bundle_checks import _digest as _digest
from mbd_cert._level2_recomputation import _check_clip, _check_saliency, _recompute_update
from mbd_cert._residual_tests import residual_checks
from mbd_cert._sensitivity_evidence import _check_sensitivity_evidence
from mbd_cert._work_limits import (
    EVIDENCE_SPOT_CHECKS,
    check_evidence_work,
    check_operation_work,
    check_update_work,
)
from mbd_cert.report import SKIPPED, CheckResult, VerificationReport, stage_counter

logger = logging.getLogger(__name__)

# Family-wise significance level of the three residual tests when the caller sets none
# (--alpha); also the lowest level a certificate's update.residual_alpha can ask for.
DEFAULT_ALPHA = 0.01


def resolve_alpha(doc: Mapping[str, Any], override: float | None) -> float:
    """Return the level of the residual tests (R-L2-9).

    The caller's ``override`` wins. Otherwise the certificate's ``update.residual_alpha``
    may raise the level above ``DEFAULT_ALPHA`` (stricter tests) but never lower it:
    a certificate that chose alpha = 1e-300 would switch the noise tests off.
    """
    if override is not None:
        return float(override)
    return max(float(doc["update"].get("residual_alpha", DEFAULT_ALPHA)), DEFAULT_ALPHA)



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
    # of a later probe chunk) it keeps about 8 float64 copies of the eligible parameters
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



__all__ = ["Bundle", "load_bundle", "rebuild_pre", "resolve_alpha", "run_level2"]
