"""Level-2 rerun of the leave-one-out updates behind a ``reference-retrain`` sensitivity (R-PRIV-5).

The check reruns each leave-one-out update that the certificate's
``privacy.sensitivity_evidence`` states, then updates on neighbours that the verifier
draws itself, and compares their distances with the stated ones and the sensitivity.

Stability: internal; :mod:`mbd_cert.verify_recompute` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from mbd_cert import _recompute
from mbd_cert._determinism import VmapFailure, vmap_error
from mbd_cert._level2_bundle import Bundle
from mbd_cert._level2_recomputation import NORM_TOLERANCE, _objective_hint, _removed_model
from mbd_cert._numbers import exact_number
from mbd_cert._torch_model import probe_batch
from mbd_cert._work_limits import EVIDENCE_SPOT_CHECKS
from mbd_cert.report import FAIL, PASS, CheckResult

CODE_CALIBRATION_INVALID = "E_CALIBRATION_INVALID"


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
