"""The privacy calibration check of one certificate (SPEC.md, R-PRIV-2 to R-PRIV-5).

Level 1 runs it on the certificate under verification, and the chain walk runs it on
every earlier link, whose sigma and sensitivity enter the cumulative budget
(R-CHAIN-8). It reads only numbers from the certificate.

Stability: internal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mbd_cert import mechanism
from mbd_cert._numbers import exact_number
from mbd_cert.errors import CalibrationInvalid
from mbd_cert.report import CheckResult
from mbd_cert.sensitivity import check_evidence

logger = logging.getLogger(__name__)


def check_calibration(doc: Mapping[str, Any]) -> CheckResult:
    """Check that the stated sigma gives the stated (epsilon, delta) for the sensitivity.

    Raises:
        CalibrationInvalid: The sensitivity is below the clip bound (R-PRIV-2), the
            reference-retrain evidence does not support it (R-PRIV-5), the noise does
            not cover the mask (R-PRIV-4), or sigma is too small (R-PRIV-3).
    """
    privacy = doc["privacy"]
    epsilon, delta = privacy["epsilon"], privacy["delta"]
    sensitivity, sigma = privacy["sensitivity"], privacy["sigma"]
    if privacy["sensitivity_method"] == "clip-bound":
        bound = 2.0 * doc["update"]["clip_norm"]
        if sensitivity < bound:
            raise CalibrationInvalid(
                f"privacy.sensitivity is {sensitivity!r}, below the clip bound "
                f"2 * clip_norm = {bound!r}"
            )
    if privacy["sensitivity_method"] == "reference-retrain":
        try:
            sensitivity_check = check_evidence(privacy, doc["update"]["clip_norm"],
                                               seed=doc["saliency"]["seed"])
        except ValueError as exc:
            raise CalibrationInvalid(str(exc), hint="R-PRIV-5") from exc
        logger.debug("%s", sensitivity_check)
    if privacy["noise_dimension"] != doc["saliency"]["mask_size"]:
        raise CalibrationInvalid(
            f"privacy.noise_dimension ({privacy['noise_dimension']}) differs from "
            f"saliency.mask_size ({doc['saliency']['mask_size']}): "
            "noise must cover every masked entry"
        )
    result = mechanism.check_calibration(epsilon, delta, sensitivity, sigma)
    if not result.ok:
        raise CalibrationInvalid(
            f"privacy.sigma = {exact_number(sigma)} gives delta "
            f"{exact_number(result.actual_delta)} at epsilon {exact_number(epsilon)}, more "
            f"than the stated {exact_number(delta)}; the analytic Gaussian mechanism needs "
            f"sigma >= {exact_number(result.required_sigma)}",
            hint="the certificate overstates its privacy",
        )
    return CheckResult(
        "calibration",
        "pass",
        f"sigma {exact_number(sigma)} >= required {exact_number(result.required_sigma)} "
        f"for epsilon {exact_number(epsilon)}, delta {exact_number(delta)}, sensitivity "
        f"{exact_number(sensitivity)}"
        f"{_sensitivity_note(doc)}",
        requirement="R-PRIV-3",
        value=sigma,
        threshold=result.required_sigma,
    )


def _sensitivity_note(doc: Mapping[str, Any]) -> str:
    """Return a note on how far the sensitivity itself was checked, for the reader."""
    privacy = doc["privacy"]
    method = privacy["sensitivity_method"]
    bound = 2.0 * doc["update"]["clip_norm"]
    if method == "declared":
        return (f" (sensitivity declared by the issuer and not checked; the clip bound "
                f"2 * clip_norm is {bound:.6g})")
    if method == "reference-retrain":
        # The schema requires the distances but not their count ``runs``, which an
        # unsigned or foreign certificate may omit.
        runs = len(privacy["sensitivity_evidence"]["distances"])
        return (f" (sensitivity estimated from {runs} reference rerun(s): an empirical "
                f"estimate, not a worst-case bound; the clip bound is {bound:.6g})")
    return " (sensitivity is the clip bound 2 * clip_norm)"
